#!/usr/bin/env bash
# SASS of one CUDA source on a machine without a GPU or cuobjdump (the development machine has nvcc
# alone): compiles FILE.cu into an sm_90 cubin with the flags the CMake build gives its CUDA sources
# (copied below), with ptxas's register and spill report, and disassembles it with the cuobjdump of
# Debian's non-free nvidia-cuda-toolkit 11.8 (downloaded once, ~84 MB; only cuobjdump and the nvdisasm
# it runs are kept, in .cache/cuda-11.8/). Usage, from the repository root:
#   tools/sass-here.sh src/backend/cuda/matmul.cu OUTDIR
# writes OUTDIR/NAME.sass (for tools/sass_loop.py) and OUTDIR/NAME.ptxas; 3–6 minutes for matmul.cu on
# two cores.
#
# CUDA 13 writes cubins in a newer ELF flavour (ABI version 8, the SM number in bits 8-15 of e_flags)
# that the 11.8 tools refuse ("does not contain Cuda architecture information"); the copy given to
# cuobjdump carries the older header (OS ABI 0x33, ABI version 7, e_flags 0x5a055a: sm_90, virtual
# sm_90, 64-bit addresses, unified texture mode), which is what they check; the code is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:?usage: tools/sass-here.sh FILE.cu OUTDIR}
out=${2:?usage: tools/sass-here.sh FILE.cu OUTDIR}
mkdir -p "$out" .cache
tools=.cache/cuda-11.8
if [ ! -x "$tools/cuobjdump" ] || [ ! -x "$tools/nvdisasm" ]; then
  deb=nvidia-cuda-toolkit_11.8.89~11.8.0-5~deb12u1_amd64.deb
  sha=d1156026e704fe0368b6295db06224ed00a727966fb13454f34e3f3102db0457
  tmp=$(mktemp -d)
  curl -sSfL -o "$tmp/$deb" "http://deb.debian.org/debian/pool/non-free/n/nvidia-cuda-toolkit/$deb"
  echo "$sha  $tmp/$deb" | sha256sum -c --quiet
  dpkg-deb -x "$tmp/$deb" "$tmp/x"
  mkdir -p "$tools"
  cp "$tmp/x/usr/bin/cuobjdump" "$tmp/x/usr/bin/nvdisasm" "$tools/"
  rm -rf "$tmp"
fi
name=$(basename "$src" .cu)
nvcc -DFMT_SHARED -DTANDEM_HAVE_CUDA=1 -Isrc -O3 -DNDEBUG -arch=sm_90 -std=c++20 -lineinfo -DFMT_CONSTEVAL= \
  -DFMT_USE_CONSTEXPR=1 -Xptxas -v -cubin "$src" -o "$out/$name.cubin" 2>"$out/$name.ptxas"
python3 - "$out/$name.cubin" <<'EOF'
import struct, sys
path = sys.argv[1]
elf = bytearray(open(path, "rb").read())
elf[7], elf[8] = 0x33, 7  # OS ABI, ABI version
struct.pack_into("<I", elf, 48, 0x5A055A)  # e_flags
open(path, "wb").write(elf)
EOF
PATH="$PWD/$tools:$PATH" cuobjdump -sass "$out/$name.cubin" >"$out/$name.sass"
rm "$out/$name.cubin"
echo "$out/$name.sass ($(grep -c 'Function :' "$out/$name.sass") kernels), $out/$name.ptxas"

// A bf16 Gemma 4 checkpoint -> a compressed-tensors pack-quantized W4A16 / W8A16 checkpoint (symmetric,
// group 32, bf16 scales), the format of Google's QAT releases and llm-compressor's output, so the peer
// benchmark can run tandem's int4 / int8 kernels on the same weights it gives llama.cpp as Q4_0 / Q8_0.
//
//   node ct_quant.mjs BF16_DIR OUT_DIR 4|8
//
// Format facts (docs/DESIGN.md, "Quantized weights"): each linear's `weight` becomes weight_packed
// (I32 [N, K·bits/32], codes q + 2^(bits-1) packed LSB first), weight_scale ([N, K/32] bf16) and
// weight_shape (I64 [2]); fused 3-D experts become <name>_packed / _scale / _shape with a leading expert
// dimension. Embeddings, the router and norms stay bf16 (the config's ignore list says so).
// Quantization (round to nearest): scale = bf16(max|w| over the group / (2^(bits-1) - 1)),
// q = clamp(round(w / scale), -2^(bits-1), 2^(bits-1) - 1).
import fs from 'node:fs';
import path from 'node:path';

import { readSafetensors, writeSafetensors } from './gguf.mjs';

const GROUP = 32;
const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
const bf16ToF32 = (h) => { u32[0] = h << 16; return f32[0]; };
const roundBf16 = (x) => { f32[0] = x; u32[0] = ((u32[0] + 0x7fff + ((u32[0] >>> 16) & 1)) >>> 16) << 16; return f32[0]; };
const f32ToBf16Bits = (x) => { f32[0] = x; return ((u32[0] + 0x7fff + ((u32[0] >>> 16) & 1)) >>> 16) & 0xffff; };

// rows × K bf16 values (Buffer) -> { packed (I32 bytes), scales (bf16 bytes) }.
function quantizeRows(data, rows, K, bits) {
  if (K % GROUP) throw new Error(`K = ${K} is not a multiple of ${GROUP}`);
  const qmax = (1 << (bits - 1)) - 1, qmin = -(1 << (bits - 1)), bias = 1 << (bits - 1);
  const packed = Buffer.alloc((rows * K * bits) / 8), scales = Buffer.alloc((rows * K / GROUP) * 2);
  const w = new Float32Array(GROUP);
  for (let r = 0; r < rows; ++r) {
    for (let g = 0; g < K / GROUP; ++g) {
      let absmax = 0;
      for (let i = 0; i < GROUP; ++i) {
        w[i] = bf16ToF32(data.readUInt16LE(2 * (r * K + g * GROUP + i)));
        absmax = Math.max(absmax, Math.abs(w[i]));
      }
      const scale = roundBf16(absmax / qmax) || 1;
      scales.writeUInt16LE(f32ToBf16Bits(scale), 2 * (r * (K / GROUP) + g));
      for (let i = 0; i < GROUP; ++i) {
        const code = Math.min(qmax, Math.max(qmin, Math.round(w[i] / scale))) + bias;
        const e = r * K + g * GROUP + i;
        if (bits === 8) packed[e] = code;
        else packed[e >> 1] |= e & 1 ? code << 4 : code;
      }
    }
  }
  return { packed, scales };
}

const LINEAR = /\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$/;
const FUSED = /\.experts\.(gate_up_proj|down_proj)$/;

function shapeTensor(shape) {
  const b = Buffer.alloc(8 * shape.length);
  shape.forEach((d, i) => b.writeBigInt64LE(BigInt(d), 8 * i));
  return { dtype: 'I64', shape: [shape.length], data: b };
}

export function ctQuantize(dir, outDir, bits) {
  if (bits !== 4 && bits !== 8) throw new Error('bits must be 4 or 8');
  fs.mkdirSync(outDir, { recursive: true });
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  config.quantization_config = {
    quant_method: 'compressed-tensors', format: 'pack-quantized', quantization_status: 'compressed',
    config_groups: { group_0: { targets: ['Linear'], weights: { num_bits: bits, type: 'int', symmetric: true, dynamic: false,
                                                               strategy: 'group', group_size: GROUP, actorder: null } } },
    ignore: ['lm_head', 're:.*embed_tokens.*', 're:.*router.*'],
  };
  fs.writeFileSync(path.join(outDir, 'config.json'), JSON.stringify(config, null, 2));
  for (const f of fs.readdirSync(dir)) {
    if (f.startsWith('tokenizer') || f === 'chat_template.jinja') fs.copyFileSync(path.join(dir, f), path.join(outDir, f));
  }
  const out = new Map();
  for (const [name, t] of readSafetensors(path.join(dir, 'model.safetensors'))) {
    const fused = FUSED.test(name);
    if (!LINEAR.test(name) && !fused) {
      out.set(name, t);
      continue;
    }
    if (t.dtype !== 'BF16') throw new Error(`${name}: ${t.dtype} weights are not supported (BF16)`);
    const K = t.shape[t.shape.length - 1], rows = t.data.length / 2 / K;
    const { packed, scales } = quantizeRows(t.data, rows, K, bits);
    const lead = t.shape.slice(0, -1);
    const stem = fused ? name : name.slice(0, -'.weight'.length) + '.weight';
    out.set(`${stem}_packed`, { dtype: 'I32', shape: [...lead, (K * bits) / 32], data: packed });
    out.set(`${stem}_scale`, { dtype: 'BF16', shape: [...lead, K / GROUP], data: scales });
    out.set(`${stem}_shape`, shapeTensor(t.shape));
  }
  writeSafetensors(path.join(outDir, 'model.safetensors'), out);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [dir, out, bits] = process.argv.slice(2);
  if (!dir || !out || !bits) {
    console.error('usage: node ct_quant.mjs BF16_DIR OUT_DIR 4|8');
    process.exit(2);
  }
  ctQuantize(dir, out, Number(bits));
}

#!/usr/bin/env python3
"""Golden token ids from HF `tokenizers` for tests/tokenizer (and the HF side of the benchmark).

Reads the committed texts (tests/tokenizer/golden/texts.json, made by gen_tokenizer_texts.py) and,
for each tokenizer given as NAME=PATH/tokenizer.json, writes OUT/NAME.json with, per text: ids with
and without special tokens, and HF's decode of the ids (with and without skip_special_tokens);
plus decodes of pseudo-random id sequences (including raw byte-fallback tokens).

    python3 tools/golden_tokenizers.py --texts tests/tokenizer/golden/texts.json \\
        --tokenizer gemma3=.tokdata/gemma3/tokenizer.json --out tests/tokenizer/golden \\
        [--bench-text /tmp/bench.txt --bench-out bench_hf.json]

--dry-run uses a stand-in byte tokenizer, so the script's logic can be checked without HF
`tokenizers` installed.
"""
import argparse
import json
import os
import platform
import random
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_GOLDEN_BYTES = 2 * 1024 * 1024


class _Enc:
    def __init__(self, ids):
        self.ids = ids


class DryRunTokenizer:
    """Stand-in: one id per UTF-8 byte, +1000 for special ones; only for checking this script."""

    version = "dry-run"

    def encode(self, text, add_special_tokens=True):
        ids = list(text.encode("utf-8"))
        return _Enc(([1000] if add_special_tokens else []) + ids)

    def decode(self, ids, skip_special_tokens=False):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def get_vocab_size(self, with_added_tokens=True):
        return 1001

    def token_to_id(self, token):
        return None


def load(path, dry_run):
    if dry_run:
        return DryRunTokenizer(), "dry-run"
    import tokenizers  # noqa: imported lazily so --dry-run works without it

    return tokenizers.Tokenizer.from_file(path), tokenizers.__version__


def random_id_sequences(tok, rng, count):
    vocab = tok.get_vocab_size(with_added_tokens=True)
    byte_ids = [tok.token_to_id("<0x%02X>" % b) for b in range(256)]
    byte_ids = [i for i in byte_ids if i is not None]
    seqs = []
    for k in range(count):
        n = rng.randint(1, 40)
        if byte_ids and k % 3 == 1:
            # Runs of byte-fallback tokens, often forming invalid UTF-8.
            seq = [rng.choice(byte_ids) if rng.random() < 0.7 else rng.randrange(vocab) for _ in range(n)]
        elif k % 3 == 2:
            # Low ids: special and control tokens live there.
            seq = [rng.randrange(min(vocab, 300)) for _ in range(n)]
        else:
            seq = [rng.randrange(vocab) for _ in range(n)]
        seqs.append(seq)
    return seqs


def golden(name, path, texts, out_dir, dry_run):
    tok, version = load(path, dry_run)
    cases = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=True).ids
        plain = tok.encode(text, add_special_tokens=False).ids
        cases.append({
            "ids": ids,
            "ids_plain": plain,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip": tok.decode(ids, skip_special_tokens=True),
        })
    rng = random.Random(sum(map(ord, name)))
    decode_cases = []
    for seq in random_id_sequences(tok, rng, 60):
        decode_cases.append({
            "ids": seq,
            "text": tok.decode(seq, skip_special_tokens=False),
            "text_skip": tok.decode(seq, skip_special_tokens=True),
        })
    doc = {
        "tokenizer": name,
        "hf_tokenizers_version": version,
        "python": platform.python_version(),
        "texts_file": "texts.json",
        "cases": cases,
        "decode_cases": decode_cases,
    }
    data = json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
    if len(data) > MAX_GOLDEN_BYTES:
        raise SystemExit(f"{name}: golden file would be {len(data)} bytes (> {MAX_GOLDEN_BYTES})")
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        f.write(data)
        f.write("\n")
    print(f"{name}: {len(cases)} texts, {len(decode_cases)} decode cases, {len(data)} bytes", file=sys.stderr)
    return tok


def bench_text(texts, size=1 << 20):
    """~1 MB of mixed text: the golden texts, in order, repeated."""
    parts, n, i = [], 0, 0
    while n < size:
        t = texts[i % len(texts)]
        parts.append(t)
        n += len(t.encode("utf-8")) + 1
        i += 1
    return "\n".join(parts)


def bench(name, tok, text, ids_out):
    tok.encode(text[:10000])
    best = float("inf")
    ids = None
    for _ in range(3):
        t0 = time.perf_counter()
        ids = tok.encode(text, add_special_tokens=False).ids
        best = min(best, time.perf_counter() - t0)
    with open(ids_out, "w") as f:
        json.dump(ids, f)
    return {"tokenizer": name, "bytes": len(text.encode("utf-8")), "tokens": len(ids), "best_s": best,
            "tokens_per_s": len(ids) / best, "impl": "hf-tokenizers"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", required=True)
    ap.add_argument("--tokenizer", action="append", default=[], help="NAME=PATH")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bench-text", help="write the ~1 MB benchmark text here and time HF on it")
    ap.add_argument("--bench-out", help="JSON lines with HF benchmark results")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    texts = json.load(open(args.texts))["texts"]
    os.makedirs(args.out, exist_ok=True)
    results = []
    btext = bench_text(texts) if args.bench_text else None
    if btext is not None:
        with open(args.bench_text, "w") as f:
            f.write(btext)
    for spec in args.tokenizer:
        name, path = spec.split("=", 1)
        tok = golden(name, path, texts, args.out, args.dry_run)
        if btext is not None:
            ids_out = os.path.join(os.path.dirname(os.path.abspath(args.bench_text)), f"bench_ids_{name}.json")
            r = bench(name, tok, btext, ids_out)
            print(json.dumps(r), file=sys.stderr)
            results.append(r)
    if args.bench_out and results:
        with open(args.bench_out, "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()

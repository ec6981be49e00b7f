#!/usr/bin/env python3
"""Writes a copy of a tokenizer directory whose BPE vocabulary is padded to VOCAB ids.

For serving benchmarks of full-size configs on random weights (`tandem serve CONFIG --load-format
dummy --tokenizer DIR`): the model samples ids anywhere in its 262144-row vocabulary, and ids the
tokenizer lacks decode to no text, so a streaming client sees no tokens. Ids past the source's
vocabulary become the words " w<id>" (no merges lead to them, so encoding is unchanged).

  tools/extend_tokenizer.py SRC_DIR DST_DIR VOCAB
"""
import json
import os
import shutil
import sys


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    src, dst, vocab = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    table = tok["model"]["vocab"]
    used = set(table.values()) | {t["id"] for t in tok.get("added_tokens", [])}
    if max(used) >= vocab:
        sys.exit(f"{src} already has ids up to {max(used)}, not fewer than {vocab}")
    for i in range(max(used) + 1, vocab):
        table[f"\u2581w{i}"] = i
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name != "tokenizer.json" and name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(os.path.join(src, name), dst)
    with open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)


if __name__ == "__main__":
    main()

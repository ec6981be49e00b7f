#!/usr/bin/env python3
"""Train tandem's bundled default model: a small Gemma-4-architecture Python code model
(`models/tandem-code-demo`, model_type gemma4) and its MTP drafter
(`models/tandem-code-demo-assistant`, model_type gemma4_assistant).

Runs on the GPU machine (torch 2.11, transformers 5.17, tokenizers 0.23, no network):
    python tools/train_bundled.py --out $OUT [--smoke] [--deadline-s 560]
Phases (every phase logs wall time):
  1. data: .py files of the Python installation (stdlib + permissively licensed site-packages,
     files mapped to their distribution through its RECORD), filtered, deduplicated, split by file
     (sha1(relative path) % 50 == 0 -> held out)
  2. Gemma-style BPE tokenizer (byte fallback, ' '->'▁', no prefix space), vocab 8192
  3. target training (transformers' Gemma4ForConditionalGeneration text stack, bf16 autocast, AdamW,
     cosine schedule, seq 512), held-out perplexity
  4. drafter training against the frozen target: for every position t, from the target's final-normed
     hidden h_t and its last sliding / last full layer K/V restricted to positions <= t (sliding: last W),
     query RoPE position t (= p-1, vLLM/tandem convention), predict token t+2 from (embed(t+1), h_t), then
     unroll (post_projection output + embed(t+2) -> t+3, ...); soft targets = the target's distribution
  5. checks: both checkpoints load with transformers; transformers' assisted generation; tandem-convention
     acceptance (query p-1, last W sliding keys); golden.safetensors for the bundled target
Everything is written under <out>/work/models/ and packed as <out>/models.tgz.part-XX (< 16 MB each).
"""
import argparse
import glob
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import time

T0 = time.time()
S, F = "sliding_attention", "full_attention"
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>", "<|think|>", "<|channel>",
            "<channel|>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
            "<tool_response|>", '<|"|>', "<|image>", "<image|>", "<|image|>", "<|audio>", "<audio|>",
            "<|audio|>", "<|video|>"]
PAD, EOS, BOS = 0, 1, 2
TURN_END = SPECIALS.index("<turn|>")
VOCAB = 8192
SEQ = 512
WINDOW = 128
HELD_OUT_MOD = 50
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


def elapsed():
    return time.time() - T0


# ======================================================================================
# 1. data
# ======================================================================================
PERMISSIVE = [(r"\bApache\b", "Apache-2.0"), (r"\bMIT\b", "MIT"), (r"\bBSD\b", "BSD"), (r"\bPSF\b", "PSF"),
              (r"Python Software Foundation", "PSF"), (r"\bISC\b", "ISC"), (r"\bZlib\b", "Zlib"),
              (r"\bCC0\b", "CC0"), (r"\b0BSD\b", "0BSD"), (r"Unlicense", "Unlicense")]
NOT_PERMISSIVE = r"NVIDIA|Proprietary|GPL|MPL|Mozilla|LicenseRef|Commercial"


def classify_license(meta):
    expr = meta.get("License-Expression") or ""
    lic = (meta.get("License") or "")[:400]
    cls = [c for c in (meta.get_all("Classifier") or []) if c.startswith("License")]
    text = " ".join([expr, lic] + cls)
    if re.search(NOT_PERMISSIVE, text, re.I):
        return None, (expr or lic[:60] or "; ".join(cls))
    for pat, name in PERMISSIVE:
        if re.search(pat, text):
            short = expr or ("; ".join(c.split("::")[-1].strip() for c in cls)) or lic.split("\n")[0][:60]
            return short, short
    return None, (expr or lic[:60] or "; ".join(cls) or "unknown")


def keep_file(text):
    if len(text) > 300_000 or len(text) < 64:
        return False
    lines = text.split("\n")
    long_lines = sum(1 for ln in lines if len(ln) > 300)
    return long_lines <= 0.05 * len(lines)


def collect_files(max_bytes):
    import importlib.metadata as md

    paths = sysconfig.get_paths()
    stdlib, site = os.path.realpath(paths["stdlib"]), os.path.realpath(paths["purelib"])
    entries = []  # (source, license, relpath, abspath)
    for dp, dn, fn in os.walk(stdlib):
        dn[:] = [d for d in dn if d not in ("site-packages", "dist-packages", "__pycache__")]
        for f in fn:
            if f.endswith(".py"):
                ap = os.path.join(dp, f)
                entries.append(("python-stdlib", "PSF-2.0", "stdlib/" + os.path.relpath(ap, stdlib), ap))
    dists, excluded = {}, {}
    for d in md.distributions():
        name = d.metadata["Name"]
        if name in dists or name in excluded:
            continue
        lic, desc = classify_license(d.metadata)
        if lic is None:
            excluded[name] = desc
            continue
        dists[name] = {"version": d.metadata["Version"], "license": lic}
        for f in d.files or []:
            if not str(f).endswith(".py"):
                continue
            ap = os.path.realpath(str(d.locate_file(f)))
            if not ap.startswith(site + os.sep) or not os.path.isfile(ap):
                continue
            entries.append((name, lic, "site-packages/" + os.path.relpath(ap, site), ap))
    entries.sort(key=lambda e: e[2])
    seen, files, stats = set(), [], {}
    skipped = {"filter": 0, "duplicate": 0, "decode": 0}
    for src, lic, rel, ap in entries:
        try:
            with open(ap, "rb") as fh:
                raw = fh.read()
            text = raw.decode("utf-8")
        except Exception:
            skipped["decode"] += 1
            continue
        if not keep_file(text):
            skipped["filter"] += 1
            continue
        h = hashlib.sha1(raw).hexdigest()
        if h in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(h)
        held = int(hashlib.sha1(rel.encode()).hexdigest(), 16) % HELD_OUT_MOD == 0
        files.append({"src": src, "rel": rel, "held": held, "text": text})
    if max_bytes:
        rng = random.Random(1234)
        rng.shuffle(files)
        tot, kept = 0, []
        for f in files:
            if tot > max_bytes:
                break
            kept.append(f)
            tot += len(f["text"])
        files = sorted(kept, key=lambda f: f["rel"])
    for f in files:
        s = stats.setdefault(f["src"], {"train_files": 0, "held_files": 0, "bytes": 0})
        s["held_files" if f["held"] else "train_files"] += 1
        s["bytes"] += len(f["text"].encode())
    info = {"stdlib": stdlib, "site_packages": site, "dists": dists, "excluded": excluded, "skipped": skipped,
            "per_source": stats, "n_files": len(files), "n_held": sum(f["held"] for f in files),
            "bytes": sum(s["bytes"] for s in stats.values())}
    return files, info


# ======================================================================================
# 2. tokenizer
# ======================================================================================
def train_tokenizer(texts, out_dir):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    def pipeline(tok):
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split("\n", behavior="merged_with_previous")

    tmp = Tokenizer(models.BPE())
    pipeline(tmp)
    n_fixed = len(SPECIALS) + 256
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - n_fixed, min_frequency=2, special_tokens=[],
                                  limit_alphabet=180, show_progress=False, max_token_length=24)
    tmp.train_from_iterator(texts, trainer)
    trained = json.loads(tmp.to_str())["model"]
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for i in range(256):
        vocab[f"<0x{i:02X}>"] = len(vocab)
    for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = []
    for m in trained["merges"]:
        a, b = m if isinstance(m, (list, tuple)) else m.split(" ", 1)
        if a in vocab and b in vocab and (a + b) in vocab and (a + b) not in SPECIALS:
            merges.append((a, b))
    assert len(vocab) <= VOCAB, len(vocab)
    # pad the vocabulary to exactly VOCAB entries with unused placeholder pieces
    k = 0
    while len(vocab) < VOCAB:
        vocab[f"<unused{k}>"] = len(vocab)
        k += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    pipeline(tok)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B:1",
                                                       special_tokens=[("<bos>", BOS)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    return tok, {"merges": len(merges), "unused": k, "trained_vocab": len(trained["vocab"])}


def write_tokenizer_config(out_dir, cls_name):
    cfg = {
        "tokenizer_class": cls_name,
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "model_max_length": 2048,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def check_hf_tokenizer(out_dir, tok, samples):
    """pick the tokenizer_class under which transformers reproduces the raw tokenizer exactly."""
    from transformers import AutoTokenizer

    result = {}
    for cls_name in ("GemmaTokenizer", "PreTrainedTokenizerFast"):
        write_tokenizer_config(out_dir, cls_name)
        try:
            hf = AutoTokenizer.from_pretrained(out_dir)
            ok = all(hf(s, add_special_tokens=True)["input_ids"] == tok.encode(s).ids for s in samples)
            plain = [s for s in samples if "<|" not in s and "|>" not in s]
            ok = ok and all(hf.decode(tok.encode(s).ids, skip_special_tokens=True) == s for s in plain)
            ok = ok and all(tok.decode(tok.encode(s).ids) == s for s in plain)
            result[cls_name] = ok
            if ok:
                chat = hf.apply_chat_template([{"role": "user", "content": "Write a function that adds two numbers."}],
                                              tokenize=False, add_generation_prompt=True)
                ids = hf(chat, add_special_tokens=False)["input_ids"]
                log(f"tokenizer class {cls_name} OK; chat render {chat!r} -> {len(ids)} ids, first {ids[:8]}")
                return cls_name, result, chat
        except Exception as e:
            result[cls_name] = repr(e)[:300]
    raise RuntimeError(f"no tokenizer class reproduces the raw tokenizer: {result}")


def tokenize_stream(tok, texts):
    import numpy as np

    fast = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    parts = []
    for i in range(0, len(texts), 512):
        for e in fast(texts[i: i + 512], add_special_tokens=False):
            parts.append(np.asarray([BOS] + e.ids + [EOS], dtype=np.int16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


# ======================================================================================
# 3. models
# ======================================================================================
def rope_params():
    return {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0}}


def target_config():
    from transformers import Gemma4Config, Gemma4TextConfig

    tc = Gemma4TextConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=8, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, global_head_dim=128, num_global_key_value_heads=1,
        attention_k_eq_v=True, enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=128,
        final_logit_softcapping=30.0, tie_word_embeddings=True, layer_types=[S, S, S, F, S, S, S, F],
        sliding_window=WINDOW, max_position_embeddings=2048, hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=VOCAB, num_kv_shared_layers=0, use_double_wide_mlp=False,
        use_bidirectional_attention=None, rope_parameters=rope_params(), hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, pad_token_id=PAD, eos_token_id=[EOS, TURN_END], bos_token_id=BOS,
        initializer_range=0.02)
    return Gemma4Config(text_config=tc, vision_config=None, audio_config=None, tie_word_embeddings=True)


def drafter_config():
    from transformers import Gemma4AssistantConfig, Gemma4TextConfig

    tc = Gemma4TextConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, global_head_dim=128, num_global_key_value_heads=1,
        attention_k_eq_v=True, layer_types=[S, S, S, F], sliding_window=WINDOW, max_position_embeddings=2048,
        hidden_size_per_layer_input=0, vocab_size_per_layer_input=0, num_kv_shared_layers=4,
        enable_moe_block=False, use_double_wide_mlp=False, final_logit_softcapping=None,
        tie_word_embeddings=True, rope_parameters=rope_params(), hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, pad_token_id=PAD, eos_token_id=[EOS, TURN_END], bos_token_id=BOS,
        initializer_range=0.02)
    return Gemma4AssistantConfig(text_config=tc, backbone_hidden_size=256, use_ordered_embeddings=False,
                                 tie_word_embeddings=True)


def add_top_level_token_ids(d):
    """published Gemma 4 configs carry the token ids at top level too (eos = <eos>, <turn|>)."""
    p = os.path.join(d, "config.json")
    with open(p) as f:
        cfg = json.load(f)
    cfg.setdefault("bos_token_id", BOS)
    cfg.setdefault("pad_token_id", PAD)
    cfg["eos_token_id"] = [EOS, TURN_END]
    with open(p, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def make_model(cls, cfg, attn="sdpa"):
    try:
        return cls._from_config(cfg, attn_implementation=attn)
    except Exception as e:  # pragma: no cover
        log("._from_config failed, plain constructor:", repr(e)[:200])
        cfg._attn_implementation = attn
        return cls(cfg)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def lr_at(step, total, peak, warm, floor=0.1):
    if step < warm:
        return peak * (step + 1) / warm
    p = min(1.0, (step - warm) / max(1, total - warm))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def softcap(x, c=30.0):
    import torch

    return torch.tanh(x / c) * c


def target_logits(model, ids, **kw):
    lm = model.model.language_model
    out = lm(input_ids=ids, use_cache=False, **kw)
    return softcap(model.lm_head(out.last_hidden_state)), out


def batch_from(stream, B, L, gen):
    import torch

    starts = torch.randint(0, stream.numel() - L - 1, (B,), generator=gen, device="cpu").to(stream.device)
    idx = starts[:, None] + torch.arange(L, device=stream.device)[None]
    return stream[idx].long()


def train_target(model, stream, budget_s, args, report):
    import torch
    import torch.nn.functional as Fn

    dev = stream.device
    B = args.batch
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    gen = torch.Generator().manual_seed(1)
    model.train()
    t_start, step, total, losses = time.time(), 0, args.target_steps or 10**9, []
    warm = min(150, max(5, total // 20)) if args.target_steps else 150
    while step < total:
        if args.target_steps == 0 and step == 20:
            torch.cuda.synchronize()
            per = (time.time() - t_start) / 20
            total = max(40, int(budget_s / per))
            log(f"target: {per * 1000:.1f} ms/step -> {total} steps in {budget_s:.0f}s")
        lr = lr_at(step, total, args.lr, warm)
        for g in opt.param_groups:
            g["lr"] = lr
        x = batch_from(stream, B, SEQ + 1, gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, _ = target_logits(model, x[:, :-1])
        loss = Fn.cross_entropy(logits.float().reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0 or step == 1:
            losses.append((step, float(loss)))
            log(f"target step {step}/{total} loss {float(loss):.4f} lr {lr:.2e} gnorm {float(gn):.2f}")
        if time.time() - t_start > budget_s * 1.08:
            log("target: wall-clock budget reached")
            break
    torch.cuda.synchronize()
    report["target_train"] = {"steps": step, "planned_steps": total, "batch": B, "seq": SEQ, "tokens": step * B * SEQ,
                              "seconds": round(time.time() - t_start, 1), "peak_lr": args.lr, "loss_log": losses}
    model.eval()


def eval_ppl(model, stream, max_tokens):
    import torch
    import torch.nn.functional as Fn

    n = min(stream.numel() - 1, max_tokens) // SEQ
    tot, cnt = 0.0, 0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for i in range(0, n, 32):
            rows = [stream[j * SEQ: j * SEQ + SEQ + 1].long() for j in range(i, min(n, i + 32))]
            x = torch.stack(rows)
            logits, _ = target_logits(model, x[:, :-1])
            l = Fn.cross_entropy(logits.float().reshape(-1, VOCAB), x[:, 1:].reshape(-1), reduction="sum")
            tot += float(l)
            cnt += x[:, 1:].numel()
    return math.exp(tot / max(1, cnt)), cnt


# --------------------------------------------------------------------------------------
# drafter
# --------------------------------------------------------------------------------------
def drafter_masks(T, dev):
    import torch

    i = torch.arange(T, device=dev)
    causal = i[None, :] <= i[:, None]
    sliding = causal & (i[:, None] - i[None, :] < WINDOW)
    return {F: causal[None, None], S: sliding[None, None]}


def target_states(target, x):
    """frozen target on x [B,T]: final-normed hidden [B,T,H], soft-capped logits, shared KV by type."""
    logits, out = target_logits(target, x, return_shared_kv_states=True)
    skv = {k: (v[0], v[1]) for k, v in out.shared_kv_states.items()}
    return out.last_hidden_state, logits, skv


def drafter_unroll(asst, embed, toks, hidden, skv, masks, pos, nsteps):
    """toks [B, T+nsteps+1]; step s uses embed(toks[:, 1+s : 1+s+T]) and the previous step's projection."""
    T = hidden.shape[1]
    h, outs = hidden, []
    for s in range(nsteps):
        e = embed(toks[:, 1 + s: 1 + s + T])
        x = asst.pre_projection(torch_cat([e, h]))
        o = asst.model(inputs_embeds=x, attention_mask=masks, position_ids=pos, shared_kv_states=dict(skv),
                       use_cache=False)
        hn = o.last_hidden_state
        outs.append(asst.lm_head(hn))
        h = asst.post_projection(hn)
    return outs


def torch_cat(xs):
    import torch

    return torch.cat(xs, -1)


STEP_W = (1.0, 0.7, 0.5)


def train_drafter(asst, target, stream, budget_s, args, report):
    import torch

    dev = stream.device
    B, T = args.dbatch, SEQ
    embed = target.get_input_embeddings()
    opt = torch.optim.AdamW([p for p in asst.parameters() if p.requires_grad], lr=args.dlr, betas=(0.9, 0.95),
                            weight_decay=0.01, fused=True)
    gen = torch.Generator().manual_seed(2)
    masks = drafter_masks(T, dev)
    pos = torch.arange(T, device=dev)[None]
    asst.train()
    t_start, step, total, logs = time.time(), 0, args.drafter_steps or 10**9, []
    warm = 100 if not args.drafter_steps else max(3, total // 20)
    while step < total:
        if args.drafter_steps == 0 and step == 20:
            torch.cuda.synchronize()
            per = (time.time() - t_start) / 20
            total = max(40, int(budget_s / per))
            log(f"drafter: {per * 1000:.1f} ms/step -> {total} steps in {budget_s:.0f}s")
        lr = lr_at(step, total, args.dlr, warm)
        for g in opt.param_groups:
            g["lr"] = lr
        x = batch_from(stream, B, T + len(STEP_W) + 1, gen)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            hid, tlog, skv = target_states(target, x[:, :T])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outs = drafter_unroll(asst, embed, x, hid, skv, masks, pos, len(STEP_W))
        loss, parts = 0.0, []
        for s, (w, lg) in enumerate(zip(STEP_W, outs)):
            # position t predicts token t+2+s; the target's distribution for it sits at row t+1+s
            n = T - 1 - s
            tp = torch.softmax(tlog[:, 1 + s: 1 + s + n].float(), -1)
            lq = torch.log_softmax(lg[:, :n].float(), -1)
            l = -(tp * lq).sum(-1).mean()
            loss = loss + w * l
            parts.append(float(l))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(asst.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0 or step == 1:
            logs.append((step, parts))
            log(f"drafter step {step}/{total} soft-CE per step {[round(p, 3) for p in parts]} lr {lr:.2e}")
        if time.time() - t_start > budget_s * 1.08:
            log("drafter: wall-clock budget reached")
            break
    torch.cuda.synchronize()
    report["drafter_train"] = {"steps": step, "planned_steps": total, "batch": B, "seq": T,
                               "seconds": round(time.time() - t_start, 1), "peak_lr": args.dlr,
                               "step_weights": STEP_W, "loss_log": logs, "query_position": "t (= p-1)",
                               "sliding_keys": f"last {WINDOW} positions <= t"}
    asst.eval()


def eval_drafter(asst, target, stream, max_windows):
    """teacher-forced top-1 agreement per unroll step with the target's argmax and with the data token."""
    import torch

    dev = stream.device
    T = SEQ
    masks = drafter_masks(T, dev)
    pos = torch.arange(T, device=dev)[None]
    embed = target.get_input_embeddings()
    n = min((stream.numel() - T - 8) // T, max_windows)
    agree = [0] * len(STEP_W)
    data = [0] * len(STEP_W)
    cnt = [0] * len(STEP_W)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for i in range(0, n, 16):
            x = torch.stack([stream[j * T: j * T + T + len(STEP_W) + 1].long() for j in range(i, min(n, i + 16))])
            hid, tlog, skv = target_states(target, x[:, :T])
            outs = drafter_unroll(asst, embed, x, hid, skv, masks, pos, len(STEP_W))
            for s, lg in enumerate(outs):
                m = T - 1 - s
                d = lg[:, :m].argmax(-1)
                agree[s] += int((d == tlog[:, 1 + s: 1 + s + m].argmax(-1)).sum())
                data[s] += int((d == x[:, 2 + s: 2 + s + m]).sum())
                cnt[s] += d.numel()
    return {"agree_with_target_argmax": [a / max(1, c) for a, c in zip(agree, cnt)],
            "agree_with_data": [a / max(1, c) for a, c in zip(data, cnt)], "positions": cnt}


# --------------------------------------------------------------------------------------
# checks with transformers' own classes (f32, TF32 off)
# --------------------------------------------------------------------------------------
def load_for_check(cls, d, dev, attn="eager"):
    import torch

    m = cls.from_pretrained(d, dtype=torch.bfloat16, attn_implementation=attn)
    m = m.to(torch.float32).to(dev).eval()
    if getattr(m, "generation_config", None) is not None:
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = PAD
    return m


def tandem_round_acceptance(target, asst, prompts, k_list, n_new):
    """the tandem/vLLM algorithm with transformers' drafter module: committed p tokens, bonus at p,
    hidden of p-1, query position p-1, sliding keys = last W committed, full keys = all committed."""
    import torch

    dev = next(target.parameters()).device
    embed = target.get_input_embeddings()
    res = {}
    for k in k_list:
        per_pos = [0] * k
        rounds = acc_tot = 0
        for ids in prompts:
            with torch.no_grad():
                out = target.generate(torch.tensor([ids], device=dev), max_new_tokens=n_new, do_sample=False)
            full = out[0].tolist()
            T = len(ids)
            p = T
            while p - T + 1 < n_new:
                kk = min(k, T + n_new - p - 2)
                if kk <= 0:
                    break
                with torch.no_grad():
                    hid, _, skv = target_states(target, torch.tensor([full[:p]], device=dev))
                    h = hid[:, -1:]
                    kv = {F: skv[F], S: (skv[S][0][:, :, -WINDOW:], skv[S][1][:, :, -WINDOW:])}
                    # all supplied keys visible (additive float masks: the models run with eager attention)
                    am = {lt: torch.zeros(1, 1, 1, kv[lt][0].shape[2], device=dev) for lt in (F, S)}
                    tok, drafts = full[p], []
                    for _ in range(kk):
                        x = asst.pre_projection(torch.cat([embed(torch.tensor([[tok]], device=dev)), h], -1))
                        o = asst.model(inputs_embeds=x, attention_mask=am,
                                       position_ids=torch.tensor([[p - 1]], device=dev),
                                       shared_kv_states=dict(kv), use_cache=False)
                        tok = int(asst.lm_head(o.last_hidden_state)[0, 0].argmax())
                        h = asst.post_projection(o.last_hidden_state)
                        drafts.append(tok)
                n = 0
                for i, d in enumerate(drafts):
                    if full[p + 1 + i] == d:
                        n += 1
                    else:
                        break
                for i in range(n):
                    per_pos[i] += 1
                rounds += 1
                acc_tot += n
                p += n + 1
        res[f"k{k}"] = {"rounds": rounds, "accepted": acc_tot, "drafted": rounds * k,
                        "acceptance_rate": acc_tot / max(1, rounds * k),
                        "mean_acceptance_length": 1 + acc_tot / max(1, rounds),
                        "per_position": [c / max(1, rounds) for c in per_pos]}
    return res


def hf_assisted(target, asst, prompts, k_list, n_new):
    import torch

    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    import make_fixtures as mf

    dev = next(target.parameters()).device
    res = {}
    for k in k_list:
        asst.generation_config.num_assistant_tokens = k
        asst.generation_config.num_assistant_tokens_schedule = "constant"
        asst.generation_config.eos_token_id = None
        acc = drafted = rounds = 0
        same = True
        for ids in prompts:
            rec = mf.DraftRecorder()
            rec.install()
            try:
                with torch.no_grad():
                    out = target.generate(torch.tensor([ids], device=dev), assistant_model=asst, do_sample=False,
                                          max_new_tokens=n_new)
                    plain = target.generate(torch.tensor([ids], device=dev), do_sample=False, max_new_tokens=n_new)
            finally:
                rec.remove()
            seq = out[0].tolist()
            same = same and seq == plain[0].tolist()
            for r in rec.rounds:
                if not r["drafts"]:
                    continue
                n = 0
                for i, d in enumerate(r["drafts"]):
                    if r["cur_len"] + i < len(seq) and seq[r["cur_len"] + i] == d:
                        n += 1
                    else:
                        break
                acc += n
                drafted += len(r["drafts"])
                rounds += 1
        res[f"k{k}"] = {"rounds": rounds, "accepted": acc, "drafted": drafted,
                        "acceptance_rate": acc / max(1, drafted), "output_equals_plain_greedy": same}
    return res


def make_golden(target, prompts, n_new, path):
    import torch
    from safetensors.torch import save_file

    dev = next(target.parameters()).device
    out = {}
    for i, ids in enumerate(prompts):
        seq, gen, dec, gaps = list(ids), [], [], []
        with torch.no_grad():
            pre = target(input_ids=torch.tensor([ids], device=dev), use_cache=False).logits[0].float().cpu()
            for j in range(n_new):
                lg = pre[-1] if j == 0 else target(input_ids=torch.tensor([seq], device=dev),
                                                   use_cache=False).logits[0, -1].float().cpu()
                top = lg.topk(2).values
                gaps.append(float(top[0] - top[1]))
                t = int(lg.argmax())
                if j < 8:
                    dec.append(lg)
                gen.append(t)
                seq.append(t)
        T = len(ids)
        ppos = sorted(set([0, T // 2, T - 2, T - 1]))
        out[f"ids.{i}"] = torch.tensor(ids, dtype=torch.int32)
        out[f"prefill_pos.{i}"] = torch.tensor(ppos, dtype=torch.int32)
        out[f"prefill_logits.{i}"] = pre[ppos].contiguous()
        out[f"greedy.{i}"] = torch.tensor(gen, dtype=torch.int32)
        out[f"greedy_gap.{i}"] = torch.tensor(gaps, dtype=torch.float32)
        out[f"decode_logits.{i}"] = torch.stack(dec).contiguous()
    save_file(out, path)
    return {f"prompt{i}": {"len": len(p), "min_greedy_gap": float(out[f"greedy_gap.{i}"].min())}
            for i, p in enumerate(prompts)}


# ======================================================================================
# main
# ======================================================================================
def preflight(dev):
    """seconds-long run of every model code path on random tokens, so a bug aborts before the long phases."""
    import torch
    from transformers import Gemma4AssistantForCausalLM, Gemma4ForConditionalGeneration

    a = argparse.Namespace(batch=4, dbatch=2, lr=1e-3, dlr=1e-3, target_steps=2, drafter_steps=2)
    g = torch.Generator(device="cpu").manual_seed(99)
    stream = torch.randint(5, VOCAB, (100_000,), generator=g, dtype=torch.int32).to(dev)
    rep, root = {}, "/tmp/tb_preflight"
    shutil.rmtree(root, ignore_errors=True)
    td, ad = os.path.join(root, "t"), os.path.join(root, "a")
    tgt = make_model(Gemma4ForConditionalGeneration, target_config()).to(dev)
    train_target(tgt, stream, 30, a, rep)
    eval_ppl(tgt, stream, 2 * SEQ + 2)
    tgt.to(torch.bfloat16).save_pretrained(td)
    tgt.to(torch.float32)
    for p in tgt.parameters():
        p.requires_grad_(False)
    asst = make_model(Gemma4AssistantForCausalLM, drafter_config()).to(dev)
    train_drafter(asst, tgt, stream, 30, a, rep)
    eval_drafter(asst, tgt, stream, 2)
    asst.to(torch.bfloat16).save_pretrained(ad)
    for d in (td, ad):
        add_top_level_token_ids(d)
    t2 = load_for_check(Gemma4ForConditionalGeneration, td, dev)
    a2 = load_for_check(Gemma4AssistantForCausalLM, ad, dev)
    ids = [BOS] + stream[:150].tolist()
    tandem_round_acceptance(t2, a2, [ids], (2,), 6)
    hf_assisted(t2, a2, [ids], (2,), 6)
    make_golden(t2, [ids], 3, os.path.join(root, "g.safetensors"))
    del tgt, asst, t2, a2
    torch.cuda.empty_cache()
    log("preflight OK")


def write_data_md(path, info, tok_info, ntok_train, ntok_held, args):
    L = []
    L.append("# tandem-code-demo: training data manifest\n")
    L.append("Generated by `tools/train_bundled.py` on the GPU machine (Python 3.12 installation of the "
             "torch 2.11 image). Only `.py` source files were used.\n")
    L.append(f"* stdlib: `{info['stdlib']}` (every `.py` file, PSF-2.0)")
    L.append(f"* site-packages: `{info['site_packages']}`: `.py` files listed in the RECORD of an installed "
             "distribution whose license metadata (License-Expression / License / classifiers) is permissive "
             "(MIT, BSD, Apache-2.0, PSF, ISC, Zlib, CC0). Excluded: proprietary (NVIDIA), MPL/GPL, unknown.")
    L.append("* filters: UTF-8 only, 64 B ≤ size ≤ 300 kB, ≤ 5 % of lines longer than 300 chars; exact duplicates "
             "(sha1 of the bytes) kept once (first path in sorted order).")
    L.append(f"* held-out split **by file**: `int(sha1(relative path), 16) % {HELD_OUT_MOD} == 0` "
             "(relative path = `stdlib/...` or `site-packages/...`); held-out files are never trained on "
             "(neither the tokenizer nor the models).")
    if args.max_data_mb:
        L.append(f"* corpus capped at {args.max_data_mb} MB (random file subset, seed 1234)")
    L.append(f"\nFiles: {info['n_files']} ({info['n_held']} held out), {info['bytes'] / 1e6:.1f} MB; skipped: "
             f"{info['skipped']}. Tokens (tokenizer below, with `<bos>`/`<eos>` per file): train {ntok_train:,}, "
             f"held-out {ntok_held:,}.")
    L.append(f"Tokenizer: BPE trained on the training files only; {tok_info}.\n")
    L.append("| source | version | license | train files | held-out files | MB |")
    L.append("|---|---|---|---|---|---|")
    for src, s in sorted(info["per_source"].items(), key=lambda kv: -kv[1]["bytes"]):
        d = info["dists"].get(src, {"version": "3.12", "license": "PSF-2.0"})
        L.append(f"| {src} | {d['version']} | {d['license']} | {s['train_files']} | {s['held_files']} | "
                 f"{s['bytes'] / 1e6:.2f} |")
    L.append("\nExcluded distributions (license):\n")
    for n, why in sorted(info["excluded"].items()):
        L.append(f"* {n}: {why!r}")
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/tb_out"))
    ap.add_argument("--work", default="/tmp/tb_work")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--deadline-s", type=float, default=560)
    ap.add_argument("--reserve-s", type=float, default=110, help="time kept for checks/golden/packing")
    ap.add_argument("--target-frac", type=float, default=0.64)
    ap.add_argument("--max-data-mb", type=float, default=0)
    ap.add_argument("--tok-sample-mb", type=float, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dbatch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dlr", type=float, default=2e-3)
    ap.add_argument("--target-steps", type=int, default=0, help="0 = as many as fit the wall-clock budget")
    ap.add_argument("--drafter-steps", type=int, default=0)
    args = ap.parse_args()
    if args.smoke:
        args.max_data_mb = args.max_data_mb or 12
        args.tok_sample_mb = 4
        args.target_steps = args.target_steps or 30
        args.drafter_steps = args.drafter_steps or 30
        args.batch, args.dbatch = 32, 16

    import numpy as np
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    import tokenizers
    import transformers
    from transformers import Gemma4AssistantForCausalLM, Gemma4ForConditionalGeneration

    dev = torch.device("cuda")
    report = {"args": vars(args), "torch": torch.__version__, "transformers": transformers.__version__,
              "tokenizers": tokenizers.__version__, "gpu": torch.cuda.get_device_name(0),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.makedirs(args.out, exist_ok=True)
    shutil.rmtree(args.work, ignore_errors=True)
    mdir = os.path.join(args.work, "models")
    tdir = os.path.join(mdir, "tandem-code-demo")
    adir = os.path.join(mdir, "tandem-code-demo-assistant")
    os.makedirs(tdir)
    preflight(dev)

    # ---- 1. data
    files, info = collect_files(int(args.max_data_mb * 1e6))
    train_files = [f for f in files if not f["held"]]
    held_files = [f for f in files if f["held"]]
    log(f"data: {info['n_files']} files ({info['n_held']} held out), {info['bytes'] / 1e6:.1f} MB, "
        f"{len(info['dists'])} dists used, {len(info['excluded'])} excluded, skipped {info['skipped']}")

    # ---- 2. tokenizer
    rng = random.Random(7)
    sample, tot = [], 0
    for f in rng.sample(train_files, len(train_files)):
        sample.append(f["text"])
        tot += len(f["text"])
        if tot > args.tok_sample_mb * 1e6:
            break
    tok, tok_stats = train_tokenizer(sample, tdir)
    shutil.copy(os.path.join(REPO_ROOT, "models", "tandem-code-demo", "chat_template.jinja"), tdir)
    samples = [held_files[i]["text"][:2000] for i in range(min(20, len(held_files)))] + \
              ["def f(x):\n    return x + 1\n", "  héllo wörld — ∑ 日本 \t\n\n", "<|turn>user\nhi<turn|>\n"]
    cls_name, cls_res, chat = check_hf_tokenizer(tdir, tok, samples)
    report["tokenizer"] = dict(tok_stats, tokenizer_class=cls_name, class_check=cls_res, chat_example=chat)
    log(f"tokenizer: {tok_stats}")
    tt = time.time()
    train_stream = tokenize_stream(tok, [f["text"] for f in train_files])
    held_stream = tokenize_stream(tok, [f["text"] for f in held_files])
    nbytes = sum(len(f["text"]) for f in files)
    log(f"tokenized {nbytes / 1e6:.1f} MB in {time.time() - tt:.1f}s: train {train_stream.size:,} tokens, "
        f"held-out {held_stream.size:,} ({nbytes / max(1, train_stream.size + held_stream.size):.2f} chars/token)")
    report["data"] = {k: info[k] for k in ("n_files", "n_held", "bytes", "skipped")}
    report["data"].update(train_tokens=int(train_stream.size), held_tokens=int(held_stream.size))
    write_data_md(os.path.join(tdir, "DATA.md"), info, f"vocab {VOCAB}, {tok_stats['merges']} merges",
                  int(train_stream.size), int(held_stream.size), args)
    train_t = torch.from_numpy(train_stream.astype(np.int32)).to(dev)
    held_t = torch.from_numpy(held_stream.astype(np.int32)).to(dev)
    del files, train_files, sample

    # ---- 3. target
    torch.manual_seed(0)
    tcfg = target_config()
    target = make_model(Gemma4ForConditionalGeneration, tcfg).to(dev)
    report["target_params"] = n_params(target)
    log(f"target params {report['target_params']:,}")
    remaining = args.deadline_s - elapsed() - args.reserve_s
    train_target(target, train_t, remaining * args.target_frac, args, report)
    ppl, ntok = eval_ppl(target, held_t, 400_000 if args.smoke else 2_000_000)
    tr_ppl, _ = eval_ppl(target, train_t[: 4_000_000], 200_000 if args.smoke else 1_000_000)
    report["heldout_ppl"], report["heldout_eval_tokens"], report["train_ppl_sample"] = ppl, ntok, tr_ppl
    log(f"held-out perplexity {ppl:.3f} over {ntok:,} tokens (train sample {tr_ppl:.3f})")
    target.to(torch.bfloat16).save_pretrained(tdir)
    target.to(torch.float32)
    for p in target.parameters():
        p.requires_grad_(False)

    # ---- 4. drafter
    torch.manual_seed(1)
    acfg = drafter_config()
    asst = make_model(Gemma4AssistantForCausalLM, acfg).to(dev)
    report["drafter_params"] = n_params(asst)
    log(f"drafter params {report['drafter_params']:,}")
    remaining = args.deadline_s - elapsed() - args.reserve_s
    train_drafter(asst, target, train_t, max(20.0, remaining), args, report)
    report["drafter_eval"] = eval_drafter(asst, target, held_t, 24 if args.smoke else 160)
    log(f"drafter held-out teacher-forced agreement: {report['drafter_eval']}")
    os.makedirs(adir, exist_ok=True)
    asst.to(torch.bfloat16).save_pretrained(adir)
    for d in (tdir, adir):
        gp = os.path.join(d, "generation_config.json")
        if os.path.exists(gp):
            os.remove(gp)
        add_top_level_token_ids(d)
    shutil.copy(os.path.join(tdir, "tokenizer.json"), adir)
    shutil.copy(os.path.join(tdir, "tokenizer_config.json"), adir)
    del target, asst
    torch.cuda.empty_cache()

    # ---- 5. checks with transformers' classes (reloaded from disk, f32, eager)
    tgt = load_for_check(Gemma4ForConditionalGeneration, tdir, dev)
    ast = load_for_check(Gemma4AssistantForCausalLM, adir, dev)
    held_ids = held_stream.astype(np.int64)
    doc_starts = np.nonzero(held_ids == BOS)[0]
    prompts, golden_prompts = [], []
    rs = np.random.RandomState(3)
    for s in rs.permutation(doc_starts)[:64]:
        doc = held_ids[s: s + 400].tolist()
        if EOS in doc:
            doc = doc[: doc.index(EOS)]
        if len(doc) >= 140:
            prompts.append(doc[:128])
        if len(doc) >= 320 and len(golden_prompts) < 1:
            golden_prompts.append(doc[:300])
    gp_short = [p[:40] for p in prompts[:1]] + [p[:128] for p in prompts[1:2]]
    golden_prompts = gp_short + golden_prompts
    n_eval = 4 if args.smoke else 12
    n_new = 16 if args.smoke else 64
    def guard(name, fn):
        try:
            report[name] = fn()
            log(f"{name}: {json.dumps(report[name])[:1500]}")
        except Exception:
            import traceback

            report[name] = "FAILED: " + traceback.format_exc()[-1500:]
            log(f"{name} FAILED\n{traceback.format_exc()}")

    guard("golden", lambda: make_golden(tgt, golden_prompts, 16 if args.smoke else 64,
                                        os.path.join(tdir, "golden.safetensors")))
    guard("tandem_acceptance", lambda: tandem_round_acceptance(tgt, ast, prompts[:n_eval], (1, 2, 3), n_new))
    guard("hf_assisted", lambda: hf_assisted(tgt, ast, prompts[: 2 if args.smoke else 8], (1, 3), n_new))

    def samples():
        hf_tok = transformers.AutoTokenizer.from_pretrained(tdir)
        res = []
        for ids in golden_prompts[:2]:
            with torch.no_grad():
                out = tgt.generate(torch.tensor([ids], device=dev), max_new_tokens=48, do_sample=False)
            res.append({"prompt": hf_tok.decode(ids[-120:]), "completion": hf_tok.decode(out[0, len(ids):])})
        return res

    guard("samples", samples)

    # ---- pack
    sizes = {os.path.relpath(p, mdir): os.path.getsize(p) for p in glob.glob(os.path.join(mdir, "*", "*"))}
    report["files"] = sizes
    report["total_bytes"] = sum(sizes.values())
    report["wall_s"] = round(elapsed(), 1)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    subprocess.run(f"tar czf - -C {args.work} models | split -b 15m -d - {args.out}/models.tgz.part-",
                   shell=True, check=True)
    log(f"packed {report['total_bytes'] / 1e6:.1f} MB of model files; wall {elapsed():.1f}s")


if __name__ == "__main__":
    main()

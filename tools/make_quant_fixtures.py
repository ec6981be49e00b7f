#!/usr/bin/env python3
"""Build tiny quantized Gemma 4 checkpoints + transformers goldens for tandem's quantized loaders.

Usage (torch 2.11 + transformers 5.17 + safetensors; CPU is enough, a GPU is not needed):
    python3 tools/make_quant_fixtures.py --out tests/fixtures/quant [--only NAME,...]
    python3 tools/make_quant_fixtures.py --verify-packers     # packers vs published vectors only

Each fixture directory gets config.json (with quantization_config), model.safetensors in the
format's own tensor layout, and golden.safetensors (the same keys as tools/make_fixtures.py writes:
ids / prefill_logits / greedy / decode_logits per prompt). The goldens are computed by transformers
in f32 with every quantized linear replaced by its *dequantized* weight, so they test tandem's
reading and arithmetic of each format, not the quantization error.

The packers are written from the format specifications (shared/research/quant-formats.md); no
compressed-tensors / AutoAWQ / GPTQ package is used. --verify-packers (also run before building)
checks them against vectors published in those projects' tests, and every written checkpoint is read
back with an independent unpacker and compared bit for bit with the values the golden used.
"""
import argparse
import json
import os
import shutil
import sys
import time
import traceback

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
from transformers import Gemma4ForCausalLM, Gemma4TextConfig  # noqa: E402

S, F = mf.S, mf.F
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i of an AutoAWQ word holds column 8c + AWQ_ORDER[i]


def log(*a):
    print(*a, flush=True)


def fail(msg):
    raise RuntimeError(msg)


# --------------------------------------------------------------------------------------
# bit packing
# --------------------------------------------------------------------------------------
def to_int32(words64):
    """uint32 values held in int64 -> the int32 with the same bits."""
    w = words64 & 0xFFFFFFFF
    return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)


def pack_last(u, bits):
    """unsigned codes [..., K] -> int32 [..., K*bits/32], element j of a word at bits [bits*j, ...)."""
    per = 32 // bits
    if u.shape[-1] % per:
        pad = per - u.shape[-1] % per
        u = torch.cat([u, torch.zeros(*u.shape[:-1], pad, dtype=u.dtype)], dim=-1)
    u = u.to(torch.int64).reshape(*u.shape[:-1], -1, per)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    return to_int32((u << shifts).sum(-1))


def unpack_last(words, bits, n):
    per = 32 // bits
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(per, dtype=torch.int64) * bits
    u = (w.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return u.reshape(*words.shape[:-1], -1)[..., :n]


def ct_pack(q, bits):
    """compressed-tensors pack_to_int32 along the last dim: signed q -> q + 2^(bits-1), LSB first."""
    return pack_last(q.to(torch.int64) + (1 << (bits - 1)), bits)


def ct_pack_dim0(q, bits):
    """compressed-tensors pack_to_int32(..., packed_dim=0): zero points packed along N."""
    return ct_pack(q.transpose(-1, -2), bits).transpose(-1, -2).contiguous()


def e2m1_codes(v):
    """exact E2M1 values -> 4-bit codes (bit 3 sign, bits 0-2 index into E2M1)."""
    mag = (v.abs().unsqueeze(-1) == E2M1).to(torch.int64)
    if not bool((mag.sum(-1) == 1).all()):
        fail("e2m1_codes: value not in the E2M1 table")
    idx = mag.argmax(-1)
    return idx | (torch.signbit(v).to(torch.int64) << 3)


def pack_fp4(codes):
    """NVFP4: two codes per byte, element 2j in the low nibble."""
    c = codes.reshape(*codes.shape[:-1], -1, 2)
    return (c[..., 0] | (c[..., 1] << 4)).to(torch.uint8)


def awq_pack(u):
    """AutoAWQ gemm: unsigned codes [K, N] -> int32 [K, N/8] with the interleaved column order."""
    K, N = u.shape
    cols = u.to(torch.int64).reshape(K, N // 8, 8)[:, :, AWQ_ORDER]
    shifts = torch.arange(8, dtype=torch.int64) * 4
    return to_int32((cols << shifts).sum(-1))


def awq_unpack(words, n):
    K = words.shape[0]
    nib = unpack_last(words, 4, words.shape[1] * 8).reshape(K, -1, 8)
    out = torch.empty_like(nib)
    out[:, :, AWQ_ORDER] = nib
    return out.reshape(K, -1)[:, :n]


# --------------------------------------------------------------------------------------
# published vectors (facts from the projects' own tests, not their code)
# --------------------------------------------------------------------------------------
def verify_packers():
    # compressed-tensors tests/test_compressors/test_pack_quant.py, test_pack_to_int32:
    # (num_bits, signed values, expected int32 words)
    ct_vectors = [
        (4, [[1]], [[9]]),
        (8, [[1]], [[129]]),
        (4, [[1, 2, 3, 4]], [[52137]]),
        (4, [[-8, -7, -6, -5, -4, -3, -2, -1]], [[1985229328]]),
        (8, [[1, 2, 3, 4]], [[-2071756159]]),
        (8, [[-128, -127, -126, -125]], [[50462976]]),
        (4, [[-8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4]], [[1985229328, 52137]]),
        (4, [[-8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, -8, -8, -8, -8],
             [1, 2, 3, 4, -8, -8, -8, -8, -8, -7, -6, -5, -4, -3, -2, -1]],
         [[1985229328, 52137], [52137, 1985229328]]),
        (8, [[1, 2, 3, 4], [-128, -127, -126, -125]], [[-2071756159], [50462976]]),
        (8, [[1, 2, 3, 4, -128, -127, -126, -125], [-128, -127, -126, -125, 1, 2, 3, 4]],
         [[-2071756159, 50462976], [50462976, -2071756159]]),
    ]
    for bits, vals, want in ct_vectors:
        got = ct_pack(torch.tensor(vals), bits)
        if not torch.equal(got, torch.tensor(want, dtype=torch.int32)):
            fail(f"ct_pack({vals}, {bits}) = {got.tolist()}, published {want}")
        back = unpack_last(got, bits, len(vals[0])) - (1 << (bits - 1))
        if not torch.equal(back, torch.tensor(vals)):
            fail(f"unpack of {want} gave {back.tolist()}")
    # compressed-tensors test_pack_quant.py: zero points pack along dim 0 (shape [ceil(N/8), G]).
    zp = torch.randint(-8, 8, (20, 3))
    pz = ct_pack_dim0(zp, 4)
    if tuple(pz.shape) != (3, 3):
        fail(f"packed zero points have shape {tuple(pz.shape)}, expected (3, 3)")
    if not torch.equal(unpack_last(pz.t(), 4, 20).t() - 8, zp):
        fail("zero point pack/unpack along dim 0 disagree")
    # compressed-tensors tests/test_compressors/test_fp4_quant.py test_pack_unpack: this matrix of
    # E2M1 values (with signed zeros) survives pack/unpack, signs included; the value table is
    # _FP4_VALUES = [0, 0.5, 1, 1.5, 2, 3, 4, 6].
    x = torch.tensor([[-0.5, -6.0, -0.5, -1.5, -1.0, 6.0, 0.0, -0.0],
                      [-1.0, -6.0, -0.5, -0.0, 0.5, 0.5, -0.0, 0.0],
                      [-3.0, -6.0, -0.5, -2.0, -0.5, -1.5, -0.0, -0.0],
                      [1.5, 6.0, -0.0, -0.5, 1.0, 1.0, -0.0, 0.0]])
    packed = pack_fp4(e2m1_codes(x))
    if tuple(packed.shape) != (4, 4) or packed.dtype != torch.uint8:
        fail("pack_fp4 shape/dtype")
    lo, hi = (packed & 15).to(torch.int64), (packed >> 4).to(torch.int64)
    codes = torch.stack([lo, hi], -1).reshape(4, 8)
    back = E2M1[codes & 7] * torch.where(codes >= 8, -1.0, 1.0)
    if not (torch.equal(back, x) and torch.equal(torch.signbit(back), torch.signbit(x))):
        fail("E2M1 pack/unpack is not exact")
    if int(packed[0, 0]) != 9 | (15 << 4):  # codes of -0.5 (9) and -6 (15): element 0 in the low nibble
        fail(f"first NVFP4 byte {int(packed[0, 0]):#x}, expected 0xf9")
    # AutoAWQ: the unpackers in vLLM's and AutoAWQ's tests reorder the nibbles of each word with
    # AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7] (column j sits in nibble REVERSE[j]).
    u = torch.arange(16).reshape(2, 8) % 16
    w = awq_pack(u)
    reverse = [0, 4, 1, 5, 2, 6, 3, 7]
    nib = unpack_last(w, 4, 8)
    if not torch.equal(nib[:, reverse], u):
        fail(f"awq_pack nibbles {nib.tolist()} do not reorder to {u.tolist()} with AWQ_REVERSE_ORDER")
    if not torch.equal(awq_unpack(w, 8), u):
        fail("awq_unpack(awq_pack(u)) != u")
    # GPTQ v1 stores zero - 1: a symmetric 4-bit checkpoint's qzeros words are all 0x77777777.
    if int(pack_last(torch.full((1, 8), 8 - 1), 4)[0, 0]) != 0x77777777:
        fail("GPTQ v1 symmetric zero word is not 0x77777777")
    log("packers agree with the published vectors")


def gptq_pack_k(u):
    """GPTQ qweight: unsigned codes [N, K] -> int32 [K*bits/32, N] (consecutive K rows per word)."""
    return pack_last(u, 4).t().contiguous()


# --------------------------------------------------------------------------------------
# quantizers: each returns (tensors to save under the module's name, dequantized f32 weight)
# --------------------------------------------------------------------------------------
def groups_of(K, group, g_idx):
    return g_idx if g_idx is not None else torch.arange(K) // group


def group_reduce(W, gi, G, fn):
    return torch.stack([fn(W[:, gi == g], dim=1) for g in range(G)], dim=1)


def ct_int(W, bits, group, symmetric, g_idx=None):
    N, K = W.shape
    group = group or K
    G = K // group
    gi = groups_of(K, group, g_idx)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if symmetric:
        amax = group_reduce(W.abs(), gi, G, lambda t, dim: t.amax(dim))
        s = (amax / ((qmax - qmin) / 2)).clamp_min(1e-8).to(torch.bfloat16)
        zp = torch.zeros(N, G, dtype=torch.int64)
    else:
        lo = group_reduce(W, gi, G, lambda t, dim: t.amin(dim)).clamp_max(0)
        hi = group_reduce(W, gi, G, lambda t, dim: t.amax(dim)).clamp_min(0)
        s = ((hi - lo) / (qmax - qmin)).clamp_min(1e-8).to(torch.bfloat16)
        zp = (qmin - torch.round(lo / s.float())).clamp(qmin, qmax).to(torch.int64)
    sf, zpk = s.float()[:, gi], zp[:, gi]
    q = (torch.round(W / sf) + zpk).clamp(qmin, qmax).to(torch.int64)
    deq = (q - zpk).float() * sf
    t = {"weight_packed": ct_pack(q, bits), "weight_scale": s,
         "weight_shape": torch.tensor([N, K], dtype=torch.int64)}
    if not symmetric:
        t["weight_zero_point"] = ct_pack_dim0(zp, bits)
    if g_idx is not None:
        t["weight_g_idx"] = g_idx.to(torch.int32)
    return t, deq


def ct_fp8(W, per_tensor):
    amax = W.abs().amax() if per_tensor else W.abs().amax(dim=1, keepdim=True)
    s = (amax / 448.0).clamp_min(1e-12).to(torch.bfloat16)
    q = (W / s.float()).clamp(-448, 448).to(torch.float8_e4m3fn)
    deq = q.float() * s.float()
    return {"weight": q, "weight_scale": s.reshape(1) if per_tensor else s}, deq


def ct_nvfp4(W):
    N, K = W.shape
    amax = W.abs().amax().clamp_min(1e-12)
    gscale = (448.0 * 6.0 / amax).to(torch.float32)
    blocks = W.reshape(N, K // 16, 16)
    bscale = (gscale * blocks.abs().amax(-1) / 6.0).clamp(max=448).to(torch.float8_e4m3fn)
    eff = bscale.float() / gscale  # what tandem multiplies with: fp8 scale / global scale
    x = blocks / eff.clamp_min(1e-30).unsqueeze(-1)
    idx = (x.abs().unsqueeze(-1) - E2M1).abs().argmin(-1)
    vals = E2M1[idx] * torch.where(x < 0, -1.0, 1.0)
    vals = torch.where(eff.unsqueeze(-1) > 0, vals, torch.zeros_like(vals))
    deq = (vals * eff.unsqueeze(-1)).reshape(N, K)
    codes = e2m1_codes(vals.reshape(N, K))
    return {"weight_packed": pack_fp4(codes), "weight_scale": bscale,
            "weight_global_scale": gscale.reshape(1)}, deq


def awq(W, group):
    N, K = W.shape
    G = K // group
    Wg = W.reshape(N, G, group)
    lo, hi = Wg.amin(-1).clamp_max(0), Wg.amax(-1).clamp_min(0)
    s = ((hi - lo) / 15).clamp_min(1e-8).to(torch.float16)
    z = (-torch.round(lo / s.float())).clamp(0, 15).to(torch.int64)
    sf, zk = s.float().repeat_interleave(group, 1), z.repeat_interleave(group, 1)
    q = (torch.round(W / sf) + zk).clamp(0, 15).to(torch.int64)
    deq = (q - zk).float() * sf
    return {"qweight": awq_pack(q.t().contiguous()), "qzeros": awq_pack(z.t().contiguous()),
            "scales": s.t().contiguous()}, deq


def gptq(W, group, perm):
    """GPTQ v1, symmetric, desc_act: columns processed in `perm` order, so column perm[i] is in group i // group."""
    N, K = W.shape
    G = K // group
    g_idx = torch.empty(K, dtype=torch.int64)
    g_idx[perm] = torch.arange(K) // group
    amax = group_reduce(W.abs(), g_idx, G, lambda t, dim: t.amax(dim))
    s = (amax / 7.5).clamp_min(1e-8).to(torch.float16)
    sf = s.float()[:, g_idx]
    q = (torch.round(W / sf) + 8).clamp(0, 15).to(torch.int64)
    deq = (q - 8).float() * sf
    zeros = torch.full((G, N), 8 - 1, dtype=torch.int64)  # v1 stores zero - 1
    return {"qweight": gptq_pack_k(q), "qzeros": pack_last(zeros, 4), "scales": s.t().contiguous(),
            "g_idx": g_idx.to(torch.int32)}, deq


# --------------------------------------------------------------------------------------
# independent readers (the check that what was written is what the golden used)
# --------------------------------------------------------------------------------------
def read_back(fmt, t, N, K, group):
    if fmt in ("ct_int4", "ct_int8"):
        bits = 4 if fmt == "ct_int4" else 8
        u = unpack_last(t["weight_packed"], bits, K)
        G = t["weight_scale"].shape[-1]
        gi = t["weight_g_idx"].long() if "weight_g_idx" in t else torch.arange(K) // (K // G)
        z = (unpack_last(t["weight_zero_point"].transpose(-1, -2), bits, N).transpose(-1, -2)
             if "weight_zero_point" in t else torch.full((N, G), 1 << (bits - 1)))
        return (u - z[:, gi]).float() * t["weight_scale"].float()[:, gi]
    if fmt in ("ct_fp8_channel", "ct_fp8_tensor"):
        return t["weight"].float() * t["weight_scale"].float().reshape(-1, 1)
    if fmt == "nvfp4":
        p = t["weight_packed"].to(torch.int64)
        codes = torch.stack([p & 15, p >> 4], -1).reshape(N, K)
        v = E2M1[codes & 7] * torch.where(codes >= 8, -1.0, 1.0)
        eff = t["weight_scale"].float() / t["weight_global_scale"]
        return v * eff.repeat_interleave(16, 1)
    if fmt == "awq":
        u = awq_unpack(t["qweight"], N).t()
        z = awq_unpack(t["qzeros"], N).t()
        gi = torch.arange(K) // group
        return (u - z[:, gi]).float() * t["scales"].t().float()[:, gi]
    if fmt == "gptq":
        u = unpack_last(t["qweight"].t(), 4, K)
        z = unpack_last(t["qzeros"], 4, N).t() + 1
        gi = t["g_idx"].long()
        return (u - z[:, gi]).float() * t["scales"].t().float()[:, gi]
    fail(f"read_back: unknown format {fmt}")


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------
def moe_config():
    kw = mf.moe_text_kwargs()
    kw.update(intermediate_size=64, moe_intermediate_size=32, num_experts=4, top_k_experts=2,
              num_hidden_layers=3, layer_types=[S, S, F])
    return Gemma4TextConfig(**kw)


def dense128_config():
    """every K a multiple of 128 (for group 128), separate v_proj."""
    kw = mf.moe_text_kwargs()
    for k in ("num_experts", "top_k_experts", "moe_intermediate_size", "num_global_key_value_heads"):
        kw.pop(k)
    kw.update(hidden_size=128, intermediate_size=128, enable_moe_block=False, attention_k_eq_v=False,
              num_hidden_layers=3, layer_types=[S, S, F])
    return Gemma4TextConfig(**kw)


CT_IGNORE = ["lm_head", "re:.*embed_tokens.*", "re:.*router.*"]


def ct_config(fmt_name, weights):
    return {"quant_method": "compressed-tensors", "format": fmt_name, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                          "input_activations": None, "output_activations": None}},
            "ignore": CT_IGNORE}


def int_args(bits, group, symmetric, actorder=None):
    return {"num_bits": bits, "type": "int", "symmetric": symmetric, "dynamic": False,
            "strategy": "group" if group else "channel", "group_size": group, "actorder": actorder}


FIXTURES = {
    # name: (geometry, format, group, experts spelling, quantization_config)
    "ct-int4-sym-g32": ("moe", "ct_int4", 32, "per_expert",
                        ct_config("pack-quantized", int_args(4, 32, True))),
    "ct-int4-sym-g32-fused": ("moe", "ct_int4", 32, "fused",
                              ct_config("pack-quantized", int_args(4, 32, True))),
    "ct-int4-asym-g128-actorder": ("dense128", "ct_int4", 128, None,
                                   ct_config("pack-quantized", int_args(4, 128, False, "group"))),
    "ct-int8-channel": ("moe", "ct_int8", 0, "per_expert", ct_config("pack-quantized", int_args(8, None, True))),
    "ct-fp8-channel": ("moe", "ct_fp8_channel", 0, "per_expert",
                       ct_config("float-quantized", {"num_bits": 8, "type": "float", "symmetric": True,
                                                     "dynamic": False, "strategy": "channel"})),
    "ct-fp8-tensor": ("moe", "ct_fp8_tensor", 0, "per_expert",
                      ct_config("float-quantized", {"num_bits": 8, "type": "float", "symmetric": True,
                                                    "dynamic": False, "strategy": "tensor"})),
    "nvfp4": ("moe", "nvfp4", 16, "per_expert",
              ct_config("nvfp4-pack-quantized", {"num_bits": 4, "type": "float", "symmetric": True,
                                                 "dynamic": False, "strategy": "tensor_group", "group_size": 16})),
    "awq-g32": ("moe", "awq", 32, "per_expert",
                {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
                 "modules_to_not_convert": ["router", "embed_tokens"]}),
    "gptq-g32-desc-act": ("moe", "gptq", 32, "per_expert",
                          {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": True,
                           "checkpoint_format": "gptq", "modules_to_not_convert": ["router", "embed_tokens"]}),
}

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantize(fmt, W, group, perm, symmetric, actorder):
    """one [N, K] weight -> (tensors, dequantized); perm: this input's act-order column permutation."""
    K = W.shape[1]
    if fmt == "ct_int4":
        g_idx = (torch.arange(K) // group)[perm] if actorder else None
        return ct_int(W, 4, group, symmetric, g_idx)
    if fmt == "ct_int8":
        return ct_int(W, 8, group, True)
    if fmt == "ct_fp8_channel":
        return ct_fp8(W, per_tensor=False)
    if fmt == "ct_fp8_tensor":
        return ct_fp8(W, per_tensor=True)
    if fmt == "nvfp4":
        return ct_nvfp4(W)
    if fmt == "awq":
        return awq(W, group)
    if fmt == "gptq":
        return gptq(W, group, perm)
    fail(f"unknown format {fmt}")


def suffixed(fmt, module, key, fused):
    """checkpoint name of tensor `key` of a module: "<module>.<key>", or for a fused 3-D parameter
    (compressed-tensors naming of a parameter P: P_packed, P_scale, ...; FP8's value tensor is P itself)."""
    if not fused:
        return f"{module}.{key}"
    if key == "weight":
        return module
    return f"{module}_{key[len('weight_'):]}"


def build(name, out_root, seed0):
    geom, fmt, group, spelling, qcfg = FIXTURES[name]
    d = os.path.join(out_root, name)
    wcfg = qcfg.get("config_groups", {}).get("group_0", {}).get("weights", {})
    symmetric, actorder = wcfg.get("symmetric", True), wcfg.get("actorder") == "group"
    for attempt in range(20):
        seed = seed0 + attempt
        torch.manual_seed(seed)
        cfg = moe_config() if geom == "moe" else dense128_config()
        model = Gemma4ForCausalLM(cfg)
        mf.randomize(model, seed)
        mf.save_bf16(model, d)
        m = mf.load_f32(Gemma4ForCausalLM, d)
        g = torch.Generator().manual_seed(seed)

        def rng_perm(K):
            return torch.randperm(K, generator=g)

        sd = load_file(os.path.join(d, "model.safetensors"))
        params = dict(m.named_parameters())
        out = {}
        checks = []  # (tensors, deq, N, K)
        with torch.no_grad():
            for key in list(sd.keys()):
                mod = key[: -len(".weight")] if key.endswith(".weight") else None
                if mod and mod.rsplit(".", 1)[-1] in LINEARS and sd[key].ndim == 2:
                    W = params[key].detach().float()
                    t, deq = quantize(fmt, W, group, rng_perm(W.shape[1]), symmetric, actorder)
                    params[key].copy_(deq)
                    for k2, v in t.items():
                        out[f"{mod}.{k2}"] = v
                    checks.append((t, deq, W.shape[0], W.shape[1]))
                elif key.endswith("experts.gate_up_proj") or key.endswith("experts.down_proj"):
                    P = params[key].detach().float()  # [E, N, K]
                    E, N, K = P.shape
                    base = key.rsplit(".", 1)[0]  # "...experts"
                    parts = ["gate_proj", "up_proj"] if key.endswith("gate_up_proj") else ["down_proj"]
                    deqs, per_expert = [], []
                    for e in range(E):
                        # gate and up read the same input: one act-order permutation for both
                        perm = rng_perm(K)
                        rows = N // len(parts)
                        dq = []
                        for i, part in enumerate(parts):
                            t, deq = quantize(fmt, P[e, i * rows:(i + 1) * rows], group, perm, symmetric, actorder)
                            per_expert.append((e, part, t))
                            checks.append((t, deq, rows, K))
                            dq.append(deq)
                        deqs.append(torch.cat(dq, 0))
                    params[key].copy_(torch.stack(deqs))
                    if spelling == "per_expert":
                        for e, part, t in per_expert:
                            for k2, v in t.items():
                                out[f"{base}.{e}.{part}.{k2}"] = v
                    else:  # fused: stack per tensor kind; gate rows before up rows within each expert
                        by_key = {}
                        for e, part, t in per_expert:
                            by_key.setdefault(e, []).append(t)
                        for k2 in per_expert[0][2]:
                            if k2 == "weight_shape":
                                out[suffixed(fmt, key, k2, True)] = torch.tensor([E, N, K], dtype=torch.int64)
                                continue
                            if k2 == "weight_global_scale" or fmt == "ct_fp8_tensor":
                                fail(f"{name}: the fused spelling is only generated for per-row / per-group scales")
                            if k2 == "weight_g_idx":  # one permutation per expert, shared by its parts
                                out[suffixed(fmt, key, k2, True)] = torch.stack([by_key[e][0][k2] for e in range(E)])
                                continue
                            out[suffixed(fmt, key, k2, True)] = torch.stack(
                                [torch.cat([t[k2] for t in by_key[e]], 0) for e in range(E)])
                else:
                    out[key] = sd[key]
        for t, deq, N, K in checks:
            back = read_back(fmt, t, N, K, group)
            if not torch.equal(back, deq):
                fail(f"{name}: read-back of a packed weight differs from the golden's dequantized weight "
                     f"(max diff {float((back - deq).abs().max()):.3g})")
        rg = mf.RouterGap(m)
        gold, gap = mf.target_golden(m)
        rg.remove()
        log(f"[{name}] seed {seed}: min greedy gap {gap:.4g}, min router gap {rg.min_gap:.4g}")
        if gap < mf.GAP_MIN or (rg.min_gap != float("inf") and rg.min_gap < mf.ROUTER_GAP_MIN):
            log(f"[{name}] re-seeding (near tie)")
            continue
        os.remove(os.path.join(d, "model.safetensors"))
        save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(d, "model.safetensors"),
                  metadata={"format": "pt"})
        with open(os.path.join(d, "config.json")) as f:
            config = json.load(f)
        config["quantization_config"] = qcfg
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        mf.write_golden(os.path.join(d, "golden.safetensors"), gold)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        log(f"[{name}] wrote {d} ({size / 1024:.0f} KiB)")
        return
    fail(f"{name}: no seed without near ties")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/quant")
    ap.add_argument("--only", default="")
    ap.add_argument("--verify-packers", action="store_true")
    args = ap.parse_args()
    log("torch", torch.__version__)
    verify_packers()
    if args.verify_packers:
        return 0
    only = set(filter(None, args.only.split(",")))
    os.makedirs(args.out, exist_ok=True)
    failures = []
    for i, name in enumerate(FIXTURES):
        if only and name not in only:
            continue
        try:
            t0 = time.time()
            build(name, args.out, 500 + 10 * i)
            log(f"[{name}] done in {time.time() - t0:.1f}s")
        except Exception:
            failures.append(name)
            log(f"[{name}] FAILED\n" + traceback.format_exc())
            shutil.rmtree(os.path.join(args.out, name), ignore_errors=True)
    log("failures:", failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Run on the GPU machine (transformers 5.17): load the bundled target and drafter exactly as committed
(models/, published config spelling) with transformers and compare with models/tandem-code-demo/golden.safetensors,
which tandem's tests also use: prefill logits (f32 math on the bf16 weights), greedy continuations, and
greedy assisted generation with the drafter (must equal plain greedy)."""
import torch
from safetensors.torch import load_file
from transformers import Gemma4AssistantForCausalLM, Gemma4ForConditionalGeneration

torch.backends.cuda.matmul.allow_tf32 = False
golden = load_file("models/tandem-code-demo/golden.safetensors")
target = Gemma4ForConditionalGeneration.from_pretrained("models/tandem-code-demo", dtype=torch.bfloat16,
                                                        attn_implementation="eager").to(torch.float32).eval()
drafter = Gemma4AssistantForCausalLM.from_pretrained("models/tandem-code-demo-assistant", dtype=torch.bfloat16,
                                                     attn_implementation="eager").to(torch.float32).eval()
print("loaded", type(target).__name__, type(drafter).__name__)
worst = 0.0
with torch.no_grad():
    for i in range(3):
        ids = golden[f"ids.{i}"].long()[None]
        logits = target(input_ids=ids).logits[0]
        for j, pos in enumerate(golden[f"prefill_pos.{i}"].tolist()):
            ref = golden[f"prefill_logits.{i}"][j]
            worst = max(worst, ((logits[pos] - ref).norm() / ref.norm()).item())
        n = 32
        plain = target.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, ids.shape[1]:]
        assisted = target.generate(ids, assistant_model=drafter, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   )[0, ids.shape[1]:]
        want = golden[f"greedy.{i}"][:n].long()
        print(f"prompt {i}: plain == golden: {torch.equal(plain, want)}; assisted == golden: {torch.equal(assisted, want)}")
print(f"worst prefill relative L2 vs golden: {worst:.2e}")

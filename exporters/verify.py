"""Verification is part of export: run the artifact in its runtime, compare with PyTorch.

A fixed prompt set is scored by both; the report holds the max abs logit difference,
top-1 agreement, whether greedy generation through the runtime's KV cache gives the same
tokens, and perplexity on a small text through both. Tolerances:
  - f32: max abs logit diff <= 1e-3 and the same greedy tokens (at an exact tie, within 1e-3 in
    PyTorch's own logits, either token is accepted and the report says so);
  - f16/bf16: perplexity within 1% of PyTorch's; q8_0: 3%; q4_0/q4_k: 15%.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from edgeprune.evaluate import nll_of_logits

from .runtimes import open_artifact

F32_MAX_ABS = 1e-3
PPL_TOLERANCE = {"f16": 0.01, "bf16": 0.01, "q8_0": 0.03, "q4_0": 0.15, "q4_k": 0.15}
PROMPTS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun.",
    "The quick brown fox jumps over the lazy dog, and then it runs into the forest to find food.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
]
PPL_TEXT = " ".join(PROMPTS * 4)


def _ids(tokenizer, text: str, vocab: int) -> list[int]:
    if tokenizer is None:
        g = torch.Generator().manual_seed(len(text))
        return torch.randint(0, vocab, (24,), generator=g).tolist()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    return ([bos] if bos is not None else []) + list(ids)


@torch.no_grad()
def _tie_consistent(model, prompt: list[int], ref: list[int], got: list[int], tol: float = F32_MAX_ABS) -> bool:
    """Same greedy tokens, or the first difference is a tie in PyTorch's own logits (within tol);
    after a tie the continuations legitimately diverge."""
    for k, (a, b) in enumerate(zip(ref, got)):
        if a != b:
            logits = model(torch.tensor([prompt + ref[:k]])).logits[0, -1]
            return float(logits[a] - logits[b]) <= tol
    return True


@torch.no_grad()
def verify_artifact(model, path, dtype: str, tokenizer=None, n_ctx: int = 512) -> dict:
    """Compare `path` (ONNX dir/file or GGUF) with `model`; returns the verify report."""
    model = model.float().eval()
    vocab = int(model.config.vocab_size)
    sess = open_artifact(path, n_ctx=n_ctx) if str(path).endswith(".gguf") else open_artifact(path)
    max_abs, agree, total = 0.0, 0, 0
    greedy_match = exact = True
    gen_ref, gen_got = [], []
    for text in PROMPTS:
        ids = _ids(tokenizer, text, vocab)[:64]
        ref = model(torch.tensor([ids])).logits[0].numpy()
        got = sess.logits(ids)
        max_abs = max(max_abs, float(np.abs(ref - got).max()))
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        total += len(ids)
        r = model.generate(torch.tensor([ids[:16]]), max_new_tokens=8, do_sample=False, min_new_tokens=8,
                           pad_token_id=0)[0, 16:].tolist()
        g = sess.generate(ids[:16], 8)
        gen_ref.append(r)
        gen_got.append(g)
        exact &= r == g
        greedy_match &= _tie_consistent(model, ids[:16], r, g)
    ids = _ids(tokenizer, PPL_TEXT, vocab)[:n_ctx]
    t = torch.tensor([ids])
    nll_ref, n = nll_of_logits(model(t).logits, t)
    nll_got, _ = nll_of_logits(torch.from_numpy(sess.logits(ids))[None], t)
    ppl_ref, ppl_got = math.exp(nll_ref / n), math.exp(nll_got / n)
    delta = abs(ppl_got - ppl_ref) / ppl_ref
    report = {
        "dtype": dtype,
        "max_abs_logit_diff": max_abs,
        "top1_agreement": agree / total,
        "greedy_tokens_match": greedy_match,
        "greedy_tokens_identical": exact,
        "greedy_tokens": {"pytorch": gen_ref, "runtime": gen_got},
        "perplexity": {"pytorch": ppl_ref, "runtime": ppl_got, "relative_delta": delta, "tokens": n,
                       "text": "built-in verification text (not an evaluation set)"},
        "prompts": len(PROMPTS),
    }
    if dtype == "f32":
        report["tolerance"] = {"max_abs_logit_diff": F32_MAX_ABS, "greedy_tokens_match": True}
        report["passed"] = bool(max_abs <= F32_MAX_ABS and greedy_match)
    else:
        tol = PPL_TOLERANCE[dtype]
        report["tolerance"] = {"perplexity_relative_delta": tol}
        report["passed"] = bool(delta <= tol)
    return report

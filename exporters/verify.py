"""Verification is part of export: run the artifact in its runtime, compare with PyTorch.

A fixed prompt set is scored by both; the report holds the max abs logit difference,
top-1 agreement, whether greedy generation through the runtime's KV cache gives the same
tokens, and perplexity on a small text through both. Tolerances:
  - f32: max abs logit diff <= 1e-3 and the same greedy tokens (at an exact tie, within 1e-3 in
    PyTorch's own logits, either token is accepted and the report says so);
  - every dtype: all logits and both perplexities finite (a NaN never passes).
The PyTorch side is streamed layer by layer (`edgeprune.reference`): the model is never
loaded whole, and the runtime has released its artifact before PyTorch starts.
  - otherwise perplexity within the dtype's tolerance (exporters/dtypes.py: f16/bf16 1%,
    q8_0 3%, q6_k 6%, q5_k_m 10%, q4_0/q4_k_m 15%).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from edgeprune.evaluate import nll_of_logits

from .runtimes import open_artifact

F32_MAX_ABS = 1e-3
from .dtypes import get as dtype_facts
PROMPTS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun.",
    "The quick brown fox jumps over the lazy dog, and then it runs into the forest to find food.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
]
PPL_TEXT = " ".join(PROMPTS * 4)
GEN_PROMPT, GEN_NEW = 16, 8  # greedy check: 8 tokens after the first 16 of each prompt


def _ids(tokenizer, text: str, vocab: int) -> list[int]:
    if tokenizer is None:
        g = torch.Generator().manual_seed(len(text))
        return torch.randint(0, vocab, (24,), generator=g).tolist()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    return ([bos] if bos is not None else []) + list(ids)


def _greedy_check(ref: np.ndarray, start: int, got: list[int], tol: float = F32_MAX_ABS) -> tuple[list[int], bool]:
    """Teacher-forced greedy check on PyTorch's logits of prompt + runtime tokens.

    PyTorch's choice at each step given the runtime's earlier tokens; the runtime's token is
    accepted where it is PyTorch's argmax or ties with it within `tol` (after a tie either
    continuation is legitimate, and the runtime's is the one checked from then on). This is
    the greedy-generation comparison without a second, cached PyTorch generation loop.
    """
    chosen, ok = [], True
    for k, g in enumerate(got):
        row = ref[start - 1 + k]
        a = int(row.argmax())
        chosen.append(a)
        if a != g and not float(row[a] - row[g]) <= tol:
            ok = False
    return chosen, ok


def _runtime_side(path, n_ctx: int, prompts: list[list[int]], ppl_ids: list[int]) -> dict:
    """Everything the runtime computes, before any PyTorch memory is taken."""
    import gc

    from edgeprune.streaming import _trim_heap

    gc.collect()  # the exported module and program hold reference cycles
    _trim_heap()  # the export's freed pages go back before the runtime maps the artifact
    sess = open_artifact(path, n_ctx=n_ctx) if str(path).endswith(".gguf") else open_artifact(path, low_memory=True)
    try:
        return {"logits": [sess.logits(ids) for ids in prompts],
                "gen": [sess.generate(ids[:GEN_PROMPT], GEN_NEW) for ids in prompts],
                "ppl": sess.logits(ppl_ids)}
    finally:
        del sess


def _finite(*arrays) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


@torch.no_grad()
def verify_artifact(model, path, dtype: str, tokenizer=None, n_ctx: int = 512, progress: bool = False) -> dict:  # long: one report
    """Compare `path` (ONNX dir/file or GGUF) with `model` (a checkpoint directory, streamed
    layer by layer, or an in-memory model); returns the verify report. Any NaN or Inf in
    either side's logits or perplexity fails it."""
    from edgeprune.models import get_adapter
    from edgeprune.reference import reference_logits

    cfg = model.config if isinstance(model, torch.nn.Module) else _config(model)
    vocab = int(get_adapter(cfg).vocab_size)
    prompts = [_ids(tokenizer, text, vocab)[:64] for text in PROMPTS]
    ppl_ids = _ids(tokenizer, PPL_TEXT, vocab)[:n_ctx]
    rt = _runtime_side(path, n_ctx, prompts, ppl_ids)
    og_gen, og_skip = _genai_side(path, prompts)
    seqs = prompts + [ids[:GEN_PROMPT] + g for ids, g in zip(prompts, rt["gen"])] + [ppl_ids]
    seqs += [ids[:GEN_PROMPT] + g for ids, g in zip(prompts, og_gen or [])]
    ref = reference_logits(model, seqs, progress=progress)
    ref, ref_og = ref[: 2 * len(prompts) + 1], ref[2 * len(prompts) + 1:]
    ref_prompts, ref_gen, ref_ppl = ref[: len(prompts)], ref[len(prompts) : 2 * len(prompts)], ref[-1]
    finite = _finite(*ref, *rt["logits"], rt["ppl"])
    max_abs, agree, total = 0.0, 0, 0
    for r, g in zip(ref_prompts, rt["logits"]):
        max_abs = max(max_abs, float(np.abs(r - g).max()))
        agree += int((r.argmax(-1) == g.argmax(-1)).sum())
        total += r.shape[0]
    gen_ref, greedy_match = [], True
    for r, g in zip(ref_gen, rt["gen"]):
        chosen, ok = _greedy_check(r, GEN_PROMPT, g)
        gen_ref.append(chosen)
        greedy_match &= ok
    t = torch.tensor([ppl_ids])
    nll_ref, n = nll_of_logits(torch.from_numpy(ref_ppl)[None], t)
    nll_got, _ = nll_of_logits(torch.from_numpy(rt["ppl"])[None], t)
    ppl_ref, ppl_got = math.exp(min(nll_ref / n, 700)), math.exp(min(nll_got / n, 700))
    finite = finite and math.isfinite(ppl_ref) and math.isfinite(ppl_got) and math.isfinite(max_abs)
    delta = abs(ppl_got - ppl_ref) / ppl_ref if finite else float("inf")
    report = {
        "dtype": dtype,
        "all_finite": finite,
        "max_abs_logit_diff": max_abs if math.isfinite(max_abs) else None,
        "top1_agreement": agree / total,
        "greedy_tokens_match": greedy_match,
        "greedy_tokens_identical": gen_ref == rt["gen"],
        "greedy_tokens": {"pytorch": gen_ref, "runtime": rt["gen"],
                          "rule": "PyTorch's argmax on prompt + the runtime's tokens (ties within 1e-3 accepted)"},
        "perplexity": {"pytorch": ppl_ref if finite else None, "runtime": ppl_got if finite else None,
                       "relative_delta": delta if finite else None, "tokens": n,
                       "text": "built-in verification text (not an evaluation set)"},
        "prompts": len(PROMPTS),
        "reference": "streamed layer by layer (edgeprune.reference)",
    }
    if dtype == "f32":
        report["tolerance"] = {"max_abs_logit_diff": F32_MAX_ABS, "greedy_tokens_match": True}
        report["passed"] = bool(finite and max_abs <= F32_MAX_ABS and greedy_match)
    else:
        tol = dtype_facts(dtype).ppl_tolerance
        report["tolerance"] = {"perplexity_relative_delta": tol}
        report["passed"] = bool(finite and delta <= tol)
    if og_skip:
        report["genai"] = {"skipped": og_skip}
    if og_gen is not None:
        # GenAI runs the same graph in its own loop; a quantised graph may legitimately pick
        # any token whose PyTorch logit is within twice the artifact's measured logit error
        tol = F32_MAX_ABS if dtype == "f32" else max(F32_MAX_ABS, 2 * (max_abs if math.isfinite(max_abs) else 0.0))
        checks = [_greedy_check(r, GEN_PROMPT, g, tol) for r, g in zip(ref_og, og_gen)]
        report["genai"] = _genai_report(og_gen, [c for c, _ in checks], all(ok for _, ok in checks), tol)
        report["passed"] = bool(report["passed"] and report["genai"]["greedy_tokens_match"])
    if not finite:
        report["failure"] = "NaN or Inf in the logits or perplexity"
    return report


def _genai_side(path, prompts: list[list[int]]) -> tuple[list[list[int]] | None, str | None]:
    """Greedy tokens through onnxruntime-genai's generator when the folder is a GenAI package
    and the runtime is installed; else (None, why it was skipped) (GGUF: (None, None))."""
    from pathlib import Path

    from .genai import CONFIG, WHY_MIN_VERSION, GenAISession, available

    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    if not (folder / CONFIG).is_file():
        return None, None
    if available() is None:
        try:
            import onnxruntime_genai as og
        except ImportError:
            return None, "onnxruntime-genai is not installed (pip install 'edgeprune[genai]')"
        return None, f"onnxruntime-genai {og.__version__} is too old: {WHY_MIN_VERSION}"
    sess = GenAISession(folder)
    try:
        return [sess.generate(ids[:GEN_PROMPT], GEN_NEW) for ids in prompts], None
    finally:
        del sess


def _genai_report(tokens: list[list[int]], chosen: list[list[int]], ok: bool, tol: float) -> dict:
    import onnxruntime_genai as og

    return {"runtime": f"onnxruntime-genai {og.__version__}", "greedy_tokens_match": ok,
            "greedy_tokens_identical": tokens == chosen,
            "greedy_tokens": {"pytorch": chosen, "genai": tokens,
                              "rule": f"PyTorch's argmax on prompt + GenAI's tokens (ties within {tol:.3g} accepted)"}}


def _config(model_dir):
    from edgeprune.checkpoint import load_config

    return load_config(model_dir)

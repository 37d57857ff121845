"""Verification is part of export: run the artifact in its runtime, compare with PyTorch.

A fixed prompt set is scored by both; the report holds the max abs logit difference,
top-1 agreement, whether greedy generation through the runtime's KV cache gives the same
tokens, and perplexity on a small text through both. Tolerances:
  - f32: max abs logit diff <= 1e-3 and the same greedy tokens (at an exact tie, within 1e-3 in
    PyTorch's own logits, either token is accepted and the report says so);
  - every dtype: all logits and both perplexities finite (a NaN never passes).
The PyTorch side is streamed layer by layer (`edgeprune.measure.reference`): the model is never
loaded whole, and the runtime has released its artifact before PyTorch starts.
  - otherwise perplexity within the dtype's tolerance (edgeprune/dtypes.py: f16/bf16 1%,
    q8_0 3%, q6_k 6%, q5_k_m 10%, q4_0/q4_k_m 15%).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from edgeprune.measure.evaluate import nll_of_logits

from . import text_path

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


def _runtime_side(path, n_ctx: int, prompts: list[list[int]], ppl_ids: list[int], tokenizer=None) -> dict:
    """Everything the runtime computes, before any PyTorch memory is taken: logits, greedy
    tokens, and (with a tokenizer) the text path through the runtime's own tokenizer."""
    import gc

    from edgeprune.calibrate.streaming import _trim_heap

    from . import text_path

    gc.collect()  # the exported module and program hold reference cycles
    _trim_heap()  # the export's freed pages go back before the runtime maps the artifact
    from .formats import for_path

    form = for_path(path)
    sess = form.session(Path(path), "verify", n_ctx=n_ctx)
    try:
        out = {"logits": [sess.logits(ids) for ids in prompts],
               "gen": [sess.generate(ids[:GEN_PROMPT], GEN_NEW) for ids in prompts],
               "ppl": sess.logits(ppl_ids)}
        rt = form.text_path(sess) if tokenizer is not None else None
        if rt is not None:
            out["tokenizer"] = text_path.tokenizer_check(tokenizer, rt)
            out["text"] = text_path.generation_side(rt)
        return out
    finally:
        del sess


def _finite(*arrays) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


@torch.no_grad()
def verify_artifact(model, path, dtype: str, tokenizer=None, n_ctx: int = 512, progress: bool = False) -> dict:
    """Compare `path` (ONNX dir/file or GGUF) with `model` (a checkpoint directory, streamed
    layer by layer, or an in-memory model); returns the verify report. Any NaN or Inf in
    either side's logits or perplexity fails it."""
    from edgeprune.models import get_adapter
    from edgeprune.measure.reference import reference_logits

    cfg = model.config if isinstance(model, torch.nn.Module) else _config(model)
    vocab = int(get_adapter(cfg).vocab_size)
    prompts = [_ids(tokenizer, text, vocab)[:64] for text in PROMPTS]
    ppl_ids = _ids(tokenizer, PPL_TEXT, vocab)[:n_ctx]
    rt = _runtime_side(path, n_ctx, prompts, ppl_ids, tokenizer)
    from .formats import for_path

    og_gen, og_skip, og_text = for_path(path).second_runtime(path, prompts, tokenizer)
    seqs = prompts + [ids[:GEN_PROMPT] + g for ids, g in zip(prompts, rt["gen"])] + [ppl_ids]
    seqs += [ids[:GEN_PROMPT] + g for ids, g in zip(prompts, og_gen or [])]
    text_runs = (rt.get("text") or []) + ((og_text or {}).get("runs") or [])
    seqs += text_path.reference_sequences(tokenizer, text_runs) if text_runs else []
    ref = reference_logits(model, seqs, progress=progress)
    k, n_og = len(prompts), len(og_gen or [])
    ref_prompts, ref_gen, ref_ppl = ref[:k], ref[k:2 * k], ref[2 * k]
    ref_og, ref_text = ref[2 * k + 1: 2 * k + 1 + n_og], ref[2 * k + 1 + n_og:]
    report = _token_checks(ref_prompts, ref_gen, ref_ppl, rt, prompts, ppl_ids, dtype)
    max_abs = report["max_abs_logit_diff"] if report["max_abs_logit_diff"] is not None else float("inf")
    if og_skip:
        report["genai"] = {"skipped": og_skip}
    if og_gen is not None:
        # GenAI runs the same graph in its own loop; a quantised graph may legitimately pick
        # any token whose PyTorch logit is within twice the artifact's measured logit error
        tol = F32_MAX_ABS if dtype == "f32" else max(F32_MAX_ABS, 2 * (max_abs if math.isfinite(max_abs) else 0.0))
        checks = [_greedy_check(r, len(ids[:GEN_PROMPT]), g, tol) for r, g, ids in zip(ref_og, og_gen, prompts)]
        report["genai"] = _genai_report(og_gen, [c for c, _ in checks], all(ok for _, ok in checks), tol)
        report["passed"] = bool(report["passed"] and report["genai"]["greedy_tokens_match"])
    _text_verdicts(report, rt, og_text, tokenizer, ref_text, dtype, max_abs)
    if not report["all_finite"]:
        report["failure"] = "NaN or Inf in the logits or perplexity"
    return report


def _token_checks(ref_prompts, ref_gen, ref_ppl, rt: dict, prompts: list, ppl_ids: list, dtype: str) -> dict:
    """The token-level verdicts against PyTorch: logits on the prompts, greedy continuation
    (judged by PyTorch's argmax on the runtime's own tokens) and perplexity, held to the dtype's
    tolerance (f32: logits and tokens; a quantised dtype: perplexity)."""
    finite = _finite(*ref_prompts, *ref_gen, ref_ppl, *rt["logits"], rt["ppl"])
    max_abs, agree, total = 0.0, 0, 0
    for r, g in zip(ref_prompts, rt["logits"]):
        max_abs = max(max_abs, float(np.abs(r - g).max()))
        agree += int((r.argmax(-1) == g.argmax(-1)).sum())
        total += r.shape[0]
    checks = [_greedy_check(r, len(ids[:GEN_PROMPT]), g) for r, g, ids in zip(ref_gen, rt["gen"], prompts)]
    gen_ref, greedy_match = [c for c, _ in checks], all(ok for _, ok in checks)
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
        "reference": "streamed layer by layer (edgeprune.measure.reference)",
    }
    if dtype == "f32":
        report["tolerance"] = {"max_abs_logit_diff": F32_MAX_ABS, "greedy_tokens_match": True}
        report["passed"] = bool(finite and max_abs <= F32_MAX_ABS and greedy_match)
    else:
        tol = dtype_facts(dtype).ppl_tolerance
        report["tolerance"] = {"perplexity_relative_delta": tol}
        report["passed"] = bool(finite and delta <= tol)
    return report


def _text_verdicts(report: dict, rt: dict, og_text: dict | None, tokenizer, ref_text, dtype: str, max_abs: float) -> None:
    """The text path's verdicts: the runtime's tokenizer on the fixed strings and its text
    completion of each prompt, for llama.cpp (in `rt`) and ORT GenAI (`og_text`)."""
    if tokenizer is None:
        report["text_path"] = {"skipped": "the checkpoint has no tokenizer; token ids were fed"}
        return
    # a quantised artifact may pick any token whose PyTorch logit is within twice its measured error
    tol = F32_MAX_ABS if dtype == "f32" else max(F32_MAX_ABS, 2 * (max_abs if math.isfinite(max_abs) else 0.0))
    n_gg = len(rt.get("text") or [])
    if "tokenizer" in rt:
        gen = text_path.generation_report(tokenizer, rt["text"], ref_text[:n_gg], _greedy_check, tol)
        report["text_path"] = {"tokenizer": rt["tokenizer"], "generation": gen,
                               "passed": bool(rt["tokenizer"]["passed"] and gen["passed"])}
        report["passed"] = bool(report["passed"] and report["text_path"]["passed"])
    else:
        report["text_path"] = {"runtime": "onnxruntime: ids in, logits out; it has no tokenizer of its own",
                               "see": "genai.text_path" if og_text is not None else "not checked: no GenAI package"}
    if og_text is not None and "genai" in report:
        gen = text_path.generation_report(tokenizer, og_text["runs"], ref_text[n_gg:], _greedy_check, tol)
        tp = {"tokenizer": og_text["tokenizer"], "generation": gen,
              "passed": bool(og_text["tokenizer"]["passed"] and gen["passed"])}
        report["genai"]["text_path"] = tp
        from .vocab import kind_of

        if not tp["passed"] and kind_of(tokenizer) == "sentencepiece":
            # measured on onnxruntime-genai 0.18: its SentencePiece-style BPE splits runs of spaces and
            # strips the first streamed token's space unlike transformers; nothing in the package changes that
            tp["limitation"] = ("onnxruntime-genai's tokenizer does not reproduce transformers' on this "
                                "SentencePiece-style tokenizer (see failures); feed GenAI ids from transformers' "
                                "tokenizer, or use the GGUF in llama.cpp, whose text path passed")
        else:
            report["passed"] = bool(report["passed"] and tp["passed"])


def genai_side(path, prompts: list[list[int]], tokenizer=None):
    """Greedy tokens through onnxruntime-genai's generator when the folder is a GenAI package
    and the runtime is installed, and (with a tokenizer) its own text path; else (None, why
    it was skipped, None) (no GenAI package: (None, None, None))."""
    from .genai import CONFIG, WHY_MIN_VERSION, GenAISession, available

    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    if not (folder / CONFIG).is_file():
        return None, None, None
    if available() is None:
        try:
            import onnxruntime_genai as og
        except ImportError:
            return None, "onnxruntime-genai is not installed (pip install 'edgeprune[genai]')", None
        return None, f"onnxruntime-genai {og.__version__} is too old: {WHY_MIN_VERSION}", None
    sess = GenAISession(folder)
    try:
        gen = [sess.generate(ids[:GEN_PROMPT], GEN_NEW) for ids in prompts]
        text = None
        if tokenizer is not None:
            rt = text_path.GenAIText(sess)
            text = {"tokenizer": text_path.tokenizer_check(tokenizer, rt), "runs": text_path.generation_side(rt)}
        return gen, None, text
    finally:
        del sess


def text_failure(report: dict) -> str | None:
    """One line naming the first text-path failure (string, both id lists, likely cause), or None."""
    for where, tp in text_path.in_report(report):
        if not tp or tp.get("passed", True) or tp.get("limitation"):
            continue
        for f in tp["tokenizer"]["failures"]:
            what = f.get("cause") or f.get("detokenizer")
            return (f"{where}'s tokenizer on {f['text'][:40]!r}: transformers {f['transformers_ids'][:12]} vs runtime "
                    f"{f['runtime_ids'][:12]} ({what})")
        for r in tp["generation"]["runs"]:
            if not r["passed"]:
                return (f"{where}'s text completion of {r['prompt']!r}: transformers {r['transformers_text'][:40]!r} vs "
                        f"runtime {r['runtime_text'][:40]!r} (prompt ids match {r['prompt_ids_match']}, "
                        f"greedy tokens match {r['greedy_tokens_match']})")
    return None


def _genai_report(tokens: list[list[int]], chosen: list[list[int]], ok: bool, tol: float) -> dict:
    import onnxruntime_genai as og

    return {"runtime": f"onnxruntime-genai {og.__version__}", "greedy_tokens_match": ok,
            "greedy_tokens_identical": tokens == chosen,
            "greedy_tokens": {"pytorch": chosen, "genai": tokens,
                              "rule": f"PyTorch's argmax on prompt + GenAI's tokens (ties within {tol:.3g} accepted)"}}


def _config(model_dir):
    from edgeprune.io.checkpoint import load_config

    return load_config(model_dir)

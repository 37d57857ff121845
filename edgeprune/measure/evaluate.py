"""Perplexity over non-overlapping windows, streamed in batches, on CPU or CUDA.

The protocol (sequence length, number of windows, predicted tokens) is returned with the
figure, because window 128 and window 2048 give very different numbers. Each window is
scored on its own: the loss covers its seq_len - 1 next-token predictions.
"""
from __future__ import annotations

import math
import sys
from typing import Callable

import torch
from tqdm.auto import tqdm


def nll_of_logits(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL of `ids` [b, t] under `logits` [b, t, v], in float64."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    tgt = ids[:, 1:].unsqueeze(-1)
    return float(-logp.gather(-1, tgt).sum()), int(tgt.numel())


def perplexity_from(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    windows: torch.Tensor,
    batch_size: int = 1,
    desc: str = "perplexity",
    progress: bool = True,
) -> dict:
    """Perplexity of any logits function (PyTorch, ONNX Runtime, llama.cpp) over windows."""
    total_nll, total_tok, per_batch = 0.0, 0, []
    it = range(0, windows.shape[0], batch_size)
    for s in tqdm(it, desc=desc, disable=not progress, file=sys.stderr, leave=False):
        ids = windows[s : s + batch_size]
        nll, n = nll_of_logits(logits_fn(ids), ids)
        total_nll += nll
        total_tok += n
        per_batch.append(nll / n)
    return {
        "perplexity": math.exp(total_nll / total_tok),
        "nll": total_nll / total_tok,
        "window_nll": per_batch,  # mean NLL of each batch (of each window at batch_size 1): for `ppl_intervals`
        "protocol": {"seq_len": int(windows.shape[1]), "windows": int(windows.shape[0]), "tokens": total_tok},
    }


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 1, device=None, progress: bool = True) -> dict:
    device = torch.device(device) if device else next(model.parameters()).device

    def logits_fn(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids.to(device), use_cache=False).logits.float().cpu()

    return perplexity_from(logits_fn, windows, batch_size, progress=progress)


PPL_BOOTSTRAP = 2000


def ppl_intervals(dense_nll: list[float], pruned_nll: list[float], seed: int = 0, level: float = 0.95) -> dict:
    """95% intervals of dense and pruned perplexity and of their ratio: a seeded percentile
    bootstrap over the evaluation windows, resampled in pairs (both models saw the same
    windows, so a hard window raises both). Windows hold equal token counts, so the
    perplexity of a resample is exp(mean of its windows' mean NLL). With a handful of windows
    the interval says how much the figure depends on which text was scored, nothing more."""
    import numpy as np

    d, p = np.asarray(dense_nll, dtype=float), np.asarray(pruned_nll, dtype=float)
    idx = np.random.default_rng(seed).integers(0, d.size, size=(PPL_BOOTSTRAP, d.size))
    dm, pm = d[idx].mean(axis=1), p[idx].mean(axis=1)
    a = (1 - level) / 2

    def iv(x) -> list[float]:
        return [float(np.exp(np.quantile(x, a))), float(np.exp(np.quantile(x, 1 - a)))]

    return {"dense_interval": iv(dm), "pruned_interval": iv(pm), "ratio_interval": iv(pm - dm), "windows": int(d.size),
            "method": f"{level:.0%} percentile bootstrap over the {d.size} evaluation windows, paired, {PPL_BOOTSTRAP} resamples"}

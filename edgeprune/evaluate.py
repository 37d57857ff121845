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
    total_nll, total_tok = 0.0, 0
    it = range(0, windows.shape[0], batch_size)
    for s in tqdm(it, desc=desc, disable=not progress, file=sys.stderr, leave=False):
        ids = windows[s : s + batch_size]
        nll, n = nll_of_logits(logits_fn(ids), ids)
        total_nll += nll
        total_tok += n
    return {
        "perplexity": math.exp(total_nll / total_tok),
        "nll": total_nll / total_tok,
        "protocol": {"seq_len": int(windows.shape[1]), "windows": int(windows.shape[0]), "tokens": total_tok},
    }


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 1, device=None, progress: bool = True) -> dict:
    device = torch.device(device) if device else next(model.parameters()).device

    def logits_fn(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids.to(device), use_cache=False).logits.float().cpu()

    return perplexity_from(logits_fn, windows, batch_size, progress=progress)

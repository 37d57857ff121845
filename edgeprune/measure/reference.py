"""PyTorch reference logits, computed layer by layer through the streaming driver.

Verification needs PyTorch's logits for a few short sequences. Loading the model whole in
float32 would need 4 bytes per parameter (32 GB at 8B); streaming needs one layer, the
sequences' hidden states, and the output matrix read in row blocks.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibrate.streaming import Activations, LayerSource, open_source, walk

VOCAB_BLOCK = 16384  # rows of lm_head turned into float32 at a time


def final_norm(source: LayerSource) -> nn.Module:
    cls = getattr(source.adapter.modeling_module(), f"{source.adapter.modeling[1]}RMSNorm")
    norm = cls(source.adapter.hidden_size, eps=float(source.config.rms_norm_eps))
    norm.weight.data = source.final_norm_weight().to(source.device, source.dtype)
    return norm.eval().requires_grad_(False)  # inference only: its outputs must never carry a graph


@torch.no_grad()
def _logits(h: torch.Tensor, head: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    out = torch.empty(h.shape[0], head.shape[0], dtype=dtype)
    for s in range(0, head.shape[0], VOCAB_BLOCK):
        out[:, s : s + VOCAB_BLOCK] = h @ head[s : s + VOCAB_BLOCK].to(dtype).T
    return out.numpy()


@torch.no_grad()
def reference_logits(model: str | Path | nn.Module, sequences: list[list[int]], progress: bool = False,
                     dtype: torch.dtype = torch.float32) -> list[np.ndarray]:
    """Logits [t, vocab] of each token sequence (no padding: each runs alone), streamed."""
    source = open_source(model, "cpu", dtype)
    first = Activations([source.embed(torch.tensor([ids], dtype=torch.long)) for ids in sequences])
    source.release_embedding()  # sequences differ in length: embedded one by one, not by `start`
    layers = tqdm(range(source.num_layers), desc="verify: pytorch reference", unit="layer", file=sys.stderr,
                  disable=not progress, leave=False)
    acts = walk(source, first, layers, check_finite=False)  # the logits are judged by the caller
    if acts is not first:
        first.close()
    norm = final_norm(source)
    head = source.lm_head_weight()
    out = [_logits(norm(h)[0], head, dtype) for h in acts]
    acts.close()
    return out

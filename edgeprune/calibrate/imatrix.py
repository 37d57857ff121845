"""Importance matrix for llama.cpp's quantizer, from our own calibration pass.

llama.cpp's k-quants (and Q4_0/Q5_0 fallbacks) weigh each input column's rounding error by
how large that column's activations are: the mean of x_j^2 over calibration tokens, per
weight matrix (what its `llama-imatrix` tool collects). The layer-streaming driver already
collects exactly that statistic for Wanda-sp and FLAP (the diagonal of X^T X), so the
imatrix is one more streamed pass over the model being quantised (one layer in memory),
handed to `llama_model_quantize` through `llama_model_imatrix_data`, with no file between.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import defaults
from ..defaults import IMATRIX_NSAMPLES, IMATRIX_SEQ_LEN

# Which GGUF tensors read the input of which role's linear (q/k/v share one input, gate/up another).
READERS: dict[str, tuple[str, ...]] = {"q": ("attn_q", "attn_k", "attn_v"), "o": ("attn_output",),
                                       "gate": ("ffn_gate", "ffn_up"), "down": ("ffn_down",)}


@torch.no_grad()
def collect(model: str | Path | torch.nn.Module, windows: torch.Tensor, batch_size: int = defaults.BATCH_SIZE,
            progress: bool = False) -> dict[str, np.ndarray]:
    """{GGUF tensor name: mean x_j^2 per input column (float32)} over `windows` [n, seq]."""
    from tqdm import tqdm

    from .streaming import open_source, stream_dense

    source = open_source(model)
    out: dict[str, np.ndarray] = {}
    layers = stream_dense(source, windows, tuple(READERS), batch_size)
    for i, _layer, cols in tqdm(layers, total=source.num_layers, desc="imatrix", unit="layer",
                                disable=not progress, leave=False):
        for role, names in READERS.items():
            c = cols[role]
            v = (c.sq_norm / max(c.count, 1)).float().numpy()
            if not np.isfinite(v).all():
                from ..errors import DataError

                raise DataError(f"NaN or Inf in layer {i}'s activations while collecting the importance matrix")
            for n in names:
                out[f"blk.{i}.{n}.weight"] = v
    return out


def from_calibration(model_dir: str | Path, source: str, n_samples: int = IMATRIX_NSAMPLES,
                     seq_len: int = IMATRIX_SEQ_LEN, seed: int = 0, data_dir=None, progress: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """The importance matrix over `source`'s calibration portion (a named set or a text file),
    and a description of it for the verify report."""
    from .data import calibration_set, tokenizer_for

    windows = calibration_set(tokenizer_for(model_dir), source, n_samples, seq_len, seed, data_dir)
    data = collect(model_dir, windows, progress=progress)
    return data, {"source": str(source), "portion": "calibration", "windows": int(windows.shape[0]),
                  "seq_len": int(windows.shape[1]), "tensors": len(data)}

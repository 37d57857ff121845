"""The latency model's terms and its fit: decode ms/token = fixed + sum over present layers of f(shape).

f(shape) is linear in what one decoded token makes a layer do (measured on llama.cpp and ORT:
on small models the per-kernel dispatch dominates, on wide ones the bytes read):
  - `layer`: 1, the per-layer dispatch constant (every present layer runs the same kernels);
  - `weights`: MB of linear weights read in the wanted type (q, k, v, o, gate, up, down);
  - `fallback`: MB of weights whose rows are not a multiple of the type's block and so are
    stored in the fallback type (`edgeprune/dtypes.py`): they cost what they measure, not
    what the wanted type would (only for types with a block);
  - `kv`: MB of KV cache read per token at the target's context;
  - `heads`: query heads x context / 1000, the attention-score work that grows with heads
    but not with KV bytes (GQA shares one KV group among several query heads).
The fit is non-negative least squares weighted by 1/measured (relative error is what the
budget cares about), so no term can buy time by going negative. Torch-free.
"""
from __future__ import annotations

import numpy as np

TERMS = ("layer", "weights", "fallback", "kv", "heads")


def layer_features(widths: dict, fmt: str, dtype: str, context: int, heads: int, kv_heads: int,
                   ffn: int) -> dict[str, float]:
    """The terms of one present layer of this shape (see the module docstring) in format
    `fmt`'s runtime, whose KV-cache element bytes are the format's declaration."""
    from exporters.formats import get

    from .dtype_fit import tensor_bytes

    d, hd = int(widths["hidden_size"]), int(widths["head_dim"])
    q, kv = heads * hd, kv_heads * hd
    native = fallen = 0.0
    for rows, row in ((q, d), (kv, d), (kv, d), (d, q), (ffn, d), (ffn, d), (d, ffn)):
        b, fb = tensor_bytes(dtype, rows, row)
        if fb:
            fallen += b
        else:
            native += b
    return {"layer": 1.0, "weights": native / 1e6, "fallback": fallen / 1e6,
            "kv": 2 * kv * context * get(fmt).kv_bytes(dtype) / 1e6, "heads": heads * context / 1e3}


def design_row(layer_feats: list[dict[str, float]], terms: tuple[str, ...]) -> np.ndarray:
    """[1 (the fixed part), sum of each term over the present layers]."""
    return np.array([1.0] + [sum(f[t] for f in layer_feats) for t in terms])


def active_terms(rows: list[list[dict[str, float]]]) -> tuple[str, ...]:
    """Terms that vary across the timed configurations (a term always 0 cannot be fitted)."""
    return tuple(t for t in TERMS if any(f[t] for fs in rows for f in fs))


def fit(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the relative squared error of X @ c against y."""
    from scipy.optimize import nnls

    w = 1.0 / np.maximum(y, 1e-9)
    scale = np.maximum(np.abs(X).max(axis=0), 1e-12)  # columns of comparable size for nnls
    c, _ = nnls((X / scale) * w[:, None], y * w)
    return c / scale


def relative_errors(X: np.ndarray, y: np.ndarray, coef: np.ndarray) -> np.ndarray:
    return np.abs(X @ coef - y) / np.maximum(y, 1e-9)

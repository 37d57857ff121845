"""Whether a target's dtype fits a pruned model, decided from widths before anything is exported.

A quantised GGUF type needs rows (a linear weight's input width) that are a multiple of its
block; a row that is not falls back to a wider type (llama.cpp does it silently for the
k-quants: a q4_k_m model of hidden size 64 is mostly Q5_0 and F16). Pruning can make it
worse: the dense model's widths fit, the pruned ones do not, and the pruned file ends up
bigger than the dense one, slower in every runtime. So before exporting, for each target
format, the build predicts from the dense and pruned widths and the dtype table's block,
bytes and fallback facts how many weights would fall back and what both sides' linear weights
would weigh, and takes the first dtype of the target's list (`dtype`, then its `fallback`
list) that fits. Torch-free.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

from ..errors import EdgePruneError

class DTypeError(EdgePruneError):
    pass


MOST = 0.5  # more than this fraction of the linear weights falling back: the dtype does not fit


@dataclass
class Fit:
    """One dtype's prediction for a dense/pruned pair."""

    dtype: str
    tensors: int  # linear weights of the pruned model (lm_head included)
    fallbacks: int  # of them, rows that are not a multiple of the block
    bytes_dense: int  # predicted linear-weight bytes read per decoded token
    bytes_pruned: int
    reasons: list[str] = field(default_factory=list)  # why it does not fit; empty: it fits

    @property
    def ideal(self) -> float:
        return self.bytes_dense / max(self.bytes_pruned, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "ideal_speedup": self.ideal}


def linear_shapes(ad) -> list[tuple[int, int]]:
    """(output rows, row length) of every linear weight a decoded token reads, lm_head included."""
    d, hd, out = ad.hidden_size, ad.head_dim, []
    for s in ad.layer_shapes():
        q, kv, f = s.num_heads * hd, s.num_kv_heads * hd, s.intermediate_size
        out += [(q, d), (kv, d), (kv, d), (d, q), (f, d), (f, d), (d, f)]
    return out + [(ad.vocab_size, d)]


def tensor_bytes(dtype: str, rows: int, row: int) -> tuple[float, bool]:
    """(bytes, fell back) of one weight in `dtype`, following the table's fallback chain."""
    from edgeprune.dtypes import get

    for name in (dtype, *get(dtype).fallback, "f16"):
        if row % get(name).block == 0:
            return rows * row * get(name).bytes_per_weight, name != dtype
    raise AssertionError("f16 has no block")  # unreachable: f16's block is 1


def assess(dtype: str, dense, pruned, rules: tuple[str, ...] = ("fallback", "size")) -> Fit:
    """The prediction for `dtype` on the dense and pruned adapters, with the rules it breaks:
    `fallback` (most weights would fall back) and `size` (the pruned weights would not be
    smaller than the dense ones, so the ideal speedup would not exceed 1)."""
    cost_d = [tensor_bytes(dtype, *t) for t in linear_shapes(dense)]
    cost_p = [tensor_bytes(dtype, *t) for t in linear_shapes(pruned)]
    fit = Fit(dtype, len(cost_p), sum(fb for _, fb in cost_p), int(sum(b for b, _ in cost_d)), int(sum(b for b, _ in cost_p)))
    if "fallback" in rules and fit.fallbacks > MOST * fit.tensors:
        fit.reasons.append(f"{fit.fallbacks} of {fit.tensors} linear weights would fall back to a wider type "
                           f"(rows not a multiple of {dtype}'s block)")
    if "size" in rules and fit.bytes_pruned >= fit.bytes_dense:
        fit.reasons.append(f"the pruned weights would not be smaller ({fit.bytes_pruned:,} B against {fit.bytes_dense:,} B "
                           f"dense: ideal speedup {fit.ideal:.2f}x)")
    return fit


def candidates(fmt: dict) -> list[str]:
    """A target format's dtypes in order: its `dtype`, then its `fallback` list."""
    return [fmt["dtype"], *fmt.get("fallback", [])]


def choose(fmt: dict, dense, pruned, rules: tuple[str, ...] = ("fallback", "size")) -> tuple[str | None, list[Fit]]:
    """The first of the format's dtypes that fits (None if none does) and every prediction made."""
    tried = []
    for dtype in candidates(fmt):
        tried.append(assess(dtype, dense, pruned, rules))
        if not tried[-1].reasons:
            return dtype, tried
    return None, tried


def refusal(fmt: dict, tried: list[Fit], align: int) -> str:
    """The one-line reason and fix when no dtype of a target format fits."""
    from edgeprune.dtypes import get

    why = "; ".join(f"{f.dtype}: {', '.join(f.reasons)}" for f in tried)
    block = get(fmt["dtype"]).block
    fix = (f"add a wider dtype to this format's fallback list in the target (e.g. fallback = [\"q8_0\", \"f16\"])"
           + (f", or use --align {block}" if block > 1 and align % block else ""))
    return f"{fmt['format']} {fmt['dtype']} does not fit this model ({why}); {fix}"


def decide(formats: list[dict], dense, pruned, align: int, log: Callable[[str], None],
           rules: tuple[str, ...] = ("fallback", "size")) -> dict[str, dict]:
    """Each target format's chosen dtype with its reasons and predictions (what the build
    records), saying so through `log` when the target's own dtype does not fit."""
    chosen = {}
    for f in formats:
        dtype, tried = choose(f, dense, pruned, rules)
        if dtype is None:
            raise DTypeError(refusal(f, tried, align))
        why = "; ".join(f"{t.dtype}: {', '.join(t.reasons)}" for t in tried if t.reasons)
        if dtype != f["dtype"]:
            log(f"WARNING: {f['format']} {f['dtype']} does not fit the {'pruned ' if 'size' in rules else ''}model's "
                f"widths ({why}); using {dtype}, the next of the target's list")
        chosen[f"{f['format']}-{f['dtype']}"] = {"requested": f["dtype"], "chosen": dtype, "why": why or None,
                                                 "predicted": [t.to_dict() for t in tried]}
    return chosen

"""What every method shares: the request, the ratio bookkeeping, layer importance.

The ratio is defined once: the fraction of NON-EMBEDDING parameters removed (everything
except the token embedding and lm_head; norms and biases count).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, MutableMapping

import torch
from tqdm.auto import tqdm

from .. import defaults, dist
from ..errors import PlanError
from ..models import DecoderAdapter, LayerShape, expected_nonembedding
from ..plan import LayerPlan, Plan
from .options import resolve

if TYPE_CHECKING:
    from ..measure.budget import Budget
    from ..io.resume import ResumeState
from ..calibrate.streaming import Activations, LayerSource, walk


@dataclass
class PruneRequest:
    """What every method shares; a method's own options (declared with it in the registry,
    `methods/registry.py`) are in `options`, every declared one at its default unless given,
    and read as attributes (`req.damp`). They may be given as keywords, as the Python API
    always has: `PruneRequest(ratio=0.2, search_evals=8)`."""

    ratio: float | None = None
    budget: "Budget | None" = None  # a --speedup / --latency-ms budget (edgeprune/measure/budget.py); None: the ratio
    latency: Any = None  # the latency model a speed budget is predicted with (latency_model.LatencyModel)
    layers: int | str | None = None  # number of layers to remove, or "auto"
    align: int = defaults.ALIGN  # round kept FFN widths to a multiple (hardware efficiency)
    protect: tuple[int, ...] | None = None  # layers kept free of pruning; None: the method's own default
    batch_size: int = defaults.BATCH_SIZE
    offload: bool = False  # keep calibration activations on disk
    progress: bool = True
    seed: int = 0
    state: "ResumeState | None" = None  # resumable per-layer state (COMP's plan stage)
    tensors: "MutableMapping[str, torch.Tensor] | None" = None  # re-fitted tensors: a disk-backed mapping at real size
    extra: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:  # only reached for names that are not fields: the method options
        opts = self.__dict__.get("options", {})
        if name in opts:
            return opts[name]
        raise AttributeError(f"PruneRequest has no field or method option {name!r}")

    def tensor_store(self):
        """The mapping a method's plan keeps its re-fitted tensors in (RAM unless given)."""
        return self.tensors if self.tensors is not None else {}

    def protected(self, num_layers: int) -> set[int]:
        """The layers given with --protect (negative counts from the end); empty if none given."""
        return {p % num_layers for p in (self.protect or ()) if -num_layers <= p < num_layers}


_fields_init = PruneRequest.__init__


def _init(self, *args, options: dict[str, Any] | None = None, **kw) -> None:
    """The shared fields as the dataclass takes them; any other keyword is a method option,
    checked against its declaration and filled in with the defaults."""
    from .registry import OPTIONS

    named = {k: kw.pop(k) for k in list(kw) if k in OPTIONS}
    _fields_init(self, *args, **kw)
    self.extra = dict(self.extra)  # the request's own: stages add to it (the resolved budget), never to the caller's dict
    self.options = resolve(OPTIONS, {**(options or {}), **named})


PruneRequest.__init__ = _init  # type: ignore[method-assign]


def bar(it, desc: str, req: PruneRequest, total: int | None = None):
    return tqdm(it, desc=desc, total=total, disable=not req.progress, file=sys.stderr, leave=False)


def dense_params(adapter: DecoderAdapter) -> int:
    return expected_nonembedding(adapter, adapter.layer_shapes())


def achieved_ratio(plan: Plan, adapter: DecoderAdapter) -> float:
    dense = dense_params(adapter)
    return 1.0 - expected_nonembedding(adapter, plan.result_shapes(adapter)) / dense


def layers_for_ratio(adapter: DecoderAdapter, ratio: float) -> int:
    """Nearest whole number of layers (at least one) for a layer-removal method."""
    per_layer = adapter.layer_param_count(adapter.layer_shapes()[0])
    n = max(1, round(param_budget(adapter, ratio) / per_layer))
    return n


def check_layer_count(n: int, num_layers: int, available: int) -> None:
    if n >= num_layers:
        raise PlanError(f"cannot remove {n} of {num_layers} layers; at most {num_layers - 1} (keep at least one)")
    if n > available:
        raise PlanError(f"cannot remove {n} layers: only {available} are not protected; lower --layers or change --protect")


def cosine_importance(x: Activations, y: Activations) -> float:
    """1 - mean cosine(input, output) over all calibration tokens (windows have no padding),
    every rank's tokens included."""
    total, n = 0.0, 0
    for a, b in zip(x, y):
        c = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
        total += float(c.sum())
        n += c.numel()
    total, n = dist.sum_floats(total, n)
    return 1.0 - total / n


@torch.no_grad()
def layer_importances(source: LayerSource, acts: Activations, layers: list[int], req: PruneRequest, desc: str) -> dict[int, float]:
    """Stream `acts` through `layers` (in order) and score each one."""
    imp: dict[int, float] = {}
    out = walk(source, acts, bar(layers, desc, req), seen=lambda i, x, y: imp.__setitem__(i, cosine_importance(x, y)))
    if out is not acts:
        out.close()
    return imp


def remove_layers(
    source: LayerSource, acts: Activations, n: int, candidates: set[int], req: PruneRequest, iterative: bool
) -> tuple[list[int], dict[int, float], list[dict]]:
    """Remove `n` layers of lowest importance; iteratively recomputing after each removal.

    Returns the removed layers, the final importance of every remaining layer and the
    history (importances seen at each round).
    """
    L = source.num_layers
    kept = list(range(L))
    imp = layer_importances(source, acts, kept, req, "layer importance")
    history = [{"removed": None, "importance": dict(imp)}]
    removed: list[int] = []
    for r in range(n):
        pool = [i for i in kept if i in candidates]
        if not pool:
            break
        victim = min(pool, key=lambda i: imp[i])
        removed.append(victim)
        kept.remove(victim)
        del imp[victim]
        after = [i for i in kept if i > victim]
        if iterative and after:
            # Only the layers after the removed one see different inputs: re-score them.
            cur = walk(source, acts, [i for i in kept if i < victim])
            imp.update(layer_importances(source, cur, after, req, f"layer importance (round {r + 2})"))
            if cur is not acts:
                cur.close()
        history.append({"removed": victim, "importance": dict(imp)})
    return removed, imp, history


def pick_units(scores: torch.Tensor, n_remove: int) -> list[int]:
    """Indices of the `n_remove` lowest scores (stable)."""
    return torch.argsort(scores, stable=True)[:n_remove].tolist()


def group_layer_plan(shape: LayerShape, kv_keep: list[int], ffn_keep: list[int], stats: dict) -> LayerPlan:
    """A layer plan that keeps whole KV groups (each with all its query heads): GQA-valid."""
    n_rep = shape.num_heads // shape.num_kv_heads
    heads = [h for g in kv_keep for h in range(g * n_rep, (g + 1) * n_rep)]
    return LayerPlan(ffn_keep=list(ffn_keep), kv_keep=list(kv_keep), heads_keep=heads, stats=stats)


def scored_layer_plan(shape: LayerShape, group_scores: torch.Tensor, channel_scores: torch.Tensor,
                      n_groups: int, n_channels: int, stats: dict) -> LayerPlan:
    """Drop the lowest-scoring KV groups and FFN channels (the uniform-ratio baselines)."""
    drop_g, drop_c = set(pick_units(group_scores, n_groups)), set(pick_units(channel_scores, n_channels))
    return group_layer_plan(shape, [j for j in range(shape.num_kv_heads) if j not in drop_g],
                            [j for j in range(shape.intermediate_size) if j not in drop_c], stats)


# How far (as a fraction of the non-embedding parameters) any method's plan may land from the
# requested ratio before the prune says so: the one tolerance, for every method.
RATIO_TOLERANCE = 0.01


def param_budget(adapter: DecoderAdapter, ratio: float) -> float:
    """The parameters a ratio asks to remove: `ratio` of the dense non-embedding count."""
    return ratio * dense_params(adapter)


def units_of_groups(shape: LayerShape, head_dim: int, device=None) -> torch.Tensor:
    """Column indices of o_proj per KV group: [groups, n_rep * head_dim]."""
    n_rep = shape.num_heads // shape.num_kv_heads
    w = n_rep * head_dim
    return torch.arange(shape.num_kv_heads * w, device=device).view(shape.num_kv_heads, w)

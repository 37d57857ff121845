"""The search's portfolio: every registered method's allocation as a seed, on the ladders.

A method's *allocation* is how much of each layer it removes: the whole layer, or a number
of KV groups and FFN channels. Which units it picks and how it re-fits them differ from the
ladders' OBS moves, but the allocation is a point of the search's space: mapped onto each
layer's nearest rungs (by parameters removed) and repaired to the budget, it is scored by the
same fitness as the search's own seeds, so the default can only lose to another method's
allocation through the fitness's own error.

Each method declares the rule it gives (`Method.seed` in the registry); the rules read only
what the ladder pass already measured, never a method's own solver:
  - `uniform` (Wanda-sp, Taylor, magnitude): every layer at the ratio, split as they split it;
  - `log-ipr` (SlimGPT): the Incremental Pruning Ratio's log schedule;
  - `layers` (ShortGPT): whole layers of least block influence 1 - cos(in, out), read on the
    dense model's inputs in the ladder pass (ShortGPT's own reading);
  - `comp`, `comp-slimgpt`: COMP's removed layers (its --layers auto count, its protected set
    scaled to depth), then Eq. 10 or the log schedule over the layers kept. COMP re-scores the
    layers behind each removed one (a pass per removal); the seed reads the dense pass's
    scores, which is the same choice whenever one layer goes (every ratio <= 0.3 below
    8 layers). COMP's split of a layer between KV groups and channels comes from its τ
    trajectories (its solver); the seed splits as SlimGPT does;
  - `flap`: FLAP's global ranking of standardised fluctuation scores, computed in the ladder
    pass from the same Grams (their diagonals and means: `layer_stats`).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import PlanError
from ..models import LayerShape
from .allocate import DROP, Alloc, Choice, Ladders
from .base import PruneRequest, dense_params, layers_for_ratio
from .widths import uniform_split

# Per layer: None (the layer goes) or (KV groups removed, FFN channels removed).
Counts = dict[int, "tuple[int, int] | None"]


def layer_stats(ad, layer, cols: dict) -> dict:
    """What the rules need from one layer beyond its rungs, from the ladder pass's Grams:
    FLAP's standardised group scores and raw channel scores (vectors, kept in the record)."""
    from .flap import fluctuation_scores, standardise

    s = ad.shape_of(layer)
    co, cd = cols["o"], cols["down"]
    so = fluctuation_scores(ad.module(layer, "o").weight.detach().cpu(), co.sq_norm.cpu(), co.mean.cpu(), co.count)
    sd = fluctuation_scores(ad.module(layer, "down").weight.detach().cpu(), cd.sq_norm.cpu(), cd.mean.cpu(), cd.count)
    groups = standardise(so.pow(2)).view(s.num_kv_heads, -1).mean(1)  # as plan_flap scores a group
    return {"flap_groups": groups.tolist(), "flap_channels": sd.tolist()}


def on_rungs(lad: Ladders, i: int, attn_removed: float, ffn_removed: float) -> Choice:
    """One layer's cut put on its ladders: the aligned attention rung and the FFN rung
    nearest (in parameters removed) to the method's; the shallower one on a tie."""
    if i in lad.fixed:
        return (0, 0)
    a = min(lad.attn_levels(i), key=lambda a: (abs(lad.attn(i)[a]["removed"] - attn_removed), a))
    f = min(range(len(lad.ffn(i))), key=lambda f: (abs(lad.ffn(i)[f]["removed"] - ffn_removed), f))
    return (a, f)


class _Context:
    """What every rule reads: the model's shapes and parameter counts, the budget, the request."""

    def __init__(self, ad, shapes: list[LayerShape], lad: Ladders, req: PruneRequest, budget: float):
        self.ad, self.shapes, self.lad, self.req, self.budget = ad, shapes, lad, req, budget
        self.L = len(shapes)
        self.params = {i: ad.layer_param_count(s) for i, s in enumerate(shapes)}
        self.free = [i for i in range(self.L) if i not in lad.fixed]
        self.importance = {i: float(r["importance"]) for i, r in enumerate(lad.records)}

    def split(self, ratios: dict[int, float]) -> Counts:
        """Per-layer ratios split between KV groups and channels as SlimGPT and Wanda-sp do."""
        return {i: uniform_split(self.ad, self.shapes[i], r * self.params[i], self.req.align) for i, r in ratios.items()}

    def weakest(self, n: int, pool: list[int]) -> list[int]:
        """The `n` layers of least block influence in `pool` (dense inputs)."""
        if n > len(pool) or n >= self.L:
            raise PlanError(f"cannot remove {n} layers")
        return sorted(pool, key=lambda i: (self.importance[i], i))[:n]


def _uniform(c: _Context) -> Counts:
    r = c.budget / sum(c.params[i] for i in c.free)
    return c.split({i: r for i in c.free})


def _log_ipr(c: _Context) -> Counts:
    from .slimgpt import ipr_ratios

    return c.split(ipr_ratios(len(c.free), {i: c.params[i] for i in c.free}, c.budget, "log", c.req.max_layer_ratio))


def _layers(c: _Context) -> Counts:
    n = layers_for_ratio(c.ad, c.budget / dense_params(c.ad))
    return {i: None for i in c.weakest(n, c.free)}


def _comp_layers(c: _Context) -> tuple[list[int], list[int], float]:
    """COMP's removed layers, the layers it neuron-prunes, and what budget they keep."""
    from .comp import _auto_layers, scaled_protect

    protected = (c.req.protected(c.L) if c.req.protect is not None else scaled_protect(c.L)) | set(c.lad.fixed)
    removed = c.weakest(_auto_layers(c.L, c.budget / dense_params(c.ad)), [i for i in range(c.L) if i not in protected])
    rest = c.budget - sum(c.params[i] for i in removed)
    if rest < -0.01 * dense_params(c.ad):
        raise PlanError("its removed layers exceed the budget")
    return removed, [i for i in range(c.L) if i not in removed and i not in protected], max(rest, 0.0)


def _comp(c: _Context) -> Counts:
    from .comp import layer_ratios

    removed, kept, rest = _comp_layers(c)
    ratios = layer_ratios({i: c.importance[i] for i in kept}, {i: c.params[i] for i in kept}, rest, c.req.max_layer_ratio)
    return {**{i: None for i in removed}, **c.split(ratios)}


def _comp_slimgpt(c: _Context) -> Counts:
    from .slimgpt import ipr_ratios

    removed, _, rest = _comp_layers(c)
    kept = [i for i in c.free if i not in removed]
    ratios = ipr_ratios(len(kept), {i: c.params[i] for i in kept}, rest, "log", c.req.max_layer_ratio)
    return {**{i: None for i in removed}, **c.split(ratios)}


def _flap(c: _Context) -> Counts:
    from .flap import rank_globally

    scores = {}
    for i in c.free:
        st = c.lad.records[i].get("seed_stats")
        if st is None:
            raise PlanError("the ladder records hold no FLAP scores")
        scores[i] = (torch.tensor(st["flap_groups"]), torch.tensor(st["flap_channels"]))
    drop_g, drop_c = rank_globally(c.ad, scores, c.req, c.budget / dense_params(c.ad))
    return {i: (len(drop_g[i]), len(drop_c[i])) for i in scores}


RULES: dict[str, Callable[[_Context], Counts]] = {
    "uniform": _uniform, "log-ipr": _log_ipr, "layers": _layers, "comp": _comp, "comp-slimgpt": _comp_slimgpt, "flap": _flap,
}


def to_alloc(c: _Context, counts: Counts) -> Alloc:
    """A rule's counts on the ladders (layers it does not name stay dense)."""
    out: list[Choice] = []
    for i, s in enumerate(c.shapes):
        got = counts.get(i, (0, 0))
        if got is None:
            out.append(DROP if i not in c.lad.fixed else (0, 0))
            continue
        g, ch = got
        per_group = c.ad.head_group_param_count(s.num_heads // s.num_kv_heads)
        out.append(on_rungs(c.lad, i, g * per_group, ch * c.ad.ffn_channel_param_count()))
    if all(x == DROP for x in out):
        raise PlanError("it removes every layer")
    return tuple(out)


def method_counts(ad, shapes: list[LayerShape], lad: Ladders, req: PruneRequest, budget: float
                  ) -> tuple[dict[str, Counts], dict[str, str]]:
    """Every registered method's allocation by its declared rule (`Method.seed`), and, for
    those that cannot give one here, why not."""
    from . import REGISTRY

    c = _Context(ad, shapes, lad, req, budget)
    counts: dict[str, Counts] = {}
    skipped: dict[str, str] = {}
    for m in REGISTRY.values():
        if m.seed is None:
            continue
        try:
            counts[m.name] = RULES[m.seed](c)
        except PlanError as e:
            skipped[m.name] = str(e).split(";")[0]
    return counts, skipped


def portfolio_seeds(ad, shapes: list[LayerShape], lad: Ladders, req: PruneRequest, budget: float
                    ) -> tuple[dict[str, Alloc], dict[str, str]]:
    """Every registered method's allocation on the ladders (unrepaired: `evolve` repairs every
    seed the same way), and why any method could not give one."""
    c = _Context(ad, shapes, lad, req, budget)
    counts, skipped = method_counts(ad, shapes, lad, req, budget)
    seeds: dict[str, Alloc] = {}
    for name, got in counts.items():
        try:
            seeds[name] = to_alloc(c, got)
        except PlanError as e:
            skipped[name] = str(e).split(";")[0]
    return seeds, skipped

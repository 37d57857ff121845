"""How much each layer and module keeps: allocations over the candidate ladders.

An allocation gives every layer one choice: (attention rung, FFN rung), or DROP (the whole
layer goes). What a choice buys is its *saving*: the parameters it removes (a --ratio budget),
or, with a cost table (`latency_costs`), the decode milliseconds per token the latency model
predicts it saves (a --speedup / --latency-ms budget: a dropped layer saves its whole time, a
width that makes the runtime fall back to a slower kernel saves what the model says, maybe
nothing). Every function below works on that one saving; its proxy is the sum of the rungs'
normalised errors. Three ways to make one, all under the same exact budget:
  - `knapsack`: the least total proxy error removing at least the budget (a multiple-choice
    knapsack, solved exactly by dynamic programming over ~1000 budget steps);
  - `from_ratios`: per-layer ratios of a fixed rule (SlimGPT's log schedule, uniform) put on
    the ladders, so those rules are points of the search space and compete with the rest;
  - `search.mutate` (beside the evolution that uses it): the level switch of DarwinLM/Týr's
    evolutionary search (one module cut a rung deeper, another a rung less, now and then a
    layer dropped or restored), then `repair`, built on `moves` here.
Nothing here reads tensors or calls torch: it works on the ladders' small records.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import PlanError

DROP = (-1, -1)
Choice = tuple[int, int]
Alloc = tuple[Choice, ...]


@dataclass
class Ladders:
    """Rung records of every layer (dicts as `ladder.ladder_record` writes them)."""

    records: list[dict]
    fixed: frozenset[int] = frozenset()  # protected layers: always (0, 0)
    costs: list[dict[Choice, float]] | None = None  # per layer, each choice's saving; None: parameters removed
    flag: str = "--ratio"  # the budget's option, for the refusal's fix
    grain: float = 1.0  # the smallest saving worth a step of the knapsack's grid (one parameter)

    def attn(self, i: int) -> list[dict]:
        return self.records[i]["attn"]

    def ffn(self, i: int) -> list[dict]:
        return self.records[i]["ffn"]

    def removed(self, i: int, c: Choice) -> int:
        if c == DROP:
            return self.records[i]["drop"]["removed"]
        return self.attn(i)[c[0]]["removed"] + self.ffn(i)[c[1]]["removed"]

    def saved(self, i: int, c: Choice) -> float:
        """What choice `c` of layer `i` buys against the budget (parameters, or predicted ms)."""
        return self.removed(i, c) if self.costs is None else self.costs[i][c]

    def error(self, i: int, c: Choice) -> float:
        if c == DROP:
            return self.records[i]["drop"]["error"]
        return self.attn(i)[c[0]]["error"] + self.ffn(i)[c[1]]["error"]

    def total(self, alloc: Alloc) -> float:
        return sum(self.saved(i, c) for i, c in enumerate(alloc))

    def proxy(self, alloc: Alloc) -> float:
        return sum(self.error(i, c) for i, c in enumerate(alloc))

    def attn_levels(self, i: int) -> list[int]:
        """Attention rungs the search may pick (aligned widths only)."""
        return [a for a, r in enumerate(self.attn(i)) if r["aligned"]]

    def choices(self, i: int) -> list[Choice]:
        if i in self.fixed:
            return [(0, 0)]
        return [(a, f) for a in self.attn_levels(i) for f in range(len(self.ffn(i)))] + [DROP]

    def slack(self) -> int:
        """The largest single FFN rung step: how far above the budget an allocation may land."""
        return max((self.saved(i, (0, f + 1)) - self.saved(i, (0, f)) for i in range(len(self.records))
                    for f in range(len(self.ffn(i)) - 1)), default=0)

    def refusal(self) -> str:
        return f"the candidate ladders cannot remove that much at this --align; lower {self.flag} or --align"


def latency_costs(records: list[dict], layer_ms, saving=None) -> list[dict[Choice, float]]:
    """Each (layer, choice)'s predicted decode ms/token saved: the layer's dense time less its
    time at the rung's widths (`layer_ms(heads, kv_heads, ffn)`, the latency model's); DROP
    saves the whole layer. With `saving(dense, shape)` (a `latency_binding.Binding`: what a
    choice is sure to save in every artifact runtime; shape None is DROP) that is used instead."""
    if saving is None:
        saving = lambda d, s: layer_ms(*d) - (layer_ms(*s) if s is not None else 0.0)  # noqa: E731
    out = []
    for r in records:
        a0, f0 = r["attn"][0], r["ffn"][0]
        dense = (len(a0["keep"]), len(a0["kv_keep"]), len(f0["keep"]))
        row: dict[Choice, float] = {DROP: saving(dense, None)}
        for a, ar in enumerate(r["attn"]):
            for f, fr in enumerate(r["ffn"]):
                row[(a, f)] = saving(dense, (len(ar["keep"]), len(ar["kv_keep"]), len(fr["keep"])))
        out.append(row)
    return out


def knapsack(lad: Ladders, budget: float, steps: int = 1000) -> Alloc:
    """Least total proxy error with at least `budget` saved (exact DP on a grid of `steps`;
    each choice's saving is rounded down, so the real total is ≥ budget; a choice that saves
    nothing or less counts as zero, and `repair` measures the true total)."""
    q = max(lad.grain, budget / steps)
    B = math.ceil(budget / q)
    best = np.full(B + 1, np.inf)
    best[0] = 0.0
    backs: list[tuple[list[Choice], np.ndarray, np.ndarray]] = []
    for i in range(len(lad.records)):
        opts = lad.choices(i)
        new, pick, origin = np.full(B + 1, np.inf), np.full(B + 1, -1), np.full(B + 1, -1)
        for k, c in enumerate(opts):
            s, cand = min(B, max(0, int(lad.saved(i, c) // q))), best + lad.error(i, c)
            moved = np.full(B + 1, np.inf)
            src = np.full(B + 1, -1)
            moved[s:] = cand[: B + 1 - s]
            src[s:] = np.arange(B + 1 - s)
            if s > 0:  # everything that overshoots lands on B
                j = int(np.argmin(cand[B + 1 - s:])) + B + 1 - s
                if cand[j] < moved[B]:
                    moved[B], src[B] = cand[j], j
            better = moved < new
            new[better], pick[better], origin[better] = moved[better], k, src[better]
        backs.append((opts, pick, origin))
        best = new
    if not np.isfinite(best[B]):
        raise PlanError(lad.refusal())
    alloc, b = [], B
    for opts, pick, origin in reversed(backs):
        alloc.append(opts[pick[b]])
        b = origin[b]
    return tuple(reversed(alloc))


def from_ratios(lad: Ladders, ratios: dict[int, float], params: dict[int, int]) -> Alloc:
    """Each layer's ratio put on its ladders: attention at the layer's ratio (nearest aligned
    rung, as SlimGPT's split), the FFN rung nearest to the rest."""
    alloc: list[Choice] = []
    for i in range(len(lad.records)):
        r = 0.0 if i in lad.fixed else ratios.get(i, 0.0)
        a = min(lad.attn_levels(i), key=lambda a: abs(lad.attn(i)[a]["removed"] - r * lad.records[i]["attn_params"]))
        rest = r * params[i] - lad.attn(i)[a]["removed"]
        f = min(range(len(lad.ffn(i))), key=lambda f: abs(lad.ffn(i)[f]["removed"] - rest))
        alloc.append((a, f))
    return tuple(alloc)


def moves(lad: Ladders, alloc: Alloc, deeper: bool) -> list[tuple[int, Choice, int, float]]:
    """Every one-rung change: (layer, new choice, Δ removed, Δ proxy)."""
    out = []
    for i, c in enumerate(alloc):
        if c == DROP or i in lad.fixed:
            continue
        levels = lad.attn_levels(i)
        ai = levels.index(c[0]) if c[0] in levels else 0
        cand = []
        if deeper:
            cand += [(levels[ai + 1], c[1])] if ai + 1 < len(levels) else []
            cand += [(c[0], c[1] + 1)] if c[1] + 1 < len(lad.ffn(i)) else []
        else:
            cand += [(levels[ai - 1], c[1])] if ai > 0 else []
            cand += [(c[0], c[1] - 1)] if c[1] > 0 else []
        for n in cand:
            out.append((i, n, lad.saved(i, n) - lad.saved(i, c), lad.error(i, n) - lad.error(i, c)))
    return out


def repair(lad: Ladders, alloc: Alloc, budget: float, tol: float | None = None) -> Alloc:
    """Bring an allocation to the budget: cut deeper where the proxy rises least per
    parameter until the budget is met (dropping a layer when no rung is left), then give
    back rungs (most proxy per parameter first) while it stays met, landing within one
    FFN rung step above the budget. With `tol` (parameters), an allocation still more than
    `tol` above the budget is then moved as close to it as its aligned rungs allow (`land`)."""
    cur = list(alloc)
    while lad.total(tuple(cur)) < budget:
        opts = [m for m in moves(lad, tuple(cur), True) if m[2] > 0] or _drops(lad, tuple(cur))
        if not opts:
            raise PlanError(lad.refusal())
        i, n, _, _ = min(opts, key=lambda m: (m[3] / m[2], m[0]))
        cur[i] = n
    while True:
        over = lad.total(tuple(cur)) - budget
        opts = [m for m in moves(lad, tuple(cur), False) if m[2] < 0 and -m[2] <= over]
        if not opts:
            break
        i, n, _, _ = max(opts, key=lambda m: (-m[3] / -m[2], -m[0]))
        cur[i] = n
    return tuple(cur) if tol is None else land(lad, tuple(cur), budget, tol)


def _drops(lad: Ladders, alloc: Alloc) -> list[tuple[int, Choice, int, float]]:
    """Dropping one more layer (at least one stays): the deeper move left when no rung is."""
    kept = [i for i, c in enumerate(alloc) if c != DROP]
    if len(kept) < 2:
        return []
    return [(i, DROP, lad.saved(i, DROP) - lad.saved(i, alloc[i]), lad.error(i, DROP) - lad.error(i, alloc[i]))
            for i in kept if i not in lad.fixed and lad.saved(i, DROP) > lad.saved(i, alloc[i])]


def _restores(lad: Ladders, alloc: Alloc) -> list[tuple[int, Choice, int, float]]:
    """A dropped layer brought back at its deepest aligned rungs (the smallest give-back)."""
    out = []
    for i, c in enumerate(alloc):
        if c == DROP:
            n = (lad.attn_levels(i)[-1], len(lad.ffn(i)) - 1)
            out.append((i, n, lad.saved(i, n) - lad.saved(i, DROP), lad.error(i, n) - lad.error(i, DROP)))
    return out


def land(lad: Ladders, alloc: Alloc, budget: float, tol: float) -> Alloc:
    """Move an allocation that overshoots the budget by more than `tol` parameters as close
    to it as the aligned rungs allow: each step takes the single rung move, or pair of moves
    in two layers (one deeper, one shallower: their difference is finer than either), that
    lands within `tol` (at or above the budget first, then below, least proxy error), else
    the one that gets nearest. With coarse aligned widths (small models, large --align) one
    FFN step can exceed the tolerance; the budget is measured in parameters, so a cut of
    attention heads elsewhere can make up the difference."""
    cur = tuple(alloc)
    while abs(lad.total(cur) - budget) > tol:
        off = lad.total(cur) - budget
        singles = moves(lad, cur, True) + moves(lad, cur, False) + _restores(lad, cur)
        cands = [((m,), m[2], m[3]) for m in singles]
        cands += [((a, b), a[2] + b[2], a[3] + b[3]) for a in singles for b in singles if a[0] < b[0]]

        def rank(c):
            after = off + c[1]
            band = 0 if 0 <= after <= tol else 1 if -tol <= after < 0 else 2
            return (band, c[2] if band < 2 else abs(after), c[2])

        best = min(cands, key=rank, default=None)
        if best is None or abs(off + best[1]) >= abs(off):
            return _nearest(lad, cur, budget, tol)
        nxt = list(cur)
        for i, n, _, _ in best[0]:
            nxt[i] = n
        cur = tuple(nxt)
    return cur


def _nearest(lad: Ladders, alloc: Alloc, budget: float, tol: float) -> Alloc:
    """The allocation whose total is nearest the budget (least proxy error among equals), by
    dynamic programming over totals on a grid of tol / (4 x layers) parameters, up to one
    largest choice above the budget: where moving a rung or two cannot land, a combination of
    several may. Returns `alloc` if nothing is nearer."""
    L = len(lad.records)
    q = max(lad.grain, tol / (4 * L))
    top = max(lad.saved(i, c) for i in range(L) for c in lad.choices(i))
    B = int((budget + top) // q) + 1
    best = np.full(B + 1, np.inf)
    best[0] = 0.0
    backs = []
    for i in range(L):
        opts = lad.choices(i)
        new, pick, origin = np.full(B + 1, np.inf), np.full(B + 1, -1), np.full(B + 1, -1)
        for k, c in enumerate(opts):
            s = int(round(lad.saved(i, c) / q))
            if s > B or s < 0:
                continue
            moved = np.full(B + 1, np.inf)
            moved[s:] = best[: B + 1 - s] + lad.error(i, c)
            better = moved < new
            new[better], pick[better] = moved[better], k
            origin[better] = (np.arange(B + 1) - s)[better]
        backs.append((opts, pick, origin))
        best = new
    ok = np.flatnonzero(np.isfinite(best))
    if ok.size == 0:
        return alloc
    b = int(min(ok, key=lambda j: (abs(j * q - budget), best[j])))
    out = []
    for opts, pick, origin in reversed(backs):
        out.append(opts[pick[b]])
        b = origin[b]
    got = tuple(reversed(out))
    if sum(c != DROP for c in got) == 0 or abs(lad.total(got) - budget) >= abs(lad.total(alloc) - budget):
        return alloc
    return got

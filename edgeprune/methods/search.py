"""search: global allocation of how much each layer and module keeps (Týr / DarwinLM style).

1. Ladders (layer-streamed, dense inputs, on the fitting windows): every layer's attention
   pruned along OBS moves (query heads per KV group, whole KV groups), its FFN at every
   1/16 of the width, and the whole layer dropped; each rung's error measured, its
   compensated weights on disk (`ladder`).
2. Seeds: the exact knapsack on the measured errors, SlimGPT's log schedule, COMP's Eq. 10
   (ratios in inverse proportion to 1 - cos(in, out)) and a uniform split, each put on the
   ladders under the exact parameter budget (`allocate`); and the portfolio: every registered
   method's allocation (`Method.seed`) mapped onto the nearest rungs (`seeds`).
3. Evolution: (1 + λ) level-switch search from the best seed, coarse to fine (several
   switches per child at first, one at the end), the fitness KL(dense ‖ candidate) on
   held-back calibration windows (`fitness`). Bounded: --search-evals candidates in all.
   Seeded, and every evaluated candidate is logged in the work directory, so a resumed
   run replays the same search without evaluating anything twice.
4. Final re-fit (`search_refit`): the winner's allocation re-applied layer by layer on the
   PRUNED model's inputs over all calibration windows, landing on the budget to the channel.
"""
from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .. import dist
from ..errors import PlanError
from ..plan import Plan
from ..calibrate.streaming import LayerSource
from .allocate import DROP, Alloc, Ladders, moves, from_ratios, knapsack, latency_costs, repair
from .base import RATIO_TOLERANCE, PruneRequest, bar, param_budget
from .comp import layer_ratios
from .fitness import KLFitness
from .fitness_vocab import TOP
from .ladder import LadderStore
from .ladder_build import build_ladders
from ..io.atomic import write_text
from .seeds import portfolio_seeds
from .search_refit import final_stage
from .slimgpt import ipr_ratios

POPULATION = 8  # children per generation


def plan_search(source: LayerSource, calib: torch.Tensor, req: PruneRequest) -> Plan:
    ad, L = source.adapter, source.num_layers
    speed, n = req.budget is not None and req.budget.is_speed, calib.shape[0]
    ratio = None if speed else float(req.ratio)
    if n < 2:
        raise PlanError("search holds back part of the calibration windows for its fitness and needs at least 2; raise --nsamples")
    held = max(1, n // 2)  # half the windows: the fitness ranks better on more tokens (measured on stories260K)
    fixed = frozenset(req.protected(L))
    if speed:  # the budget is decode ms/token saved, as the latency model predicts (reachability checked before any work)
        dense_ms = req.latency.model_ms(list(source.shapes))
        budget, tol = dense_ms - req.budget.target_ms(dense_ms), None
    else:
        budget, tol = param_budget(ad, ratio), param_budget(ad, RATIO_TOLERANCE)
    if not speed and fixed and sum(ad.layer_param_count(sh) for i, sh in enumerate(source.shapes) if i not in fixed) < budget:
        raise PlanError(f"--ratio {ratio} cannot be reached with layers {sorted(fixed)} protected; lower --ratio or --protect fewer layers")
    work = req.state.dir.parent if req.state is not None else Path(tempfile.mkdtemp(prefix="edgeprune-search-"))
    try:
        # the ladders do not depend on the budget: `edgeprune sweep` shares one build of them
        store = LadderStore(Path(req.extra["ladder_dir"]) if req.extra.get("ladder_dir") else work / "ladder")
        clock = [time.perf_counter()]  # each stage's wall seconds, in the plan (benchmarks/scale.py reads them)
        lad = Ladders(build_ladders(source, calib[: n - held], req, store), fixed)
        if speed:
            lad = Ladders(lad.records, fixed, latency_costs(lad.records, req.latency.layer_ms,
                                                             getattr(req.latency, "saving", None)), req.budget.flag, 1e-9)
        if capacity(lad) < budget:  # without protected layers: only at budgets near the whole model (one layer is kept)
            raise PlanError(f"{req.budget.words() if speed else f'--ratio {ratio}'} leaves less than one layer's deepest cut; "
                            f"lower {lad.flag}")
        clock.append(time.perf_counter())
        fitness = KLFitness(source, calib[n - held:], lad, store, req.batch_size, req.search_kl_vocab)
        # every method's allocation (seeds.py) splits parameters: under a time budget, as many as the knapsack removes
        pbudget = budget if lad.costs is None else sum(lad.removed(i, c) for i, c in enumerate(knapsack(lad, budget)))
        portfolio, skipped = portfolio_seeds(ad, source.shapes, lad, req, pbudget)
        try:
            best, log = evolve(lad, budget, fitness, req, work / "search.json", tol, portfolio)
        finally:
            fitness.close()
        log["seeds_skipped"] = skipped
        clock.append(time.perf_counter())
        plan = Plan(method="search", tensors=req.tensor_store(), model_type=ad.family, num_layers=L, ratio_requested=ratio,
                    removed_layers=[i for i, c in enumerate(best) if c == DROP],
                    options={"search_evals": req.search_evals, "population": POPULATION, "seed": req.seed,
                             "heldback_windows": held, "fitness": "KL(dense || pruned) per token, held-back calibration windows"
                             + (f", on {req.search_kl_vocab} sampled vocabulary rows and each token's top {TOP}" if fitness.sample else ""),
                             "search_kl_vocab": req.search_kl_vocab,
                             "damp": req.damp, "align": req.align, "protect": sorted(lad.fixed),
                             "cost": "predicted decode ms/token saved (latency model)" if speed else "parameters removed"})
        final_stage(source, calib, req, plan, lad, best, budget, tol)
        clock.append(time.perf_counter())
        log["seconds"] = dict(zip(("ladders", "fitness", "refit"), (round(b - a, 2) for a, b in zip(clock, clock[1:]))))
        plan.stats["search"] = log
        return plan
    finally:
        if req.state is None:
            shutil.rmtree(work, ignore_errors=True)


def capacity(lad: Ladders) -> int:
    """The most an allocation can save (parameters, or predicted ms): every free layer at its
    deepest rungs or dropped, whichever saves more, with at least one layer kept."""
    deep = {i: max(lad.saved(i, c) for c in lad.choices(i) if c != DROP) if i not in lad.fixed else 0 for i in range(len(lad.records))}
    drop = {i: lad.saved(i, DROP) if i not in lad.fixed else 0 for i in range(len(lad.records))}
    total = sum(max(deep[i], drop[i]) for i in deep)
    if lad.fixed:
        return total
    return total - min(max(deep[i], drop[i]) - deep[i] for i in deep)


def mutate(lad: Ladders, alloc: Alloc, rng: random.Random, switches: int, budget: float,
           tol: float | None = None) -> Alloc:
    """Level switches: per switch one module a rung deeper and another a rung shallower,
    or (one time in eight) a layer dropped or restored; then `repair` (within `tol`)."""
    cur = list(alloc)
    free = [i for i in range(len(cur)) if i not in lad.fixed]
    for _ in range(switches):
        if rng.random() < 0.125:
            i = rng.choice(free)
            cur[i] = (0, 0) if cur[i] == DROP else DROP
            if sum(c != DROP for c in cur) == 0:
                cur[i] = (0, 0)
            continue
        for deeper in (True, False):
            opts = moves(lad, tuple(cur), deeper)
            if opts:
                i, n, _, _ = rng.choice(opts)
                cur[i] = n
    return repair(lad, tuple(cur), budget, tol)


def evolve(lad: Ladders, budget: float, fitness: KLFitness, req: PruneRequest, log_path: Path,
           tol: float | None = None, portfolio: dict[str, Alloc] | None = None) -> tuple[Alloc, dict]:
    """Seeds (the search's own and the `portfolio`: other methods' allocations), then (1 + λ)
    level-switch generations under a bounded number of evaluations; every candidate lands
    within `tol` parameters of the budget where its aligned rungs allow."""
    cache: dict[Alloc, float] = {}
    if log_path.is_file():  # resume: the same seed replays the same candidates
        from edgeprune.io import schema

        saved = schema.read(log_path, schema.SEARCH_LOG, "search log",
                          f"delete it to evaluate the candidates again, or {schema.RESTART}")
        cache = {tuple(map(tuple, a)): v for a, v in saved["evaluated"]}
    cache = dist.broadcast_object(cache)  # rank 0's log: every rank replays the same candidates
    progress = bar(range(req.search_evals), "search: candidates", req)
    L = len(lad.records)

    spent = [0]  # candidates asked for so far (a resumed run asks for the same ones)

    def score(allocs: list[Alloc]) -> None:
        spent[0] += len(allocs)
        todo = [a for a in dict.fromkeys(allocs) if a not in cache]
        if todo:
            cache.update(zip(todo, fitness(todo)))
            write_text(log_path, json.dumps({"evaluated": [[list(map(list, a)), v] for a, v in cache.items()]}))
        progress.update(len(allocs))

    params = {i: r["drop"]["removed"] for i, r in enumerate(lad.records)}
    seeds = {"knapsack": knapsack(lad, budget)}
    # The fixed rules split parameters; under a time budget they split as many as the knapsack
    # removes, and `repair` then brings each to the budget in predicted time.
    pb = budget if lad.costs is None else sum(lad.removed(i, c) for i, c in enumerate(seeds["knapsack"]))
    for rule in ("log", "uniform"):
        seeds[f"{'slimgpt-' if rule == 'log' else ''}{rule}"] = from_ratios(lad, ipr_ratios(L, params, pb, rule, req.max_layer_ratio), params)
    imp = {i: r["importance"] for i, r in enumerate(lad.records) if i not in lad.fixed}
    seeds["comp-eq10"] = from_ratios(lad, layer_ratios(imp, {i: params[i] for i in imp}, pb, req.max_layer_ratio), params)
    seeds.update(portfolio or {})  # the portfolio (seeds.py): repaired and scored like the rest
    seeds = {k: repair(lad, v, budget, tol) for k, v in seeds.items()}
    score(list(dict.fromkeys(seeds.values())))  # methods that allocate alike cost one evaluation
    best = min(seeds.values(), key=lambda a: cache[a])
    origin = next(k for k, v in seeds.items() if v == best)
    rng = random.Random(req.seed)
    left, gens, history = req.search_evals - spent[0], 0, [cache[best]]
    total_gens = max(1, -(-max(left, 0) // POPULATION))
    while left > 0:
        switches = max(1, round((L / 4) * (1 - gens / total_gens)))
        kids = [mutate(lad, best, rng, switches, budget, tol) for _ in range(min(POPULATION, left))]
        score(kids)
        left -= len(kids)
        gens += 1
        champion = min([best] + kids, key=lambda a: cache[a])
        if champion != best:
            best, origin = champion, f"evolution (generation {gens})"
        history.append(cache[best])
    progress.close()
    log = {"seeds": {k: {"kl": cache[v], "proxy": lad.proxy(v)} for k, v in seeds.items()}, "best_kl": cache[best],
           "best_from": origin, "generations": gens, "evaluated": len(cache), "kl_history": history,
           "allocation": [list(c) for c in best]}
    return best, log

"""The search's portfolio: every method's allocation is a seed, on valid rungs at the budget."""
from __future__ import annotations

import pytest
import torch

from edgeprune.methods import REGISTRY, PruneRequest
from edgeprune.methods.allocate import DROP, Ladders, repair
from edgeprune.methods.base import RATIO_TOLERANCE, dense_params
from edgeprune.methods.ladder import LadderStore
from edgeprune.methods.search import build_ladders
from edgeprune.methods.seeds import RULES, method_counts, on_rungs, portfolio_seeds
from edgeprune.run.pipeline import make_plan
from edgeprune.calibrate.streaming import open_source

from .test_search import _fake_ladders

SEEDED = {m.name for m in REGISTRY.values() if m.seed is not None}


def _ladders(d, tmp_path, ratio: float):
    src = open_source(d)
    req = PruneRequest(ratio=ratio, progress=False)
    windows = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(0))
    lad = Ladders(build_ladders(src, windows, req, LadderStore(tmp_path / "ladder")))
    return src, req, lad, windows


def test_every_rule_is_declared_and_known():
    assert SEEDED >= {"comp", "comp-slimgpt", "slimgpt", "flap", "wanda-sp", "shortgpt", "taylor", "magnitude"}
    assert {REGISTRY[n].seed for n in SEEDED} <= set(RULES)
    assert REGISTRY["search"].seed is None  # its own seeds are in evolve


def test_on_rungs_takes_the_nearest_aligned_rungs_and_spares_protected_layers():
    lad = _fake_ladders(0)
    for i in range(4):
        a, f = on_rungs(lad, i, 61, 23)
        aligned = lad.attn_levels(i)
        assert a in aligned and a == min(aligned, key=lambda k: abs(lad.attn(i)[k]["removed"] - 61))
        assert lad.ffn(i)[f]["removed"] == 22  # FFN rungs every 11 parameters
    assert on_rungs(Ladders(lad.records, frozenset({2})), 2, 61, 23) == (0, 0)


@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.5])
def test_every_seed_lands_on_valid_rungs_within_the_budget(tiny_models, tmp_path, ratio):
    src, req, lad, _ = _ladders(tiny_models["qwen2"], tmp_path, ratio)
    P = dense_params(src.adapter)
    seeds, skipped = portfolio_seeds(src.adapter, src.shapes, lad, req, ratio * P)
    assert set(seeds) | set(skipped) == SEEDED and len(seeds) >= len(SEEDED) - 1
    for name, alloc in seeds.items():
        for a in (alloc, repair(lad, alloc, ratio * P, RATIO_TOLERANCE * P)):
            assert all(c in lad.choices(i) for i, c in enumerate(a)), name
            assert any(c != DROP for c in a), name
        assert abs(lad.total(a) - ratio * P) <= RATIO_TOLERANCE * P, name


def _counts_of(plan, shapes) -> dict:
    out = {}
    for i, s in enumerate(shapes):
        if i in plan.removed_layers:
            out[i] = None
        elif i in plan.layers:
            lp = plan.layers[i]
            out[i] = (s.num_kv_heads - len(lp.kv_keep), s.intermediate_size - len(lp.ffn_keep))
    return out


@pytest.mark.parametrize("method", ["slimgpt", "wanda-sp", "flap", "shortgpt", "comp-slimgpt"])
def test_a_rule_is_the_methods_own_allocation(tiny_models, tmp_path, method):
    """From the ladder pass's statistics alone, each rule removes what the method's own plan
    removes, layer by layer (before the mapping onto rungs)."""
    d = tiny_models["llama"]
    src, req, lad, windows = _ladders(d, tmp_path, 0.3)
    got = method_counts(src.adapter, src.shapes, lad, req, 0.3 * dense_params(src.adapter))[0][method]
    plan = make_plan(d, method, PruneRequest(ratio=0.3, progress=False), windows)[0]
    want = _counts_of(plan, src.shapes)
    assert any(v != (0, 0) for v in want.values())
    assert {i: v for i, v in got.items() if v != (0, 0)} == {i: v for i, v in want.items() if v != (0, 0)}


def test_the_plan_records_every_seed_and_beats_each_on_its_fitness(tiny_models):
    windows = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(0))
    plan = make_plan(tiny_models["qwen2"], "search", PruneRequest(ratio=0.3, progress=False, search_evals=16), windows)[0]
    log = plan.stats["search"]
    assert set(log["seeds"]) >= SEEDED | {"knapsack"} and not log["seeds_skipped"]
    assert all(v["kl"] >= log["best_kl"] for v in log["seeds"].values())
    assert log["evaluated"] <= 16

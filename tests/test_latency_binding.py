"""A speed budget held in every artifact runtime (edgeprune/measure/latency_binding.py): the binding
runtime decides reachability, the search's costs are what every runtime is sure to save, the
plan and profile carry each runtime's own prediction, and a build measures one model per artifact.
The latency models are fakes with known coefficients (no timing)."""
from __future__ import annotations

import itertools
import warnings

import pytest

from edgeprune.measure import budget as bmod
from edgeprune.measure.latency_binding import Binding, combine, load
from edgeprune.methods.allocate import DROP, Ladders, knapsack, latency_costs, repair
from edgeprune.models import LayerShape
from tests.test_budget import FakeLatency, _ad, _ladders, _windows


def _fake(dtype: str, **kw) -> FakeLatency:
    lm = FakeLatency(**kw)
    lm.dtype = dtype
    return lm


def _pair():
    """An overhead-bound runtime with a small fixed part (a dropped layer buys a large fraction)
    and one with a large fixed part whose FFN channels weigh more (as ORT's per-token overhead)."""
    return _fake("f32", overhead=0.3, ch=0.0004, fixed=0.2), _fake("q8_0", overhead=0.2, ch=0.003, fixed=1.5)


DENSE = [LayerShape(64, 4, 2)] * 3


def _plan_shapes(lad: Ladders, alloc) -> list:
    out = []
    for i, c in enumerate(alloc):
        if c == DROP:
            out.append(None)
            continue
        a, f = lad.attn(i)[c[0]], lad.ffn(i)[c[1]]
        out.append(LayerShape(len(f["keep"]), len(a["keep"]), len(a["kv_keep"])))
    return out


def test_binding_model_is_the_slowest_runtime_in_first_runtime_ms():
    a, b = _pair()
    bd = Binding([a, b], DENSE)
    assert bd.model_ms(DENSE) == pytest.approx(a.model_ms(DENSE))
    plan = [LayerShape(16, 4, 2), LayerShape(16, 4, 2), LayerShape(64, 4, 2)]
    worst = max(a.model_ms(plan) / a.model_ms(DENSE), b.model_ms(plan) / b.model_ms(DENSE))
    assert bd.model_ms(plan) == pytest.approx(a.model_ms(DENSE) * worst)
    assert bd.runtime.startswith("every artifact runtime") and bd.relative_error == pytest.approx(0.04)


@pytest.mark.parametrize("seed", range(3))
def test_allocation_under_binding_costs_meets_the_speedup_in_every_runtime(seed):
    a, b = _pair()
    bd = Binding([a, b], DENSE)
    lad = _ladders(seed)
    S = 1.25
    timed = Ladders(lad.records, lad.fixed, latency_costs(lad.records, bd.layer_ms, bd.saving), "--speedup", 1e-9)
    dense = bd.model_ms(DENSE)
    alloc = repair(timed, knapsack(timed, dense - dense / S, steps=5000), dense - dense / S)
    shapes = _plan_shapes(lad, alloc)
    for m in (a, b):
        assert m.model_ms(DENSE) / m.model_ms(shapes) >= S - 1e-9, m.dtype
    assert bd.model_ms(shapes) <= dense / S + 1e-9


def test_first_runtime_alone_can_miss_the_speedup_in_another():
    """Why the binding exists: some allocation meeting S in the first runtime misses it in the second."""
    a, b = _pair()
    lad = _ladders(0)
    only_a = Ladders(lad.records, lad.fixed, latency_costs(lad.records, a.layer_ms), "--speedup", 1e-9)
    S, dense = 1.25, a.model_ms(DENSE)
    every = [x for x in itertools.product(*[lad.choices(i) for i in range(3)]) if any(c != DROP for c in x)]
    meets_a = [x for x in every if only_a.total(x) >= dense - dense / S]
    assert any(b.model_ms(DENSE) / b.model_ms(_plan_shapes(lad, x)) < S for x in meets_a)


def test_reachable_range_is_the_binding_runtimes(tiny_models):
    ad = _ad(tiny_models["llama"])
    a, b = _pair()
    full = list(ad.layer_shapes())
    bd = Binding([a, b], full)
    fast = bmod.fastest_shapes(ad, set())
    least = min(m.model_ms(full) / m.model_ms(fast) for m in (a, b))
    with pytest.raises(bmod.PlanError, match=f"gives at most {least:.2f}x"):
        bmod.check_reachable(bmod.Budget("speedup", least * 1.05), bd, ad)
    bmod.check_reachable(bmod.Budget("speedup", least * 0.95), bd, ad)


def test_combine_and_round_trip():
    from edgeprune.measure.latency_model import LatencyModel

    def real(dtype, fixed, layer):
        w = {"hidden_size": 64, "head_dim": 16, "vocab_size": 512, "dense": DENSE[0].as_dict()}
        return LatencyModel("llama.cpp", "gguf", dtype, 128, 1, {"widths": w}, "host", 0.05,
                            {"fixed": fixed, "layer": layer, "weights": 0.1})

    one = real("f32", 1.0, 0.2)
    assert combine([one, one], DENSE) is one
    bd = combine([one, real("q8_0", 0.5, 0.3)], DENSE)
    back = load(bd.to_json())
    assert isinstance(back, Binding) and back.model_ms(DENSE[:1]) == pytest.approx(bd.model_ms(DENSE[:1]))
    assert load(one.to_json()).coefficients == one.coefficients


def test_search_under_a_binding_records_every_runtimes_prediction(tiny_models, monkeypatch):
    from edgeprune.run import pipeline
    from edgeprune.run.budget_stages import artifact_prediction

    d = tiny_models["qwen2"]
    a, b = _pair()
    bd = Binding([a, b], list(_ad(d).layer_shapes()))
    monkeypatch.setattr(pipeline, "calibration", lambda *x, **k: _windows())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pipeline.prune(d, "search", speedup=1.2, latency_model=bd, checked=True, progress=False, search_evals=8)
    per = res.plan.stats["latency_predicted"]["per_runtime"]
    assert set(per) == {"gguf-f32", "gguf-q8_0"}
    assert all(p["speedup"] >= 1.2 - 1e-9 for p in per.values())
    lat = {"dense": {"decode_ms_per_token_median": 2.0}, "pruned": {"decode_ms_per_token_median": 1.5}}
    entry = {"format": "gguf", "dtype": "q8_0", "latency": lat, "speedup": {"decode_measured": 1.33, "decode_interval": [1.3, 1.4]}}
    got = artifact_prediction(entry, bd, res.report)
    assert got["speedup"]["predicted"] == pytest.approx(per["gguf-q8_0"]["speedup"])
    assert artifact_prediction({**entry, "format": "onnx", "dtype": "f32"}, bd, res.report) is None


def test_build_measures_one_model_per_artifact(tiny_models, monkeypatch):
    from edgeprune.run import budget_stages as bs
    from edgeprune.run.targets import load_target

    asked = []

    def fake_build(ad, fmt, dtype, context, table=None, progress=True, threads=None):
        asked.append((fmt, dtype))
        lm = _fake(dtype, fixed=1.0 + len(asked))
        lm.fmt = fmt
        return lm

    monkeypatch.setattr(bs, "build_model", fake_build)
    tgt = load_target("cpu-x86")
    ad = _ad(tiny_models["llama"])
    dtypes = [(f["format"], f["dtype"]) for f in tgt.formats]
    lm = bs.latency_for(tgt, ad, ad.config, dtypes)
    assert asked == dtypes and isinstance(lm, Binding) and len(lm.models) == len(set(dtypes))

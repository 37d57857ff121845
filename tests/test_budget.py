"""Budgets in the user's terms (--ratio, --speedup, --latency-ms): parsing and exclusivity, the
refusal of an unreachable budget before any work, the allocator and the search under a time
budget, and what the plan, profile and report record. The latency model here is a fake with
the real one's interface (edgeprune/measure/latency_model.py), so every figure is known exactly."""
from __future__ import annotations

import itertools
import random
import warnings
from pathlib import Path

import pytest
import torch

from edgeprune.measure import budget as bmod
from edgeprune.cli.main import main
from edgeprune.errors import PlanError
from edgeprune.methods.allocate import DROP, Ladders, knapsack, latency_costs, repair
from edgeprune.methods.search import mutate
from edgeprune.models import get_adapter
from edgeprune.io.checkpoint import load_config


class FakeLatency:
    """Decode ms/token: a fixed part plus, per present layer, a dispatch overhead and terms
    per query head, KV group and FFN channel (overhead-bound, as on the demo model)."""

    runtime, fmt, dtype, context, threads, key, source, relative_error = "llama.cpp", "gguf", "f32", 128, 1, "fake", "host", 0.04

    def __init__(self, overhead: float = 0.3, head: float = 0.01, kv: float = 0.02, ch: float = 0.0004, fixed: float = 1.0):
        self.c = (overhead, head, kv, ch)
        self.fixed = fixed

    def layer_ms(self, heads: int, kv_heads: int, ffn: int) -> float:
        o, h, k, c = self.c
        return o + h * heads + k * kv_heads + c * ffn

    def fixed_ms(self) -> float:
        return self.fixed

    def model_ms(self, shapes) -> float:
        return self.fixed + sum(self.layer_ms(s.num_heads, s.num_kv_heads, s.intermediate_size) for s in shapes if s is not None)

    def to_json(self) -> dict:
        return {"c": list(self.c), "fixed": self.fixed}


def _ad(d: Path):
    return get_adapter(load_config(d))


# ---- parsing and exclusivity -----------------------------------------------------------------
def test_parse_takes_exactly_one_budget():
    assert bmod.parse(ratio=0.2) == bmod.Budget("ratio", 0.2)
    assert bmod.parse(speedup=1.3).target_ms(13.0) == pytest.approx(10.0)
    assert bmod.parse(latency_ms=4).target_ms(13.0) == 4.0
    assert bmod.parse() is None
    with pytest.raises(PlanError, match="--ratio and --speedup were both given"):
        bmod.parse(ratio=0.2, speedup=1.3)
    with pytest.raises(PlanError, match="no speedup"):
        bmod.parse(speedup=1.0)
    with pytest.raises(PlanError, match="positive"):
        bmod.parse(latency_ms=-1)


@pytest.mark.parametrize("cmd", ["prune", "build"])
def test_cli_refuses_two_budgets_in_one_line(cmd, tmp_path, capsys):
    assert main([cmd, "--ratio", "0.2", "--latency-ms", "5", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgeprune: error:") and "not allowed with" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def _target(tmp_path: Path, pruning: str) -> Path:
    from edgeprune.run.targets import TARGETS_DIR

    text = (TARGETS_DIR / "cpu-x86.toml").read_text()
    head, _, rest = text.partition("[pruning]")
    tail = rest[rest.index("[latency]"):]
    p = tmp_path / "t.toml"
    p.write_text(f"{head}[pruning]\nmethod = \"search\"\nalign = 32\n{pruning}\n\n{tail}")
    return p


def test_target_sets_exactly_one_of_ratio_and_speedup(tmp_path):
    from edgeprune.run.targets import TargetError, load_target

    t = load_target(str(_target(tmp_path, "speedup = 1.25")))
    assert t.speedup == 1.25 and t.ratio is None
    assert load_target(str(_target(tmp_path, "ratio = 0.3"))).speedup is None
    for bad, why in (("ratio = 0.2\nspeedup = 1.3", "ratio and speedup"), ("", "neither"), ("speedup = 0.9", "above 1")):
        with pytest.raises(TargetError, match=why):
            load_target(str(_target(tmp_path, bad)))


# ---- reachability, before any work --------------------------------------------------------------
def test_unreachable_budget_names_the_range(tiny_models):
    ad, lm = _ad(tiny_models["llama"]), FakeLatency()
    dense = lm.model_ms(ad.layer_shapes())
    fast = lm.model_ms(bmod.fastest_shapes(ad, set()))
    with pytest.raises(PlanError, match=rf"at most {dense / fast:.2f}x; use --speedup <= "):
        bmod.check_reachable(bmod.Budget("speedup", 10.0), lm, ad)
    with pytest.raises(PlanError, match="already met by the dense model"):
        bmod.check_reachable(bmod.Budget("latency_ms", dense + 1), lm, ad)
    with pytest.raises(PlanError, match=">= "):
        bmod.check_reachable(bmod.Budget("latency_ms", fast * 0.9), lm, ad)
    assert bmod.check_reachable(bmod.Budget("speedup", 1.2), lm, ad) == (pytest.approx(dense), pytest.approx(dense / 1.2))


def test_prune_refuses_unreachable_budget_before_calibration_or_out(tiny_models, tmp_path, monkeypatch):
    from edgeprune.run import pipeline

    monkeypatch.setattr(pipeline, "preflight", lambda *a, **k: pytest.fail("calibration reached"))
    monkeypatch.setattr(bmod, "build_model", lambda *a, **k: FakeLatency())
    with pytest.raises(PlanError, match="out of reach"):
        pipeline.prune(tiny_models["llama"], "search", speedup=10.0, out=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_build_refuses_unreachable_budget_before_its_directory(tiny_models, tmp_path, monkeypatch):
    from edgeprune.run import build as bld

    monkeypatch.setattr(bmod, "build_model", lambda *a, **k: FakeLatency())
    monkeypatch.setattr("edgeprune.run.budget_stages.build_model", lambda *a, **k: FakeLatency())
    with pytest.raises(PlanError, match="--speedup 10 is out of reach in cpu-x86's artifacts"):
        bld.build(model=str(tiny_models["llama"]), target="cpu-x86", speedup=10.0, out=str(tmp_path / "b"), calib="demo")
    assert not (tmp_path / "b").exists()


# ---- the allocator under a time budget -------------------------------------------------------------
def _ladders(seed: int, layers: int = 3) -> Ladders:
    """Rungs with kept widths (what the latency model prices): 4 heads in 2 KV groups, FFN of 64."""
    rng = random.Random(seed)
    attn_keep = [(4, 2), (3, 2), (2, 2), (2, 1), (1, 1)]

    def attn():
        err, out = 0.0, []
        for k, (h, g) in enumerate(attn_keep):
            err += rng.random() if k else 0.0
            out.append({"removed": (4 - h) * 40 + (2 - g) * 20, "error": err, "keep": list(range(h)),
                        "kv_keep": list(range(g)), "aligned": k == 0 or rng.random() > 0.2})
        return out

    def ffn():
        err, out = 0.0, []
        for k in range(6):
            err += rng.random() if k else 0.0
            out.append({"removed": k * 8 * 3, "error": err, "keep": list(range(64 - 8 * k)), "aligned": True})
        return out

    recs = [{"attn": attn(), "ffn": ffn(), "attn_params": 200, "drop": {"removed": 400, "error": 2 + 4 * rng.random()}}
            for _ in range(layers)]
    return Ladders(recs)


def _timed(lad: Ladders, lm: FakeLatency) -> Ladders:
    return Ladders(lad.records, lad.fixed, latency_costs(lad.records, lm.layer_ms), "--latency-ms", 1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_knapsack_meets_a_ms_budget_exactly_like_brute_force(seed):
    lm = FakeLatency()
    lad = _timed(_ladders(seed), lm)
    dense = lm.fixed + sum(lm.layer_ms(4, 2, 64) for _ in range(3))
    budget = 0.25 * dense  # a quarter of the time saved: one drop and deep cuts compete
    every = [a for a in itertools.product(*[lad.choices(i) for i in range(3)]) if any(c != DROP for c in a)]
    best = min((a for a in every if lad.total(a) >= budget), key=lad.proxy)
    got = knapsack(lad, budget, steps=20_000)
    assert lad.total(got) >= budget - 1e-9
    assert lad.proxy(got) == pytest.approx(lad.proxy(best))
    # the saving is the model's: a dropped layer saves its whole time, a rung its widths' difference
    assert lad.saved(0, DROP) == pytest.approx(lm.layer_ms(4, 2, 64))
    assert lad.saved(0, (3, 1)) == pytest.approx(lm.layer_ms(4, 2, 64) - lm.layer_ms(2, 1, 56))


def test_repair_and_mutate_meet_a_ms_budget():
    lm = FakeLatency()
    lad = _timed(_ladders(1), lm)
    budget = 0.5
    start = repair(lad, tuple((0, 0) for _ in range(3)), budget)
    assert budget <= lad.total(start) <= budget + max(lad.slack(), max(lad.saved(i, DROP) for i in range(3)))
    for kid in [mutate(lad, start, random.Random(s), 2, budget) for s in range(10)]:
        assert lad.total(kid) >= budget and any(c != DROP for c in kid)


def test_ratio_ladders_cost_parameters_as_before():
    lad = _ladders(2)
    assert all(lad.saved(i, c) == lad.removed(i, c) for i in range(3) for c in lad.choices(i))


# ---- the search and the pipeline under a time budget ----------------------------------------------
def _windows():
    return torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(0))


def test_search_under_a_ms_budget_plans_within_it(tiny_models, monkeypatch):
    from edgeprune.run import pipeline

    d = tiny_models["qwen2"]
    lm = FakeLatency()
    dense = lm.model_ms(_ad(d).layer_shapes())
    monkeypatch.setattr(pipeline, "calibration", lambda *a, **k: _windows())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pipeline.prune(d, "search", latency_ms=0.7 * dense, latency_model=lm, checked=True, progress=False,
                             search_evals=8)
    plan, rep = res.plan, res.report
    assert plan.options["budget"]["kind"] == "latency_ms" and plan.options["budget"]["requested"] == pytest.approx(0.7 * dense)
    pred = plan.stats["latency_predicted"]
    assert pred["dense_ms_per_token"] == pytest.approx(dense)
    assert pred["pruned_ms_per_token"] <= 0.7 * dense + 1e-9
    shapes = [None if i in plan.removed_layers else plan.result_shape(i, _ad(d)) for i in range(plan.num_layers)]
    assert lm.model_ms(shapes) == pytest.approx(pred["pruned_ms_per_token"])
    assert plan.options["cost"].startswith("predicted decode ms")
    assert rep["budget"]["ratio"] == pytest.approx(rep["ratio_achieved"]) and rep["ratio_requested"] is None


def test_a_speed_budget_with_shared_ladders_saves_to_out(tiny_models, monkeypatch, tmp_path):
    """`sweep` passes extra={"ladder_dir": ...}; the resolved budget the stages add to it must not
    reach the resume record (it once did, and every sweep point died writing args.json)."""
    from edgeprune.run import pipeline

    d = tiny_models["qwen2"]
    lm = FakeLatency()
    monkeypatch.setattr(pipeline, "calibration", lambda *a, **k: _windows())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pipeline.prune(d, "search", speedup=1.2, latency_model=lm, checked=True, progress=False, search_evals=8,
                             out=str(tmp_path / "out"), extra={"ladder_dir": str(tmp_path / "ladder")})
    assert (tmp_path / "out" / "config.json").is_file() and any((tmp_path / "ladder").iterdir())
    assert res.plan.stats["latency_predicted"]["pruned_ms_per_token"] <= lm.model_ms(_ad(d).layer_shapes()) / 1.2 + 1e-9


def test_parameter_only_method_gets_the_translated_ratio(tiny_models, monkeypatch):
    from edgeprune.run import pipeline

    d = tiny_models["llama"]
    lm, ad = FakeLatency(overhead=0.05, ch=0.002), _ad(d)
    dense = lm.model_ms(ad.layer_shapes())
    monkeypatch.setattr(pipeline, "calibration", lambda *a, **k: _windows())
    with pytest.warns(UserWarning, match="allocates by parameters only"):
        res = pipeline.prune(d, "magnitude", speedup=1.2, latency_model=lm, checked=True, progress=False)
    b = res.plan.options["budget"]
    r = b["translated_ratio"]
    assert res.report["ratio_requested"] == r
    assert lm.model_ms(bmod.uniform_shapes(ad, r, 1)) <= dense / 1.2
    assert lm.model_ms(bmod.uniform_shapes(ad, r - bmod.TRANSLATE_STEP, 1)) > dense / 1.2


def test_ratio_budget_adds_nothing_to_the_plan(tiny_models, monkeypatch):
    from edgeprune.run import pipeline

    monkeypatch.setattr(pipeline, "calibration", lambda *a, **k: _windows())
    res = pipeline.prune(tiny_models["llama"], "magnitude", ratio=0.2, checked=True, progress=False)
    assert "budget" not in res.plan.options and "latency_predicted" not in res.plan.stats


# ---- what the profile and the report record --------------------------------------------------------
def test_profile_records_budget_model_and_prediction():
    from edgeprune.run.budget_stages import artifact_prediction, budget_record, latency_model_record
    from edgeprune.report.markdown import budget_lines

    lm = FakeLatency()
    rep = {"budget": {"kind": "speedup", "requested": 1.3}, "ratio_achieved": 0.21,
           "latency_predicted": {"dense_ms_per_token": 2.6, "pruned_ms_per_token": 2.0, "speedup": 1.3}}
    entry = {"format": "gguf", "dtype": "f32", "latency": {"dense": {"decode_ms_per_token_median": 2.5},
                                                          "pruned": {"decode_ms_per_token_median": 2.0}},
             "speedup": {"decode_measured": 1.25, "decode_interval": [1.2, 1.3]}}
    pred = artifact_prediction(entry, lm, rep)
    assert pred["speedup"] == {"predicted": 1.3, "measured": 1.25, "interval": [1.2, 1.3]}
    assert pred["pruned_ms_per_token"] == {"predicted": 2.0, "measured": 2.0}
    assert artifact_prediction({**entry, "dtype": "q8_0"}, lm, rep) is None
    profile = {"budget": budget_record(None, None, 0.21, rep), "latency_model": latency_model_record(lm),
               "artifacts": [{**entry, "latency_predicted": pred}]}
    assert profile["budget"] == {"kind": "speedup", "requested": 1.3, "ratio": 0.21}
    assert profile["latency_model"]["source"] == "host" and profile["latency_model"]["relative_error"] == 0.04
    text = "\n".join(budget_lines(profile))
    assert "decode speedup 1.3x (became ratio 0.2100)" in text and "4.0% error on held-out shapes" in text
    assert "1.30x predicted, 1.25x measured" in text
    assert budget_lines({"budget": {"kind": "ratio", "requested": 0.2, "ratio": 0.2}, "latency_model": None,
                         "artifacts": []}) == []


@pytest.mark.parametrize("bad", ["nan", "inf", "1.0", "-2", '"fast"', "true"])
def test_a_target_speedup_and_the_flag_share_one_check_and_one_message(tmp_path, bad):
    """`pruning.speedup` and `--speedup` go through `budget.check_speedup`: the same words, the
    target's path and key named (a wrong type is the key table's one type message)."""
    from edgeprune.run.targets import TargetError, load_target

    with pytest.raises(TargetError, match=r"pruning\.speedup'? .*(must be|asks for no speedup)") as e:
        load_target(str(_target(tmp_path, f"speedup = {bad}")))
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(PlanError, match=r"--speedup .*(must be a number|asks for no speedup)"):
        bmod.parse(speedup={"nan": float("nan"), "inf": float("inf"), "1.0": 1.0, "-2": -2.0, '"fast"': "fast",
                            "true": True}[bad])

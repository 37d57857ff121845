"""Device estimate: per-token overhead fitted on the host, scaled by clock, with an error bar."""
from __future__ import annotations

import pytest

from edgeprune.measure.estimate import device_estimate, fit_overhead, overhead_scale
from edgeprune.run.targets import load_target


def test_overhead_fit_recovers_a_known_model():
    bw = 20e9
    read = {"dense": 40_000_000, "pruned": 30_000_000}
    ms = {k: 0.5 + v / bw * 1000 for k, v in read.items()}
    fit = fit_overhead(ms, read, bw)
    assert fit["overhead_ms"] == pytest.approx(0.5) and fit["relative_error"] < 1e-9


def test_error_bar_shows_a_model_that_does_not_fit():
    """If pruning sped up far more than bytes explain, cross-prediction says so."""
    read = {"dense": 40_000_000, "pruned": 30_000_000}
    fit = fit_overhead({"dense": 3.0, "pruned": 1.0}, read, 20e9)
    assert fit["relative_error"] > 0.5


def test_small_model_estimate_is_bounded_and_caveated():
    tgt = load_target("cpu-x86")
    fit = fit_overhead({"dense": 1.0, "pruned": 0.9}, {"dense": 10_000_000, "pruned": 8_000_000}, 25e9)
    scale = overhead_scale(tgt, 1, 2.6)
    assert scale[0] == pytest.approx(2.6 / 3.0)
    e = device_estimate(tgt, "gguf", "f32", {"dense": 10_000_000, "pruned": 8_000_000}, {"dense": 0, "pruned": 0},
                        {"dense": 5e6, "pruned": 4e6}, fit, scale)
    assert e["decode_ms_per_token_pruned"] >= e["overhead_ms_per_token"] > 0.5
    lo, hi = e["decode_ms_per_token_pruned_interval"]
    assert lo <= e["decode_ms_per_token_pruned"] <= hi
    # prefill is bounded by one overhead per forward: never millions of tokens/s here
    assert e["prefill_tokens_per_s_pruned"] < tgt.context / (e["overhead_ms_per_token"] / 1000) + 1
    assert "caveat" in e and "±" in e["label"]


def test_target_without_cpu_clock_is_unscaled(tmp_path):
    tgt = load_target("cpu-x86")
    data = {**tgt.data, "hardware": {k: v for k, v in tgt.data["hardware"].items() if not k.startswith("cpu_")}}
    f, why = overhead_scale(type(tgt)(tgt.name, tgt.path, data), 2, 2.6)
    assert f == 1.0 and "unscaled" in why

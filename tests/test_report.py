"""The report a person reads: the verdict's decisions (speed, quality, fit), the quality alarm,
bench re-deciding, plot data that cannot contradict the text, the plan's true kept widths, the
target's quality bar, and provenance across a resume. Pure data wherever possible: no clock."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from edgeprune.report import verdict as V
from edgeprune.report.markdown import write_report
from edgeprune.measure.speedup import check, decode_bars


def _sp(status: str, measured: float = 1.2, lo: float = 1.15, hi: float = 1.25, ideal: float = 1.25) -> dict:
    return {"status": status, "decode_measured": measured, "decode_interval": [lo, hi], "decode_ideal": ideal,
            "passed": status == "pass", "reason": "test"}


def _artifact(sp: dict, ratio: float = 1.1, nbytes: int = 1_580_000, samples=None, interval=None) -> dict:
    runs = [1.0, 1.01, 0.99, 1.02, 0.98]
    lat = {"decode_ms_per_token_runs": runs, "decode_ms_per_token_min": 0.98, "decode_ms_per_token_median": 1.0,
           "prefill_tokens_per_s_max": 1000.0, "protocol": {"runtime": "llama.cpp"}}
    return {"format": "gguf", "dtype": "q8_0", "path": "artifacts/model-q8_0.gguf", "bytes": nbytes,
            "reference_dense": {"path": "reference/model-q8_0.gguf", "bytes": 2 * nbytes, "verify_passed": True},
            "verify": {"passed": True}, "speedup": sp, "latency": {"dense": lat, "pruned": dict(lat)},
            "perplexity": {"dense": 10.0, "pruned": 10.0 * ratio, "ratio": ratio, "ratio_interval": interval,
                           "protocol": {"data": "t", "windows": 8, "seq_len": 256}},
            "samples": samples or []}


def _profile(*arts, budget: int = 8_000_000_000, quality: dict | None = None) -> dict:
    target = {"name": "dev", "memory": {"budget_bytes": budget}, "latency": {"context": 128, "new_tokens": 32}}
    if quality is not None:
        target["quality"] = quality
    return {"target": target, "artifacts": list(arts), "provenance": {"host": {"cpu": "Build CPU", "cores": 2}},
            "prune": {"method": "search", "ratio_requested": 0.2, "ratio_achieved": 0.2, "params_dense": 100,
                      "params_pruned": 80, "params_dense_total": 120, "params_pruned_total": 100,
                      "peak_memory_bytes": 2**20, "peak_memory_above_baseline_bytes": 2**20, "wall_seconds": 1.0},
            "checkpoint": {"path": "model", "base_model": "m"},
            "device_estimate": {"artifacts": []}}


def _decide(profile: dict, kv: int | None = 70_000) -> dict:
    return V.decide(profile, {f"{a['format']} {a['dtype']}": kv for a in profile["artifacts"]})


def test_go_needs_speed_quality_and_fit():
    v = _decide(_profile(_artifact(_sp("pass"))))
    row = v["artifacts"][0]
    assert row["decision"] == V.GO and row["reasons"] == [] and not v["quality_alarm"]
    assert row["fit"]["total_bytes"] == 1_580_000 + 70_000 and row["quality"]["max_ppl_ratio"] == 1.5


@pytest.mark.parametrize("case, want, why", [
    ("inconclusive speed", V.UNCERTAIN, "speed not established"),
    ("missed speed", V.NO_GO, "not measurably faster"),
    ("slower", V.NO_GO, "slower than the dense"),
    ("faster, short of the ideal", V.GO, ""),
    ("implausible", V.UNCERTAIN, "implausible"),
    ("bigger pruned artifact", V.NO_GO, "reads more bytes"),
    ("ppl past the bar", V.NO_GO, "quality alarm: perplexity x2.42"),
    ("interval reaches the bar", V.UNCERTAIN, "quality uncertain"),
    ("garbage text", V.NO_GO, "garbage text for 'A'"),
    ("over the budget", V.NO_GO, "does not fit"),
])
def test_each_reason_decides(case, want, why):
    art = {
        "inconclusive speed": lambda: _artifact(_sp("inconclusive", 1.2, 0.8, 1.6)),
        "missed speed": lambda: _artifact(_sp("miss", 1.0, 0.95, 1.05)),
        "slower": lambda: _artifact(_sp("miss", 0.9, 0.85, 0.95)),
        "faster, short of the ideal": lambda: _artifact(_sp("miss", 1.51, 1.36, 1.69, ideal=1.88)),
        "implausible": lambda: _artifact(_sp("inconclusive", 2.5, 2.4, 2.6, ideal=1.3)),
        "bigger pruned artifact": lambda: _artifact(check([1.0] * 5, [0.9] * 5, 0.95)),  # ideal < 1: never faster
        "ppl past the bar": lambda: _artifact(_sp("pass"), ratio=2.42),
        "interval reaches the bar": lambda: _artifact(_sp("pass"), ratio=1.4, interval=[1.3, 1.6]),
        "garbage text": lambda: _artifact(_sp("pass"), samples=[
            {"prompt": "A", "runtime": "llama.cpp", "dense": "nna and Ben", "dense_ids": [1, 2, 3, 4, 5, 6],
             "pruned": "the the the the the the", "pruned_ids": [7, 8, 7, 8, 7, 8]}]),
        "over the budget": lambda: _artifact(_sp("pass"), nbytes=2_000_000_000),
    }[case]()
    v = _decide(_profile(art, budget=1_000_000_000 if case == "over the budget" else 8_000_000_000))
    row = v["artifacts"][0]
    assert row["decision"] == want and why in (row["reasons"] or [""])[0], row["reasons"]
    assert v["quality_alarm"] is (case in ("ppl past the bar", "garbage text"))
    if v["quality_alarm"]:
        assert v["alarms"][0].startswith("QUALITY ALARM: gguf q8_0")
        assert "QUALITY ALARM" in "\n".join(V.verdict_lines({"verdict": v}))


def test_no_go_outranks_uncertain_and_the_target_sets_the_bar():
    art = _artifact(_sp("inconclusive", 1.2, 0.8, 1.6), ratio=2.42)
    row = _decide(_profile(art))["artifacts"][0]
    assert row["decision"] == V.NO_GO and row["reasons"][0].startswith("quality alarm")
    assert any(r.startswith("speed not established") for r in row["reasons"])
    lenient = _decide(_profile(_artifact(_sp("pass"), ratio=2.42), quality={"max_ppl_ratio": 3.0}))
    assert lenient["artifacts"][0]["decision"] == V.GO and lenient["max_ppl_ratio"] == 3.0


def test_a_tiny_dense_model_that_loops_does_not_make_its_copy_garbage():
    same = {"prompt": "A", "runtime": "llama.cpp", "dense": "a a a a a a", "dense_ids": [5, 5, 5, 5, 5, 5],
            "pruned": "a a a a a a", "pruned_ids": [5, 5, 5, 5, 5, 5]}
    assert _decide(_profile(_artifact(_sp("pass"), samples=[same])))["artifacts"][0]["decision"] == V.GO
    assert V.garbage("\ufffd\ufffd\ufffdab", [1, 2, 3, 4, 5, 6]) is not None
    assert V.garbage("Once upon a time", [1, 2, 3, 4, 5, 6]) is None


def test_sizes_read_in_sensible_units():
    assert V.human_bytes(1_580_000) == "1.58 MB" and V.human_bytes(8_000_000_000) == "8 GB"
    assert V.human_bytes(73_728) == "73.7 kB" and V.human_bytes(512) == "512 B"
    line = V.verdict_lines({"verdict": _decide(_profile(_artifact(_sp("pass"))))})[0]
    assert line.startswith("- **GO** gguf q8_0") and "1.58 MB + 70 kB KV at 128 tokens of 8 GB" in line
    assert "0.00" not in line


def test_bench_re_decides_and_the_report_opens_with_it(tmp_path):
    profile = _profile(_artifact(_sp("inconclusive", 1.2, 0.8, 1.6)))
    profile["verdict"] = _decide(profile)
    assert profile["verdict"]["artifacts"][0]["decision"] == V.UNCERTAIN
    bench_runs = {"decode_ms_per_token_runs": [1.0] * 5, "decode_ms_per_token_median": 1.0, "prefill_tokens_per_s_max": 9.0}
    profile["measured_on_device"] = [{"time": "2026-12-02T08:00:00", "host": {"cpu": "Device CPU"}, "same_host_as_build": False,
                                      "artifacts": [{"format": "gguf", "dtype": "q8_0", "latency": bench_runs,
                                                     "latency_dense": bench_runs, "speedup": _sp("pass")}]}]
    before = copy.deepcopy(profile["verdict"])
    v = V.refresh(profile, "bench on Device CPU at 2026-12-02T08:00:00")
    row = v["artifacts"][0]
    assert row["decision"] == V.GO and row["speed"]["source"] == "bench" and "Device CPU" in row["speed"]["measured_on"]
    assert row["fit"] == before["artifacts"][0]["fit"]  # the build's fit (KV bytes) is kept without the widths
    write_report(tmp_path, profile)
    text = (tmp_path / "report.md").read_text().splitlines()
    assert text[2].startswith("- **GO** gguf q8_0") and "edgeprune bench" in text[2]


def test_plotted_decode_never_contradicts_the_check():
    """Per-side medians say pruned is slower (2.8 vs 1.0 ms) while the paired speedup says 1.07x
    faster: the plotted pruned bar is dense / speedup, and its whiskers are the check's interval."""
    dense, pruned = [1.0, 1.0, 1.0, 3.0, 3.0], [0.9, 0.9, 2.8, 2.8, 2.8]
    sp = check(dense, pruned, ideal=1.2)
    assert sp["decode_measured"] > 1
    bars = decode_bars(dense, sp)
    assert bars["pruned"] < bars["dense"] == 1.0
    lo, hi = sp["decode_interval"]
    assert bars["pruned_interval"] == pytest.approx([1.0 / hi, 1.0 / lo])
    assert bars["ideal_pruned"] == pytest.approx(1.0 / 1.2)


def test_plots_are_drawn_from_the_profile(tmp_path):
    pytest.importorskip("matplotlib")
    from edgeprune.report import plots

    art = _artifact(_sp("pass"), interval=[1.05, 1.15])
    art["perplexity"].update(dense_interval=[9.0, 11.0], pruned_interval=[10.0, 12.0])
    profile = _profile(art)
    profile["verdict"] = _decide(profile)
    assert plots.draw(tmp_path, profile) == ["latency.png", "perplexity.png"]
    assert all((tmp_path / n).stat().st_size > 10_000 for n in ("latency.png", "perplexity.png"))
    groups = plots.latency_groups(profile)
    assert [p["where"] for p in groups[0]["pairs"]] == ["build host"]
    assert "search" in plots.heading(profile) and "target dev" in plots.heading(profile) and "Build CPU" in plots.heading(profile)


@pytest.mark.parametrize("method", ["search", "slimgpt"])
def test_plan_widths_are_the_pruned_checkpoints(tiny_models, tmp_path, method):
    """search and slimgpt recorded no kept widths (the plot showed 1.0): every plan now carries
    them, and they are the widths of the checkpoint surgery wrote."""
    import torch

    import edgeprune
    from edgeprune.io.checkpoint import load_config
    from edgeprune.methods import PruneRequest
    from edgeprune.models import get_adapter
    from edgeprune.run.pipeline import make_plan
    from edgeprune.plan import Plan
    from edgeprune.report.plan_plot import plan_widths, plot_plan

    d = tiny_models["llama"]
    windows = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(0))
    plan, _ = make_plan(d, method, PruneRequest(ratio=0.3, progress=False, search_evals=8), windows)
    out = edgeprune.save(edgeprune.apply_plan(edgeprune.load(d), plan), tmp_path / "p", tokenizer_from=d, plan=plan)
    real = [s.as_dict() for s in get_adapter(load_config(out)).layer_shapes()]
    dense = [s.as_dict() for s in get_adapter(load_config(d)).layer_shapes()]
    saved = Plan.load(out)
    rows = plan_widths(saved)  # the plan alone, as `inspect plan.json` sees it
    assert [r["kept"] for r in rows if not r["removed"]] == real and [r["dense"] for r in rows] == dense
    assert any(r["kept"] != r["dense"] for r in rows if not r["removed"])  # something was pruned, and shows
    drawn = plot_plan(saved, str(tmp_path / "plan.png"), kept_shapes=get_adapter(load_config(out)).layer_shapes())
    assert all(r["source"] == "checkpoint" for r in drawn if not r["removed"])
    assert (tmp_path / "plan.png").stat().st_size > 10_000


def test_target_quality_bar_is_validated(tmp_path):
    from edgeprune.run.targets import DEFAULT_MAX_PPL_RATIO, TargetError, load_target

    base = Path(load_target("cpu-x86").path).read_text()
    assert load_target("cpu-x86").max_ppl_ratio == DEFAULT_MAX_PPL_RATIO == 1.5
    t = tmp_path / "t.toml"
    t.write_text(base + "\n[quality]\nmax_ppl_ratio = 2.0\n")
    assert load_target(str(t)).max_ppl_ratio == 2.0
    for bad in ("0.9", '"x"', "nan"):
        t.write_text(base + f"\n[quality]\nmax_ppl_ratio = {bad}\n")
        with pytest.raises(TargetError, match="max_ppl_ratio"):
            load_target(str(t))
    t.write_text(base + "\n[quality]\nmax_ppl = 2.0\n")
    with pytest.raises(TargetError, match="unknown key 'quality.max_ppl'"):
        load_target(str(t))


def test_provenance_keeps_the_original_command_after_a_resume(stories, tmp_path):
    from edgeprune.run.build import _start
    from edgeprune.report.provenance import commands

    kw = dict(model=str(stories), target="cpu-x86", ratio=0.2, method="magnitude", calib="tinystories",
              out=str(tmp_path / "b"), force=False)
    opts = dict(data_dir=None, nsamples=4, seq_len=32, seed=0, device="cpu", search_evals=8, align=None, gguf_pre=None)
    b = _start(**kw, resume=False, opts={**opts, "command": "edgeprune build --ratio 0.2"})
    b.lock.release()
    b2 = _start(**kw, resume=True, opts={**opts, "command": "edgeprune build --ratio 0.2 --resume"})
    b2.lock.release()
    prov = commands(b2.state, "edgeprune build --ratio 0.2 --resume")
    assert prov["command"] == "edgeprune build --ratio 0.2"
    assert [r["command"] for r in prov["resumes"]] == ["edgeprune build --ratio 0.2 --resume"]
    assert prov["resumes"][0]["resumed"] is True and prov["resumes"][0]["time"]

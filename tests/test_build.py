"""`edgeprune build` end to end, targets validation, and `bench` without torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeprune.run.targets import TargetError, list_targets, load_target

pytest.importorskip("onnxruntime", reason="the 'onnx' extra is not installed")
pytest.importorskip("llama_cpp", reason="the 'gguf' extra is not installed")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
Q8 = r'\{ format = "gguf", dtype = "q8_0"[^}]*\}, '  # cpu-x86's q8_0 GGUF entry (a regex for _toml)


def cli(*args, check=True, env=ENV):
    p = subprocess.run([sys.executable, "-m", "edgeprune.cli.main", *map(str, args)], capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr[-3000:])
    return p


def test_builtin_targets_load():
    names = {t["name"] for t in list_targets()}
    assert {"jetson-orin-nano", "jetson-agx-orin", "laptop-rtx4060", "cpu-x86", "raspberry-pi-5"} <= names
    assert load_target("jetson").name == "jetson-orin-nano"
    assert load_target("laptop-gpu").name == "laptop-rtx4060"
    assert {f["format"] for f in load_target("cpu-x86").formats} == {"gguf", "onnx"}


def _toml(tmp_path, **over) -> Path:
    text = (Path(load_target("cpu-x86").path)).read_text()
    import re

    for k, v in over.items():
        assert re.search(k, text, flags=re.M), f"the cpu-x86 target no longer matches {k!r}: update this test"
        text = re.sub(k, v, text, flags=re.M)
    p = tmp_path / "t.toml"
    p.write_text(text)
    return p


def test_target_errors(tmp_path):
    with pytest.raises(TargetError, match="unknown target 'nope'.*cpu-x86"):
        load_target("nope")
    with pytest.raises(TargetError, match=r"t.toml: unknown key 'latency.contxt'"):
        load_target(str(_toml(tmp_path, **{"context = 128": "contxt = 128"})))
    with pytest.raises(TargetError, match="missing key 'pruning.align'"):
        load_target(str(_toml(tmp_path, **{r"^align = .*\n": ""})))


def test_budget_that_cannot_be_met(stories, tmp_path):
    t = _toml(tmp_path, **{"budget_bytes = 8_000_000_000": "budget_bytes = 1000", "speedup = 1.2": 'ratio = "auto"'})
    p = cli("build", "--model", stories, "--target", t, "--out", tmp_path / "b", "--calib", "tinystories", check=False)
    assert p.returncode == 2 and "budget" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_build_stories_complete_profile(stories, tmp_path):
    t = _toml(tmp_path, **{Q8: ""})  # f32 GGUF + f32 ONNX keeps CI short
    out = tmp_path / "build"
    cli("build", "--model", stories, "--target", t, "--ratio", "0.2", "--out", out, "--calib", "tinystories", "--threads", "2")
    prof = json.loads((out / "profile.json").read_text())
    for key in ("schema_version", "target", "prune", "checkpoint", "artifacts", "device_estimate", "provenance"):
        assert key in prof
    for key in ("method", "ratio_requested", "params_dense", "params_pruned", "peak_memory_bytes", "wall_seconds"):
        assert key in prof["prune"]
    assert {a["format"] for a in prof["artifacts"]} == {"gguf", "onnx"}
    for a in prof["artifacts"]:
        assert a["verify"]["passed"] and (out / a["path"]).exists()
        assert set(a["perplexity"]) >= {"dense", "pruned", "protocol"}
        for which in ("dense", "pruned"):
            assert {"decode_ms_per_token_min", "decode_ms_per_token_median", "prefill_tokens_per_s_max"} <= set(a["latency"][which])
        assert set(a["speedup"]) >= {"decode_measured", "decode_ideal", "passed", "status", "decode_interval"}
        assert a["speedup"]["status"] in ("pass", "miss", "inconclusive")
        lo, hi = a["speedup"]["decode_interval"]
        assert lo <= a["speedup"]["decode_measured"] <= hi
        if a["speedup"]["status"] == "pass":  # never an implausible pass
            assert 0.9 * a["speedup"]["decode_ideal"] <= lo
            assert a["speedup"]["decode_measured"] <= 1.5 * a["speedup"]["decode_ideal"]
    prov = prof["provenance"]
    assert prov["seed"] == 0 and len(prov["calibration"]["sha256"]) == 64 and prov["min_runtime_versions"]
    report = (out / "report.md").read_text()
    assert report.startswith("# edgeprune build report") and report.splitlines()[2].startswith("- **")
    v = prof["verdict"]
    assert v["decided_by"] == "build" and len(v["artifacts"]) == len(prof["artifacts"])
    assert all(r["decision"] in ("GO", "NO-GO", "UNCERTAIN") and r["fit"]["kv_cache_bytes"] > 0 for r in v["artifacts"])
    assert all(len(a["samples"]) == 3 and all(s["dense"] is not None for s in a["samples"]) for a in prof["artifacts"])
    assert all(a["perplexity"]["ratio_interval"][0] <= a["perplexity"]["ratio"] <= a["perplexity"]["ratio_interval"][1]
               for a in prof["artifacts"])
    assert prof["plots"] == ["plan.png", "latency.png", "perplexity.png"] and prov["resumes"] == []
    assert all((out / n).is_file() for n in prof["plots"]) and not (out / ".edgeprune-incomplete").exists()
    # a finished build is not overwritten silently
    p = cli("build", "--model", stories, "--target", t, "--ratio", "0.2", "--out", out, "--calib", "tinystories", check=False)
    assert p.returncode == 2 and "--force" in p.stderr

    # bench with torch and transformers unimportable: appends measured_on_device
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nclass B:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers'):\n            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, B())\n")
    env = {**ENV, "PYTHONPATH": f"{blocker}{os.pathsep}{ENV.get('PYTHONPATH', '')}"}
    gguf = next(out / a["path"] for a in prof["artifacts"] if a["format"] == "gguf")
    p = cli("bench", gguf, "--json", "--reps", "2", "--new-tokens", "4", env=env)
    lat = json.loads(p.stdout)["latency"]
    assert lat["decode_ms_per_token_min"] > 0 and lat["prefill_tokens_per_s_max"] > 0
    cli("bench", out, "--reps", "1", "--new-tokens", "4", env=env)
    prof2 = json.loads((out / "profile.json").read_text())
    assert len(prof2["measured_on_device"]) == 1
    m = prof2["measured_on_device"][0]
    assert m["same_host_as_build"] is True  # bench ran where the build ran, and says so
    assert all("latency_dense" in a and a["speedup"]["status"] in ("pass", "miss", "inconclusive") for a in m["artifacts"])
    assert "the build host, not a separate device" in (out / "report.md").read_text()
    assert prof2["verdict"]["decided_by"].startswith("bench on ") and prof2["plots"] == prof["plots"]
    assert all(r["speed"]["source"] == "bench" for r in prof2["verdict"]["artifacts"])


def test_bench_bad_artifacts(tmp_path):
    (tmp_path / "trunc.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 20)
    p = cli("bench", tmp_path / "trunc.gguf", check=False)
    assert p.returncode == 2 and "llama.cpp could not load" in p.stderr
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    p = cli("bench", tmp_path / "x.onnx", check=False)
    assert p.returncode == 2 and "not a loadable ONNX model" in p.stderr
    (tmp_path / "x.bin").write_bytes(b"??")
    p = cli("bench", tmp_path / "x.bin", check=False)
    assert p.returncode == 2 and "neither" in p.stderr


def test_interrupted_build_dir_is_refused(stories, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / ".edgeprune-incomplete").write_text("")
    p = cli("build", "--model", stories, "--target", "cpu-x86", "--out", out, "--calib", "tinystories", check=False)
    assert p.returncode == 2 and "--resume" in p.stderr


@pytest.mark.slow
def test_demo_build_needs_nothing_but_the_checkout(tmp_path):
    """The README's first command: no --model, no ../shared (a short demo training run here)."""
    env = {**ENV, "EDGEPRUNE_DEMO_STEPS": "30", "EDGEPRUNE_CACHE": str(tmp_path / "cache"), "EDGEPRUNE_DATA": str(tmp_path / "none")}
    t = _toml(tmp_path, **{Q8: ""})
    out = tmp_path / "demo-build"
    cli("build", "--target", t, "--out", out, "--threads", "2", env=env)
    prof = json.loads((out / "profile.json").read_text())
    assert prof["provenance"]["base_model"]["name"].startswith("edgeprune embedded demo")
    assert all(a["verify"]["passed"] for a in prof["artifacts"])


@pytest.mark.slow
def test_interrupted_build_resumes(stories, tmp_path, monkeypatch):
    """Ctrl-C during export, then --resume: finished stages are reused, the rest completes."""
    import exporters

    from edgeprune.run.build import BuildError, build

    t = _toml(tmp_path, **{Q8: "", r'\{ format = "onnx", dtype = "f32" \}': ""})
    t.write_text(t.read_text().replace(', ]', ']').replace('}, ]', '}]'))
    real = exporters.export
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(exporters, "export", flaky)
    import edgeprune.measure.latency as latency

    free = iter([1] + [2] * 50)  # the cores free when the build starts, then a load change
    monkeypatch.setattr(latency, "free_cores", lambda *a, **k: next(free))
    out = tmp_path / "b"
    kw = dict(model=str(stories), target=str(t), ratio=0.2, calib="tinystories", out=str(out))
    with pytest.raises(KeyboardInterrupt):
        build(**kw)
    assert (out / ".edgeprune-incomplete").exists() and not (out / "profile.json").exists()
    from edgeprune.errors import OutputError

    with pytest.raises(OutputError, match="--resume"):
        build(**kw)
    with pytest.raises(OutputError, match="other arguments .*ratio: was 0.2, now 0.3"):
        build(**{**kw, "ratio": 0.3}, resume=True)
    res = build(**kw, resume=True)
    assert not (out / ".edgeprune-incomplete").exists()
    assert all(a["verify"]["passed"] for a in res["profile"]["artifacts"])
    assert calls["n"] == 3  # the first export was reused, not redone
    # one runtime thread count per build, decided when it started and kept across the resume
    assert json.loads((out / "build_state.json").read_text())["runtime_threads"] == 1
    assert {a["latency"]["pruned"]["protocol"]["threads"] for a in res["profile"]["artifacts"]} == {1}


def test_an_auto_ratio_is_sized_at_the_dtype_the_dense_widths_leave():
    """A target's q4_k that the dense widths make fall back to q8_0 (`_check_dtypes`) weighs
    q8_0's bytes: the auto ratio is chosen for that artifact, as `--dry-run` reports it."""
    from types import SimpleNamespace

    from edgeprune.models import get_adapter
    from edgeprune.report import profile as prof
    from edgeprune.run.build_start import choose_ratio
    from edgeprune.io.synthetic import config_for

    ad = get_adapter(SimpleNamespace(**config_for("llama-3.2-1b", 4)))
    non_emb, emb = prof.sizes(ad)
    fmt = {"format": "gguf", "dtype": "q4_k"}
    q8 = prof.bytes_per_weight("q8_0")
    kv = prof.kv_cache_bytes(ad, 512, "gguf", "q8_0")
    budget = (emb + 0.75 * non_emb) * q8 + kv  # q8_0 needs a cut of 25%: the ladder's 0.25; q4_k fits dense
    tgt = SimpleNamespace(ratio="auto", formats=[fmt], context=512, budget_bytes=budget, name="t")
    same = {"gguf-q4_k": {"chosen": "q4_k"}}
    fell = {"gguf-q4_k": {"chosen": "q8_0"}}
    assert choose_ratio(tgt, ad, None, same)[0] == 0.1 and "already fits" in choose_ratio(tgt, ad, None, same)[1]
    assert choose_ratio(tgt, ad, None, fell)[0] == 0.25
    assert choose_ratio(tgt, ad, 0.4, fell) == (0.4, "from --ratio")

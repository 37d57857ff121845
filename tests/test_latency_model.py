"""The latency model: the fit, its held-out error, the cache, the device table, one real probe.

No test here reads a speed: timings are synthetic (made from known coefficients) except in
the one real measurement, which checks structure only."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import transformers

from edgeprune.measure import latency_model as lmod
from edgeprune.measure.latency_fit import TERMS, design_row, fit
from edgeprune.measure.latency_probe import design
from edgeprune.models import LayerShape, get_adapter

WIDTHS = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=False)
TRUE = {"fixed": 0.3, "layer": 0.05, "weights": 0.2, "fallback": 0.5, "kv": 0.4, "heads": 0.01}


def adapter(**over):
    return get_adapter(transformers.LlamaConfig(**{**WIDTHS, **over}))


def empty_model(fmt="gguf", dtype="q8_0", context=64, **over) -> lmod.LatencyModel:
    ad = adapter(**over)
    key = {"fmt": fmt, "dtype": dtype, "widths": lmod.widths_of(ad), "context": context}
    return lmod.LatencyModel(lmod.runtime_of(fmt), fmt, dtype, context, 2, key, "host", float("nan"))


def synthetic_timings(lm, noise: float = 0.0, seed: int = 0):
    """The probe design timed by a known linear model (optionally with multiplicative noise)."""
    rng = np.random.default_rng(seed)
    dense = LayerShape(128, 4, 2)
    out = []
    for p in design(dense, 4, 32, 1.0, few=False):
        fs = [lm._feats(s.num_heads, s.num_kv_heads, s.intermediate_size) for s in p.shapes]
        ms = float(design_row(fs, TERMS) @ np.array([TRUE["fixed"], *(TRUE[t] for t in TERMS)]))
        out.append((p.name, p.shapes, ms * (1 + noise * rng.standard_normal()), p.held_out))
    return out


def test_fit_recovers_known_coefficients():
    lm = empty_model()
    lmod.fit_model(lm, synthetic_timings(lm))
    for term, want in TRUE.items():
        assert lm.coefficients[term] == pytest.approx(want, rel=1e-4, abs=1e-6), term
    assert lm.relative_error < 1e-6
    shapes = [LayerShape(96, 2, 1), None, LayerShape(128, 4, 2)]
    assert lm.model_ms(shapes) == pytest.approx(lm.fixed_ms() + lm.layer_ms(2, 1, 96) + lm.layer_ms(4, 2, 128))


def test_held_out_error_is_on_shapes_not_fitted():
    lm = empty_model()
    timed = synthetic_timings(lm)
    names = {n for n, *_ in timed}
    # corrupt only the held-out timings: the fit is unchanged, the reported error shows it
    bad = [(n, s, ms * (1.3 if held else 1.0), held) for n, s, ms, held in timed]
    lmod.fit_model(lm, bad)
    assert lm.coefficients["layer"] == pytest.approx(TRUE["layer"], rel=1e-4)
    assert lm.relative_error == pytest.approx(1 - 1 / 1.3, rel=1e-6)
    fitted = {r["name"] for r in lm.fitted}
    held = {r["name"] for r in lm.held_out}
    assert held and fitted and not fitted & held and fitted | held == names
    fitted_shapes = {tuple(map(json.dumps, r["shapes"])) for r in lm.fitted}
    assert all(tuple(map(json.dumps, r["shapes"])) not in fitted_shapes for r in lm.held_out)


def test_unaligned_widths_cost_their_fallback():
    lm = empty_model()
    lmod.fit_model(lm, synthetic_timings(lm))
    aligned, unaligned = lm._feats(4, 2, 96), lm._feats(4, 2, 100)
    assert aligned["fallback"] == 0 and unaligned["fallback"] > 0  # down_proj rows of 100 miss q8_0's 32
    assert lm.layer_ms(4, 2, 100) > lm.layer_ms(4, 2, 96)
    f32 = empty_model(dtype="f32")
    assert f32._feats(4, 2, 100)["fallback"] == 0


def test_fit_is_nonnegative_under_noise():
    lm = empty_model()
    lmod.fit_model(lm, synthetic_timings(lm, noise=0.05, seed=3))
    assert all(v >= 0 for v in lm.coefficients.values())
    assert np.isfinite(lm.relative_error)


def fake_measure(calls):
    def measure(adapter, fmt, dtype, context, threads, key, progress=None):
        calls.append(key)
        lm = lmod.LatencyModel(lmod.runtime_of(fmt), fmt, dtype, context, threads, key, "host", 0.05)
        lmod.fit_model(lm, synthetic_timings(lm))
        return lm
    return measure


def test_cache_key_hit_and_corrupt_file(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(lmod, "measure_model", fake_measure(calls))
    ad = adapter()
    a = lmod.latency_model(ad, "gguf", "q8_0", 64, 2, cache_dir=tmp_path)
    b = lmod.latency_model(ad, "gguf", "q8_0", 64, 2, cache_dir=tmp_path)
    assert len(calls) == 1 and a.coefficients == b.coefficients  # the hit did not measure
    lmod.latency_model(ad, "gguf", "q8_0", 128, 2, cache_dir=tmp_path)  # context is in the key
    lmod.latency_model(ad, "gguf", "q8_0", 64, 1, cache_dir=tmp_path)  # threads too
    lmod.latency_model(adapter(hidden_size=96), "gguf", "q8_0", 64, 2, cache_dir=tmp_path)  # widths too
    lmod.latency_model(ad, "gguf", "f32", 64, 2, cache_dir=tmp_path)  # and the dtype
    assert len(calls) == 5
    key = calls[0]
    assert {"runtime", "runtime_version", "dtype", "widths", "context", "threads", "host"} <= set(key)
    path = lmod.cache_path(tmp_path, key)
    path.write_text("{not json")
    c = lmod.latency_model(ad, "gguf", "q8_0", 64, 2, cache_dir=tmp_path)
    assert len(calls) == 6 and "corrupt latency cache" in capsys.readouterr().err
    assert json.loads(path.read_text())["coefficients"] == c.coefficients  # re-measured and rewritten


def test_table_round_trip_and_mismatch_refusal(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(lmod, "measure_model", fake_measure(calls))
    ad = adapter()
    models = [lmod.latency_model(ad, "gguf", d, 64, 2, cache_dir=tmp_path) for d in ("f32", "q8_0")]
    table = tmp_path / "device.json"
    lmod.write_table(table, models)
    back = lmod.latency_model(ad, "gguf", "q8_0", 64, 2, table=table)
    assert back.source == "table" and back.coefficients == models[1].coefficients
    shapes = [LayerShape(96, 2, 1)] * 3
    assert back.model_ms(shapes) == pytest.approx(models[1].model_ms(shapes))
    for bad in (dict(ad=adapter(hidden_size=96)), dict(dtype="f16"), dict(context=128), dict(fmt="onnx", dtype="f32")):
        kw = {"ad": ad, "fmt": "gguf", "dtype": "q8_0", "context": 64, **bad}
        with pytest.raises(lmod.LatencyTableError) as e:
            lmod.latency_model(kw["ad"], kw["fmt"], kw["dtype"], kw["context"], 2, table=table)
        assert "\n" not in str(e.value) and "--latency-table" in str(e.value)
    table.write_text("[1, 2")
    with pytest.raises(lmod.LatencyTableError, match="not valid JSON"):
        lmod.latency_model(ad, "gguf", "q8_0", 64, 2, table=table)


def test_ort_design_is_shallow_with_a_full_depth_check():
    """ORT probes (slow to export) time the whole design on 2 layers, plus two at full depth:
    the dense model, fitted (it anchors the slope the plans extrapolate), and a mixed plan,
    held out, so the reported error is the one at the plans' depth."""
    from edgeprune.measure.latency_probe import design

    dense = LayerShape(128, 4, 2)
    probes = design(dense, 6, 1, 1.0, few=False, shallow=True)
    fitted = [p for p in probes if not p.held_out]
    deep = [p for p in probes if len(p.shapes) > 2]
    assert len(fitted) >= 7 and [(len(p.shapes), p.held_out) for p in deep] == [(6, False), (6, True)]
    assert deep[0].shapes == [dense] * 6 and len(set(deep[1].shapes)) > 1
    assert len({tuple(p.shapes) for p in probes}) == len(probes)  # no configuration timed twice
    lm = empty_model("onnx", "f32", num_hidden_layers=6)
    timed = [(p.name, p.shapes, lm_true(lm, p.shapes), p.held_out) for p in probes]
    lmod.fit_model(lm, timed)
    assert lm.relative_error < 1e-6  # a model the terms describe is recovered from the shallow probes


def lm_true(lm, shapes) -> float:
    fs = [lm._feats(s.num_heads, s.num_kv_heads, s.intermediate_size) for s in shapes]
    return float(design_row(fs, TERMS) @ np.array([TRUE["fixed"], *(TRUE[t] for t in TERMS)]))


def test_unsupported_dtype_refused_before_work(tmp_path):
    with pytest.raises(lmod.LatencyTableError, match="no latency model for onnx q8_0"):
        lmod.latency_model(adapter(), "onnx", "q8_0", 64, 2, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_every_exported_dtype_has_a_latency_model():
    """k-quants and int4 are probed at their own dtype (no --ratio-only refusal left)."""
    from exporters.formats import get, names

    for fmt in names():
        for name in get(fmt).dtypes:
            lmod.check_request(fmt, name)


@pytest.mark.slow  # two quantiser runs; ~15 s each on the shared VM
@pytest.mark.parametrize("dtype", ["q4_k_m", "q6_k"])
def test_kquant_probe_is_written_by_llamas_quantizer(tmp_path, dtype):
    """A k-quant probe is llama.cpp's own mix (its file type), as the export writes it."""
    pytest.importorskip("llama_cpp")
    import gguf

    from edgeprune.measure.latency_probe import write_probe
    from exporters.dtypes import get
    from edgeprune.models import LayerShape

    ad = adapter(num_hidden_layers=2, intermediate_size=256)
    path = write_probe(ad, "gguf", dtype, [LayerShape(256, 4, 2), LayerShape(128, 2, 1)], tmp_path / "p", 128)
    r = gguf.GGUFReader(str(path))
    ftype = int(r.fields["general.file_type"].parts[-1][0])
    assert ftype == get(dtype).llama_ftype


@pytest.mark.slow  # ~45 s on the shared 2-core VM: it writes and times 12 llama.cpp probes
def test_real_measurement_structure(tmp_path):
    """One small real build in llama.cpp: structure only, no speed figures."""
    pytest.importorskip("llama_cpp")
    ad = adapter(num_hidden_layers=2, intermediate_size=64)
    seen = []
    lm = lmod.latency_model(ad, "gguf", "f32", 32, 1, cache_dir=tmp_path, progress=seen.append)
    assert lm.source == "host" and lm.runtime == "llama.cpp" and lm.fitted and lm.held_out
    assert seen and all(r["measured_ms"] > 0 for r in lm.fitted + lm.held_out)
    assert np.isfinite(lm.relative_error) and lm.fixed_ms() >= 0 and lm.layer_ms(4, 2, 64) >= 0
    assert lm.model_ms([None, None]) == pytest.approx(lm.fixed_ms())
    assert lmod.LatencyModel.from_json(json.loads(json.dumps(lm.to_json()))) == lm
    assert len(list(tmp_path.glob("gguf-f32-*.json"))) == 1


def test_bench_latency_table_refuses_bad_inputs_before_work(tmp_path, monkeypatch, capsys):
    from edgeprune.cli.main import main

    def no_measure(*a, **k):
        raise AssertionError("measured before the inputs were checked")

    monkeypatch.setattr(lmod, "measure_model", no_measure)
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({**WIDTHS, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    cases = [(["--latency-table", str(tmp_path / "no" / "t.json"), "--model", str(model), "--target", "cpu-x86"], "existing folder"),
             (["--latency-table", str(tmp_path / "t.json"), "--model", str(model)], "needs --target"),
             (["--latency-table", str(tmp_path / "t.json"), "--model", str(tmp_path), "--target", "cpu-x86"], "no config.json"),
             (["--latency-table", str(tmp_path / "t.json"), "--target", "cpu-x86"], "needs the model"),
             ([], "bench needs a path")]
    for args, why in cases:
        assert main(["bench", *args]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1 and err.startswith("edgeprune: error:")
    assert not (tmp_path / "t.json").exists()


@pytest.mark.slow  # one ONNX export (~20-60 s on the shared VM)
def test_int4_probe_is_matmulnbits_and_times_in_ort(tmp_path):
    """An ONNX int4 probe is quantised as the export quantises it (MatMulNBits) and runs in ORT GenAI."""
    pytest.importorskip("onnxruntime_genai")
    import onnx

    from edgeprune.measure.latency_probe import time_probes, write_probe

    ad = adapter(num_hidden_layers=2)
    p = write_probe(ad, "onnx", "int4", [LayerShape(128, 4, 2), LayerShape(64, 2, 1)], tmp_path / "p0", 128)
    m = onnx.load(str(p / "model.onnx"))
    assert any(n.op_type == "MatMulNBits" for n in m.graph.node)
    ms = time_probes({"a": p}, "a", 32, 8, 2, 1, ad.vocab_size)["a"]
    assert ms > 0

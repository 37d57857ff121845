"""The dtype fits the model: the build's choice from widths before exporting, the target's
fallback list, and a verdict that never calls a bigger pruned artifact faster."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from edgeprune.measure import dtype_fit
from edgeprune.models import LayerShape
from edgeprune.report.markdown import speed_words
from edgeprune.measure.speedup import verdict
from edgeprune.run.targets import TargetError, load_target


def _model(hidden: int, ffn: list[int], heads: int = 8, kv: int = 4, head_dim: int | None = None, vocab: int = 512):
    """What dtype_fit reads of an adapter: the widths."""
    hd = head_dim or hidden // heads
    return SimpleNamespace(hidden_size=hidden, head_dim=hd, vocab_size=vocab,
                           layer_shapes=lambda: [LayerShape(f, heads, kv) for f in ffn])


def test_a_k_quant_on_a_narrow_model_takes_the_next_dtype():
    """stories260K's widths (hidden 64): q4_k_m's rows of 256 fit none of its weights."""
    dense, pruned = _model(64, [172] * 5, head_dim=8), _model(64, [128] * 5, head_dim=8)
    dtype, tried = dtype_fit.choose({"format": "gguf", "dtype": "q4_k_m", "fallback": ["q8_0", "f16"]}, dense, pruned)
    assert dtype == "q8_0"
    assert tried[0].fallbacks == tried[0].tensors == 36 and "36 of 36 linear weights would fall back" in tried[0].reasons[0]
    assert tried[1].reasons == [] and tried[1].fallbacks == 0 and tried[1].ideal > 1


def test_pruned_widths_off_the_block_make_the_pruned_file_bigger():
    """The dense widths fit q4_k_m; the pruned FFN of 500 is off every block, so down_proj goes
    to F16 and the pruned weights outweigh the dense ones: q4_k_m and q8_0 are refused, f16 fits."""
    dense, pruned = _model(256, [512] * 4), _model(256, [500] * 4)
    assert dtype_fit.assess("q4_k_m", dense, dense, rules=("fallback",)).reasons == []
    dtype, tried = dtype_fit.choose({"format": "gguf", "dtype": "q4_k_m", "fallback": ["q8_0", "f16"]}, dense, pruned)
    assert dtype == "f16"
    for t in tried[:2]:
        assert t.fallbacks == 4 and t.ideal < 1 and "would not be smaller" in t.reasons[0]
    assert tried[2].ideal > 1


def test_no_dtype_that_fits_is_refused_with_the_fix():
    dense, pruned = _model(64, [172] * 5, head_dim=8), _model(64, [128] * 5, head_dim=8)
    with pytest.raises(dtype_fit.DTypeError, match=r"gguf q4_k_m does not fit this model \(q4_k_m: 36 of 36 .*\); add a "
                       r"wider dtype to this format's fallback list.*or use --align 256"):
        dtype_fit.decide([{"format": "gguf", "dtype": "q4_k_m"}], dense, pruned, 32, print)


def test_decide_says_why_it_changed_the_dtype():
    said = []
    dense, pruned = _model(64, [172] * 5, head_dim=8), _model(64, [128] * 5, head_dim=8)
    got = dtype_fit.decide([{"format": "gguf", "dtype": "q4_k_m", "fallback": ["q8_0"]}, {"format": "onnx", "dtype": "f16"}],
                           dense, pruned, 256, said.append)
    assert got["gguf-q4_k_m"]["chosen"] == "q8_0" and "fall back" in got["gguf-q4_k_m"]["why"]
    assert got["onnx-f16"] == {**got["onnx-f16"], "chosen": "f16", "why": None}
    assert len(said) == 1 and said[0].startswith("WARNING: gguf q4_k_m does not fit") and "using q8_0" in said[0]


def test_every_shipped_target_fits_a_real_width_model():
    """Llama-3.2-1B's widths pruned at each target's align: the target's own dtype is kept."""
    from edgeprune.run.targets import list_targets

    dense = _model(2048, [8192] * 4, heads=32, kv=8, head_dim=64)
    for t in list_targets():
        tgt = load_target(t["path"])
        pruned = _model(2048, [8192 - 8 * tgt.align] * 4, heads=32, kv=8, head_dim=64)
        for f in tgt.formats:
            assert dtype_fit.choose(f, dense, pruned)[0] == f["dtype"], (tgt.name, f)


def test_target_fallback_lists_are_validated(tmp_path):
    text = load_target("jetson").path.read_text()
    assert 'fallback = ["q8_0", "f16"]' in text
    p = tmp_path / "t.toml"
    p.write_text(text.replace('fallback = ["q8_0", "f16"]', 'fallback = ["q9_0"]'))
    with pytest.raises(TargetError, match="dtype 'q9_0' is not a gguf dtype"):
        load_target(str(p))
    p.write_text(text.replace('fallback = ["q8_0", "f16"]', 'fallback = "q8_0"'))
    with pytest.raises(TargetError, match="fallback must be a list"):
        load_target(str(p))
    p.write_text(text.replace('fallback = ["q8_0", "f16"]', 'fallbak = ["q8_0"]'))
    with pytest.raises(TargetError, match="may have fallback"):
        load_target(str(p))


def test_a_narrow_model_on_a_k_quant_target_without_fallback_is_refused_first(tiny_models, tmp_path):
    from edgeprune.run.build import BuildError, build

    text = load_target("jetson").path.read_text().replace(', fallback = ["q8_0", "f16"]', "")
    t = tmp_path / "t.toml"
    t.write_text(text)
    with pytest.raises(BuildError, match="gguf q4_k_m does not fit this model"):
        build(model=str(tiny_models["llama"]), target=str(t), calib="tinystories", out=str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()


def _sp(measured, lo, hi, ideal):
    status, reason = verdict(measured, lo, hi, ideal)
    return {"decode_measured": measured, "decode_interval": [lo, hi], "decode_ideal": ideal, "status": status, "reason": reason}


def test_a_pruned_artifact_bigger_than_dense_is_never_faster():
    """The issue's numbers: 677,824 B pruned against 647,872 B dense, ideal 0.95x, decode measured 1.12x."""
    sp = _sp(1.12, 1.0, 1.2, 0.95)
    assert sp["status"] == "miss" and "below 1" in sp["reason"]
    words = speed_words(sp)
    assert "NOT faster" in words and " faster (" not in words and "ideal 0.95x" in words
    from edgeprune.report.verdict import NO_GO, decide, verdict_lines

    art = {"format": "gguf", "dtype": "q4_k_m", "bytes": 677_824, "reference_dense": {"bytes": 647_872}, "speedup": sp,
           "perplexity": {"dense": 10.0, "pruned": 11.0, "ratio": 1.1}}
    profile = {"provenance": {"host": {"cpu": "x"}}, "artifacts": [art],
               "target": {"name": "t", "memory": {"budget_bytes": 10**9}, "latency": {"context": 128}}}
    v = decide(profile, {"gguf q4_k_m": 1000})
    assert v["artifacts"][0]["decision"] == NO_GO and v["artifacts"][0]["reasons"][0].startswith("not faster")
    assert "x faster" not in "\n".join(verdict_lines({**profile, "verdict": v}))
    assert "1.30x faster" in speed_words(_sp(1.3, 1.25, 1.35, 1.4))
    assert "faster" not in speed_words(_sp(0.9, 0.85, 0.95, 1.4)).replace("not faster", "")

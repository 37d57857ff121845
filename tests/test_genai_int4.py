"""ONNX Runtime GenAI packages and int4 (MatMulNBits) ONNX, verified in their runtimes."""
from __future__ import annotations

import json

import pytest

import edgeprune
from edgeprune.plan import LayerPlan, Plan

pytest.importorskip("onnxruntime", reason="the 'onnx' extra is not installed")
from exporters import export  # noqa: E402
from exporters.dtypes import failure_hint  # noqa: E402
from exporters.genai import CONFIG, GenAISession, genai_config, version_ok  # noqa: E402
from exporters.onnx_int4 import choose_block  # noqa: E402


def _nonuniform(tiny_models, family, tmp_path):
    """Layers keep different KV groups and FFN widths (what GenAI's builder cannot write)."""
    m = edgeprune.load(tiny_models[family])
    plan = Plan("t", family, 4)
    plan.layers[0] = LayerPlan(kv_keep=[1, 3], ffn_keep=list(range(50)))
    plan.layers[2] = LayerPlan(kv_keep=[0], ffn_keep=list(range(70)))
    edgeprune.apply_plan(m, plan)
    return edgeprune.save(m, tmp_path / f"{family}-pruned", tokenizer_from=tiny_models[family])


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_genai_greedy_tokens_on_nonuniform_models(tiny_models, tmp_path, family):
    og = pytest.importorskip("onnxruntime_genai", reason="the 'genai' extra is not installed")
    d = _nonuniform(tiny_models, family, tmp_path)
    res = export(d, "onnx", tmp_path / "onnx")
    g = res["verify"]["genai"]
    assert g["runtime"] == f"onnxruntime-genai {og.__version__}"
    assert g["greedy_tokens_match"] and res["verify"]["passed"]
    cfg = json.loads((tmp_path / "onnx" / CONFIG).read_text())
    assert cfg["model"]["type"] == family and cfg["model"]["decoder"]["num_hidden_layers"] == 4
    assert cfg["search"]["past_present_share_buffer"] is False
    # the same folder still runs in plain onnxruntime, with per-layer KV heads
    from exporters.runtimes import OnnxSession

    assert [i.shape[1] for i in OnnxSession(tmp_path / "onnx").past_inputs[::2]] == [2, 4, 1, 4]


def test_genai_folder_holds_tokenizer(stories, tmp_path):
    pytest.importorskip("onnxruntime_genai", reason="the 'genai' extra is not installed")
    import onnxruntime_genai as og

    res = export(stories, "onnx", tmp_path / "onnx")
    assert "tokenizer.json" in res["genai_files"]
    tok = og.Tokenizer(og.Model(str(tmp_path / "onnx")))
    assert len(tok.encode("Once upon a time")) > 0


def test_genai_missing_or_old_is_said(tiny_models, tmp_path, monkeypatch):
    og = pytest.importorskip("onnxruntime_genai", reason="the 'genai' extra is not installed")
    assert version_ok("0.18.0") and version_ok("0.19.0rc1") and not version_ok("0.17.2")
    export(tiny_models["llama"], "onnx", tmp_path / "onnx")
    monkeypatch.setattr(og, "__version__", "0.17.0")
    with pytest.raises(Exception, match="0.18.0 is needed.*per-layer|PR #2214"):
        GenAISession(tmp_path / "onnx")
    res = export(tiny_models["llama"], "onnx", tmp_path / "onnx2")
    assert "too old" in res["verify"]["genai"]["skipped"] and res["verify"]["passed"]


def test_genai_config_ids(tiny_models):
    from exporters.source import WeightsView

    cfg = genai_config(WeightsView.from_dir(tiny_models["qwen2"]))
    m = cfg["model"]
    assert m["context_length"] == 256 and m["vocab_size"] == 512 and m["decoder"]["head_size"] == 8
    assert m["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"


def test_int4_onnx_on_nonuniform_model(tiny_models, tmp_path):
    import onnx

    d = _nonuniform(tiny_models, "llama", tmp_path)
    res = export(d, "onnx", tmp_path / "int4", dtype="int4")
    v = res["verify"]
    assert v["passed"] and v["perplexity"]["relative_delta"] <= 0.15 and v["all_finite"]
    info = res["int4"]
    assert info["quantized_matmuls"] == 4 * 7 and len(info["float_matmuls"]) == 1  # lm_head stays float
    m = onnx.load(str(tmp_path / "int4" / "model.onnx"))
    assert sum(n.op_type == "MatMulNBits" for n in m.graph.node) == 28
    f32 = export(d, "onnx", tmp_path / "f32")
    linear = sum(n.numel() for k, n in edgeprune.load(d).state_dict().items()
                 if k.endswith("proj.weight"))  # the 28 quantised matrices
    assert f32["bytes"] - res["bytes"] >= 0.8 * 4 * linear  # 4 bytes -> ~5/8 byte per weight
    if "skipped" not in v.get("genai", {"skipped": 1}):
        assert v["genai"]["greedy_tokens_match"]


def test_int4_block_follows_widths():
    assert choose_block([64, 96, 2048]) == 32
    assert choose_block([48, 80]) == 16
    assert choose_block([50, 64]) == 32  # padded by the quantizer
    assert failure_hint("int4").startswith("4-bit") and failure_hint("q8_0") == ""


def test_genai_config_leaves_out_unknown_ids(tiny_models):
    """A model without BOS/EOS ids (a bare Qwen2 config) must not get nulls: GenAI refuses them."""
    from exporters.source import WeightsView

    view = WeightsView.from_dir(tiny_models["qwen2"])
    view.config.bos_token_id = view.config.eos_token_id = None
    m = genai_config(view)["model"]
    assert None not in m.values() and "bos_token_id" not in m and m["pad_token_id"] == 0

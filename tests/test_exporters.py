"""ONNX and GGUF exports of dense and non-uniformly pruned models, verified in their runtimes.

One export per format and architecture; the per-method export matrix is in benchmarks/."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune.errors import ExportError, OutputError
from edgeprune.plan import LayerPlan, Plan

onnxruntime = pytest.importorskip("onnxruntime", reason="the 'onnx' extra is not installed")
llama_cpp = pytest.importorskip("llama_cpp", reason="the 'gguf' extra (llama-cpp-python) is not installed")
from exporters import export  # noqa: E402
from exporters.runtimes import GGUFSession, OnnxSession  # noqa: E402


@pytest.fixture(scope="module")
def pruned_stories(stories, tmp_path_factory):
    """stories260K with one layer removed and different FFN widths and KV groups per layer."""
    m = edgeprune.load(stories)
    plan = Plan("test", "llama", 5, removed_layers=[3])
    plan.layers[1] = LayerPlan(ffn_keep=list(range(0, 172, 2)), kv_keep=[0, 2, 3], heads_keep=[0, 1, 4, 5, 6, 7])
    plan.layers[2] = LayerPlan(ffn_keep=list(range(100)))
    edgeprune.apply_plan(m, plan)
    return edgeprune.save(m, tmp_path_factory.mktemp("p") / "pruned", tokenizer_from=stories, plan=plan)


def test_onnx_pruned_stories(pruned_stories, tmp_path):
    res = export(pruned_stories, "onnx", tmp_path / "onnx")
    rep = json.loads((tmp_path / "onnx" / "model.onnx.verify.json").read_text())
    assert rep["passed"] and rep["max_abs_logit_diff"] <= 1e-3 and rep["greedy_tokens_match"]
    assert res["path"].endswith("model.onnx")
    sess = OnnxSession(tmp_path / "onnx")
    heads = [i.shape[1] for i in sess.past_inputs[::2]]
    assert heads == [4, 3, 4, 4]


def test_gguf_pruned_stories_deci_and_q8(pruned_stories, tmp_path):
    import gguf

    res = export(pruned_stories, "gguf", tmp_path / "m.gguf")
    assert res["architecture"] == "deci" and res["verify"]["passed"] and res["verify"]["greedy_tokens_match"]
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    fields = {f.name: f.contents() for f in r.fields.values()}
    assert fields["deci.feed_forward_length"] == [172, 86, 100, 172]
    assert fields["deci.attention.head_count_kv"] == [4, 3, 4, 4]
    q8 = export(pruned_stories, "gguf", tmp_path / "q8.gguf", dtype="q8_0")
    assert q8["verify"]["passed"] and q8["verify"]["perplexity"]["relative_delta"] <= 0.03
    assert any(f["used"] == "f16" for f in q8["fallbacks"])  # 172/86/100-wide rows don't fit 32-blocks
    assert (tmp_path / "q8.gguf.verify.json").is_file()


def test_added_output_biases_reach_both_runtimes(stories, tmp_path):
    """FLAP-style o_proj/down_proj biases (Llama has none) survive ONNX and GGUF (deci)."""
    import gguf

    m = edgeprune.load(stories)
    plan = Plan("test", "llama", 5)
    plan.layers[2] = LayerPlan(ffn_keep=list(range(120)))
    g = torch.Generator().manual_seed(0)
    for i in (1, 2):
        plan.tensors[f"L{i}.o.bias"] = torch.randn(64, generator=g)
        plan.tensors[f"L{i}.down.bias"] = torch.randn(64, generator=g)
    edgeprune.apply_plan(m, plan)
    d = edgeprune.save(m, tmp_path / "biased", tokenizer_from=stories, plan=plan)
    res = export(d, "gguf", tmp_path / "b.gguf")
    assert res["architecture"] == "deci" and res["verify"]["passed"]
    names = {t.name for t in gguf.GGUFReader(str(tmp_path / "b.gguf")).tensors}
    assert {"blk.1.attn_output.bias", "blk.2.ffn_down.bias"} <= names
    assert export(d, "onnx", tmp_path / "onnx")["verify"]["passed"]


def test_dense_gguf_matches_upstream_converter(stories, tmp_path):
    """Our GGUF of the HF conversion gives the same logits in llama.cpp as llama.cpp's own file."""
    from .conftest import SHARED

    export(stories, "gguf", tmp_path / "d.gguf")
    ids = [1, 403, 407, 261, 378, 432, 383, 261, 376, 298, 315]
    ours = GGUFSession(tmp_path / "d.gguf").logits(ids)
    upstream = GGUFSession(SHARED / "models/stories260K/stories260K.gguf").logits(ids)
    ref = edgeprune.load(stories)(torch.tensor([ids])).logits[0].detach().numpy()
    assert np.abs(ours - upstream).max() < 1e-4
    assert np.abs(ours - ref).max() < 1e-3


def test_qwen2_onnx_and_gguf(tiny_models, tmp_path):
    """Pruned Qwen2 keeps its q/k/v biases in ONNX and in GGUF: per-layer widths go to deci,
    uniformly fewer heads to llama (llama.cpp's qwen2 needs n_head * head_dim = n_embd); the
    q/k biases are permuted with their rows for llama's rotary layout."""
    m = edgeprune.load(tiny_models["qwen2"])
    plan = Plan("t", "qwen2", 4)
    plan.layers[0] = LayerPlan(kv_keep=[1, 3], ffn_keep=list(range(50)))
    edgeprune.apply_plan(m, plan)
    assert m.model.layers[0].self_attn.q_proj.bias.shape == (4 * 8,)
    assert m.model.layers[0].self_attn.k_proj.bias.shape == (2 * 8,)
    d = edgeprune.save(m, tmp_path / "q", tokenizer_from=tiny_models["qwen2"])
    assert export(d, "onnx", tmp_path / "onnx")["verify"]["passed"]
    res = export(d, "gguf", tmp_path / "q.gguf")
    assert res["architecture"] == "deci" and res["verify"]["passed"]
    m = edgeprune.load(tiny_models["qwen2"])
    plan = Plan("t", "qwen2", 4, layers={i: LayerPlan(kv_keep=[0, 2, 3]) for i in range(4)})
    d = edgeprune.save(edgeprune.apply_plan(m, plan), tmp_path / "u", tokenizer_from=tiny_models["qwen2"])
    res = export(d, "gguf", tmp_path / "u.gguf")
    assert res["architecture"] == "llama" and res["verify"]["passed"]
    assert export(tiny_models["qwen2"], "gguf", tmp_path / "dense.gguf")["architecture"] == "qwen2"


def test_nonuniform_qwen3_gguf_refused(tiny_models, tmp_path):
    m = edgeprune.load(tiny_models["qwen3"])
    plan = Plan("t", "qwen3", 4, layers={1: LayerPlan(ffn_keep=list(range(40)))})
    d = edgeprune.save(edgeprune.apply_plan(m, plan), tmp_path / "q3", tokenizer_from=tiny_models["qwen3"])
    with pytest.raises(ExportError, match="q_norm"):
        export(d, "gguf", tmp_path / "q3.gguf")
    assert not (tmp_path / "q3.gguf").exists()


def test_uniform_qwen3_gguf(tiny_models, tmp_path):
    res = export(tiny_models["qwen3"], "gguf", tmp_path / "q3.gguf")
    assert res["architecture"] == "qwen3" and res["verify"]["passed"]


def test_bad_export_requests(pruned_stories, tmp_path):
    with pytest.raises(ExportError, match="unknown format"):
        export(pruned_stories, "tflite", tmp_path / "x")
    with pytest.raises(ExportError, match="unknown gguf dtype"):
        export(pruned_stories, "gguf", tmp_path / "x.gguf", dtype="q3_xx")
    with pytest.raises(OutputError, match="does not exist"):
        export(pruned_stories, "gguf", tmp_path / "nope" / "x.gguf")
    (tmp_path / "x.gguf").write_bytes(b"junk")
    with pytest.raises(OutputError, match="not a GGUF file; edgeprune will not overwrite it"):
        export(pruned_stories, "gguf", tmp_path / "x.gguf", force=True)  # never someone else's file
    assert (tmp_path / "x.gguf").read_bytes() == b"junk"
    (tmp_path / "y.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(OutputError, match="--force"):
        export(pruned_stories, "gguf", tmp_path / "y.gguf")
    with pytest.raises(ExportError, match="not a GGUF"):
        GGUFSession(tmp_path / "x.gguf")
    assert list(tmp_path.glob(".*partial*")) == []


def test_missing_extra_is_named(monkeypatch, pruned_stories, tmp_path):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "onnxscript":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    import importlib

    monkeypatch.setattr(importlib, "import_module", lambda n, *a: fake(n))
    from edgeprune.errors import MissingExtraError

    with pytest.raises(MissingExtraError, match=r"edgeprune\[onnx\]"):
        export(pruned_stories, "onnx", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_query_heads_pruned_inside_kv_groups(tiny_models, tmp_path):
    """Fewer query heads per KV group in some layers (the same count in every group, so GQA
    stays valid): llama.cpp's deci reads n_head per layer apart from n_head_kv; ONNX and
    onnxruntime-genai take the per-layer shapes from the graph."""
    import gguf

    m = edgeprune.load(tiny_models["llama"])  # 8 query heads over 4 KV groups
    plan = Plan("t", "llama", 4)
    plan.layers[1] = LayerPlan(heads_keep=[0, 2, 4, 6])  # one query head left in each group
    plan.layers[2] = LayerPlan(kv_keep=[1, 3], heads_keep=[3, 7])
    d = edgeprune.save(edgeprune.apply_plan(m, plan), tmp_path / "qh", tokenizer_from=tiny_models["llama"], plan=plan)
    res = export(d, "gguf", tmp_path / "qh.gguf")
    assert res["architecture"] == "deci" and res["verify"]["passed"]
    fields = {f.name: f.contents() for f in gguf.GGUFReader(str(tmp_path / "qh.gguf")).fields.values()}
    assert fields["deci.attention.head_count"] == [8, 4, 2, 8] and fields["deci.attention.head_count_kv"] == [4, 4, 2, 4]
    assert export(d, "onnx", tmp_path / "onnx")["verify"]["passed"]

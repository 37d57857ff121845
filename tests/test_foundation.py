"""Load, plan, surgery, save/reload on every family; bad input is one clear line."""
from __future__ import annotations

import json

import pytest
import torch

import edgeprune
from edgeprune.errors import ModelError, OutputError, PlanError
from edgeprune.models import count_parameters, expected_nonembedding, get_adapter
from edgeprune.plan import LayerPlan, Plan, identity_plan

IDS = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))


def _nonuniform_plan(model) -> Plan:
    ad = get_adapter(model.config)
    s = ad.layer_shapes()[0]
    n_rep = s.num_heads // s.num_kv_heads
    plan = Plan("test", ad.family, ad.num_layers, removed_layers=[2])
    # layer 0: drop KV group 1 (whole group); layer 1: drop one query head from every group
    plan.layers[0] = LayerPlan(ffn_keep=list(range(0, s.intermediate_size, 2)), kv_keep=[0, 2, 3])
    plan.layers[1] = LayerPlan(ffn_keep=list(range(s.intermediate_size - 5)),
                               heads_keep=[g * n_rep for g in range(s.num_kv_heads)])
    return plan


def test_identity_plan_keeps_logits(tiny_models):
    for family, d in tiny_models.items():
        m = edgeprune.load(d)
        ref = m(IDS).logits
        edgeprune.apply_plan(m, identity_plan(get_adapter(m.config)))
        assert (m(IDS).logits - ref).abs().max() <= 1e-5, family


def test_stories_identity(stories):
    m = edgeprune.load(stories)
    ref = m(IDS).logits
    edgeprune.apply_plan(m, identity_plan(get_adapter(m.config)))
    assert (m(IDS).logits - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_nonuniform_surgery_save_reload(tiny_models, tmp_path, family):
    m = edgeprune.load(tiny_models[family])
    ad = get_adapter(m.config)
    plan = _nonuniform_plan(m)
    shapes = plan.result_shapes(ad)
    edgeprune.apply_plan(m, plan)
    assert m.config.num_hidden_layers == 3
    assert [ad.shape_of(layer) for layer in m.model.layers] == shapes
    assert count_parameters(m, ad)["non_embedding"] == expected_nonembedding(ad, shapes)
    if family == "qwen2":
        assert m.model.layers[0].self_attn.k_proj.bias.shape == (3 * 8,)
    out = m(IDS).logits
    assert torch.isfinite(out).all()
    # KV cache: incremental decoding gives the same logits as a full forward pass.
    full = m(IDS[:1]).logits[0, -1]
    past = m(IDS[:1, :-1], use_cache=True).past_key_values
    step = m(IDS[:1, -1:], cache=past, use_cache=True).logits[0, -1]
    assert (full - step).abs().max() < 1e-4
    gen = m.generate(IDS[:1, :4], max_new_tokens=5, do_sample=False)
    assert gen.shape == (1, 9)
    d = edgeprune.save(m, tmp_path / "pruned", tokenizer_from=tiny_models[family], plan=plan)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == m.config.model_type and cfg["edgeprune_layers"]  # the family's own type
    back = edgeprune.load(d)
    assert (back(IDS).logits - out).abs().max() <= 1e-6
    assert Plan.load(d).removed_layers == [2]


def test_plain_from_pretrained_never_silently_reinitialises(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    m = edgeprune.load(tiny_models["llama"])
    edgeprune.apply_plan(m, _nonuniform_plan(m))
    d = edgeprune.save(m, tmp_path / "p")
    # A fresh process that never imported edgeprune: the family's uniform model, every narrowed
    # weight mismatched -> loud failure.
    import subprocess
    import sys

    code = f"from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained({str(d)!r})"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert p.returncode != 0 and "mismatch" in (p.stderr + p.stdout).lower()
    # In this process too (edgeprune imported): plain loading still refuses, never re-initialises.
    with pytest.raises(Exception, match="(?i)mismatch"):
        AutoModelForCausalLM.from_pretrained(str(d))
    remote = AutoModelForCausalLM.from_pretrained(str(d), trust_remote_code=True)
    assert (remote(IDS).logits - m(IDS).logits).abs().max() <= 1e-6


LOAD_LIKE_A_USER = """
import logging, warnings, io
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging
buf = io.StringIO()
h = logging.StreamHandler(buf)
hf_logging.get_logger().addHandler(h)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    tok = AutoTokenizer.from_pretrained(DIR)
    print("TOKENIZER", type(tok).__name__, len(tok("hello world")["input_ids"]) > 0)
    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
    print("MODEL", type(model).__name__)
print("WARNINGS", [str(x.message) for x in w])
print("LOGS", repr(buf.getvalue()))
"""


def test_transformers_user_loads_tokenizer_and_model_cleanly(tiny_models, tmp_path):
    """What a transformers user types: the tokenizer needs no custom code (no prompt, nothing
    asked on stdin), and the model loads with `trust_remote_code=True` without the spurious
    "You are using a model of type X to instantiate a model of type Y" line."""
    import subprocess
    import sys

    m = edgeprune.load(tiny_models["llama"])
    edgeprune.apply_plan(m, _nonuniform_plan(m))
    d = edgeprune.save(m, tmp_path / "p", tokenizer_from=tiny_models["llama"])
    code = f"DIR = {str(d)!r}\n" + LOAD_LIKE_A_USER
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "TOKENIZER" in p.stdout and "True" in p.stdout.split("TOKENIZER")[1].splitlines()[0], out
    assert "EdgePrune" in p.stdout.split("MODEL")[1].splitlines()[0], out
    assert "custom code" not in out and "trust_remote_code" not in out, out
    assert "to instantiate a model of type" not in out, out


def test_gqa_invalid_plan_is_refused(tiny_models):
    m = edgeprune.load(tiny_models["llama"])
    ad = get_adapter(m.config)
    plan = Plan("t", ad.family, ad.num_layers)
    plan.layers[0] = LayerPlan(heads_keep=[0, 1, 2])  # groups of 2: group 1 keeps one head, group 0 two
    with pytest.raises(PlanError, match="GQA|grouped"):
        edgeprune.apply_plan(m, plan)
    with pytest.raises(PlanError, match="every layer"):
        edgeprune.apply_plan(m, Plan("t", ad.family, ad.num_layers, removed_layers=[0, 1, 2, 3]))


def test_interrupted_save_leaves_nothing_loadable(tiny_models, tmp_path, monkeypatch):
    m = edgeprune.load(tiny_models["llama"])
    import edgeprune.io.checkpoint as ck

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "copy_tokenizer", boom)
    with pytest.raises(KeyboardInterrupt):
        edgeprune.save(m, tmp_path / "x", tokenizer_from=tiny_models["llama"])
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".x.partial*"))


def test_truncated_checkpoint_is_refused(tiny_models, copy_dir):
    d = copy_dir(tiny_models["llama"])
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ModelError, match="truncated"):
        edgeprune.load(d)


def test_bad_model_dirs(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        edgeprune.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        edgeprune.load(tmp_path / "empty")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ModelError, match="not a causal"):
        edgeprune.load(tmp_path / "bert")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelError, match="unsupported architecture 'gpt2'.*llama"):
        edgeprune.load(tmp_path / "gpt2")


def test_output_dir_refusals(tiny_models, tmp_path):
    m = edgeprune.load(tiny_models["llama"])
    d = edgeprune.save(m, tmp_path / "done")
    with pytest.raises(OutputError, match="--force"):
        edgeprune.save(m, d)
    edgeprune.save(m, d, force=True)
    with pytest.raises(OutputError, match="does not exist"):
        edgeprune.save(m, tmp_path / "no" / "such" / "dir")

"""Every method returns a plan that the one surgery applies, on Llama and Qwen2 GQA models."""
from __future__ import annotations

import pytest
import torch

import edgeprune
from edgeprune.errors import PlanError
from edgeprune.methods import METHODS, PruneRequest
from edgeprune.methods.obs import dynamic_group_sizes, obs_remove
from edgeprune.models import count_parameters, expected_nonembedding, get_adapter
from edgeprune.run.pipeline import calibration, make_plan
from edgeprune.plan import Plan


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_method_plan_and_surgery(tiny_models, method, family):
    d = tiny_models[family]
    windows = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(0))
    layers = 1 if method == "shortgpt" else (0 if method == "comp" else None)
    req = PruneRequest(ratio=0.2, layers=layers, progress=False, protect=(0,))
    plan, rep = make_plan(d, method, req, windows)
    m = edgeprune.apply_plan(edgeprune.load(d), plan)
    ad = get_adapter(edgeprune.io.checkpoint.load_config(d))
    assert count_parameters(m, ad)["non_embedding"] == expected_nonembedding(ad, plan.result_shapes(ad))
    if method != "shortgpt":
        assert abs(rep["ratio_achieved"] - 0.2) <= 0.02
    assert torch.isfinite(m(windows[:1]).logits).all()
    for lp in plan.layers.values():  # GQA-valid: whole KV groups
        if lp.heads_keep is not None:
            assert len(lp.heads_keep) % len(lp.kv_keep) == 0


def test_obs_compensation_beats_plain_removal():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 12, generator=g, dtype=torch.float64)
    X = torch.randn(12, 200, generator=g, dtype=torch.float64)
    X[3] = X[4] + 0.01 * X[3]  # correlated inputs: compensation can recover most of it
    H = 2 * X @ X.T + 1e-6 * torch.eye(12, dtype=torch.float64)
    Wc = W.clone()
    gone = obs_remove(Wc, torch.linalg.inv(H), torch.arange(12).view(12, 1), 3, [1, 1, 1])
    Wp = W.clone()
    Wp[:, gone] = 0
    err = lambda A: float(((W - A) @ X).pow(2).sum())  # noqa: E731
    assert err(Wc) < err(Wp)
    assert torch.all(Wc[:, gone] == 0)


def test_dynamic_group_sizes_shrink():
    s = dynamic_group_sizes(3000)
    assert sum(s) == 3000 and s[0] >= s[-1] and min(s) >= 1 and max(s) <= 1024


def test_slimgpt_beats_magnitude_and_wanda(stories):
    from edgeprune.calibrate import data
    from edgeprune.measure.evaluate import perplexity
    from edgeprune.run.pipeline import tokenizer_for

    w = calibration(stories, "tinystories", 16, 128, 0)
    ev = data.evaluation_set(tokenizer_for(stories), "tinystories", 256, 8)
    ppl = {}
    for method in ("slimgpt", "wanda-sp", "magnitude"):
        plan, _ = make_plan(stories, method, PruneRequest(ratio=0.2, progress=False), w)
        ppl[method] = perplexity(edgeprune.apply_plan(edgeprune.load(stories), plan), ev, progress=False)["perplexity"]
    assert ppl["slimgpt"] < ppl["wanda-sp"] and ppl["slimgpt"] < ppl["magnitude"]


def test_unreachable_requests(stories):
    w = calibration(stories, "tinystories", 4, 64, 0)
    with pytest.raises(PlanError, match="at least one|at most"):
        make_plan(stories, "shortgpt", PruneRequest(layers=7, progress=False), w)
    with pytest.raises(PlanError, match="impossible for flap"):
        make_plan(stories, "flap", PruneRequest(ratio=0.95, progress=False), w)
    with pytest.raises(PlanError, match="unknown method"):
        make_plan(stories, "sparsegpt", PruneRequest(ratio=0.2, progress=False), w)


def test_fluctuation_score_is_variance_times_column_norm():
    from edgeprune.methods.flap import fluctuation_scores

    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 6, generator=g, dtype=torch.float64) * torch.arange(1, 7) + 5.0  # tokens x channels
    W = torch.randn(4, 6, generator=g, dtype=torch.float64)
    got = fluctuation_scores(W, (X * X).sum(0), X.mean(0), X.shape[0])
    want = X.var(0) * W.pow(2).sum(0)
    assert torch.allclose(got, want, rtol=1e-9)


def test_flap_bias_compensation(stories, tmp_path):
    """FLAP adds o_proj/down_proj biases Llama lacks; they lower the error, reload and count."""
    from edgeprune.calibrate import data
    from edgeprune.measure.evaluate import perplexity
    from edgeprune.run.pipeline import tokenizer_for

    w = calibration(stories, "tinystories", 16, 128, 0)
    plan, rep = make_plan(stories, "flap", PruneRequest(ratio=0.3, progress=False), w)
    assert abs(rep["ratio_achieved"] - 0.3) <= 0.01
    biased = sorted(k for k in plan.tensors if k.endswith(".bias"))
    assert biased and all(k.split(".")[1] in ("o", "down") for k in biased)
    ev = data.evaluation_set(tokenizer_for(stories), "tinystories", 256, 8)
    m = edgeprune.apply_plan(edgeprune.load(stories), plan)
    no_bias = Plan.from_dict(plan.to_dict(), {})
    m0 = edgeprune.apply_plan(edgeprune.load(stories), no_bias)
    assert perplexity(m, ev, progress=False)["perplexity"] < perplexity(m0, ev, progress=False)["perplexity"]
    ad = get_adapter(m.config)
    assert count_parameters(m, ad)["non_embedding"] == expected_nonembedding(ad, plan.result_shapes(ad))
    out = edgeprune.save(m, tmp_path / "flap", tokenizer_from=stories, plan=plan)
    r = edgeprune.load(out)
    ids = w[:1, :32]
    assert torch.equal(r(ids).logits, m(ids).logits)
    assert any(ad.module(layer, "down").bias is not None for layer in ad.layers(r))
    aligned, rep8 = make_plan(stories, "flap", PruneRequest(ratio=0.3, align=8, progress=False), w)
    assert all(len(lp.ffn_keep) % 8 == 0 for lp in aligned.layers.values() if lp.ffn_keep is not None)
    assert abs(rep8["ratio_achieved"] - 0.3) <= 0.02


def test_method_names_live_only_in_the_registry():
    """cli, pipeline and build decide nothing by a method's name (the default included)."""
    from pathlib import Path

    from edgeprune.methods import DEFAULT, REGISTRY

    root = Path(__file__).resolve().parents[1] / "edgeprune"
    for name in ("cli/main.py", "cli/args.py", "run/pipeline.py", "run/build.py", "run/build_context.py",
                 "run/build_start.py", "run/build_stages.py", "run/dry_run.py", "run/sweep.py"):
        text = (root / name).read_text()
        for m in REGISTRY:
            assert f'"{m}"' not in text and f"'{m}'" not in text, f"{name} names method {m}"
    assert DEFAULT in REGISTRY


def test_capabilities_are_checked_once(tmp_path):
    from edgeprune.errors import PlanError
    from edgeprune.methods import get
    from edgeprune.run.request_checks import check_request

    with pytest.raises(PlanError, match="--layers is read by"):
        check_request(get("flap"), 0.2, 3)
    with pytest.raises(PlanError, match="needs --ratio"):
        check_request(get("slimgpt"), None, None)
    check_request(get("shortgpt"), None, 2)  # --layers alone is a whole request for shortgpt
    with pytest.raises(PlanError, match="strictly between 0 and 1"):
        check_request(get("comp"), 1.5, None)

"""The global allocation search: its knapsack, its ladders' errors, determinism and resume."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

import edgeprune
from edgeprune.errors import PlanError
from edgeprune.methods import PruneRequest
from edgeprune.methods.allocate import DROP, Ladders, knapsack, repair
from edgeprune.methods.search import mutate
from edgeprune.methods.ladder import attention_path, attention_rungs, ffn_rungs
from edgeprune.methods.obs import hessian
from edgeprune.methods.linalg import inverse_spd
from edgeprune.models import LayerShape, get_adapter
from edgeprune.run.pipeline import ResumeState, make_plan
from edgeprune.calibrate.streaming import open_source, run_collecting


def _fake_ladders(seed: int, layers: int = 4) -> Ladders:
    rng = random.Random(seed)

    def rungs(n, step):
        err, out = 0.0, [{"removed": 0, "error": 0.0, "keep": list(range(n)), "aligned": True}]
        for k in range(1, n):
            err += rng.random()
            out.append({"removed": k * step, "error": err, "keep": list(range(n - k)), "aligned": rng.random() > 0.2})
        out[0]["aligned"] = True
        return out

    recs = [{"attn": rungs(4, 30), "ffn": rungs(6, 11), "attn_params": 120, "drop": {"removed": 190, "error": 3 + rng.random() * 3}}
            for _ in range(layers)]
    return Ladders(recs)


@pytest.mark.parametrize("seed", range(5))
def test_knapsack_is_the_exact_optimum(seed):
    """Brute force over every allocation: the DP finds the least proxy error meeting the budget."""
    lad = _fake_ladders(seed)
    budget = 0.3 * 4 * 190
    best = min((a for a in itertools.product(*[lad.choices(i) for i in range(4)]) if lad.total(a) >= budget),
               key=lad.proxy)
    got = knapsack(lad, budget, steps=10_000)
    assert lad.total(got) >= budget
    assert lad.proxy(got) == pytest.approx(lad.proxy(best))


def test_repair_and_mutate_meet_the_budget_deterministically():
    lad = _fake_ladders(0)
    budget = 0.4 * 4 * 190
    start = repair(lad, tuple((0, 0) for _ in range(4)), budget)
    assert budget <= lad.total(start) <= budget + lad.slack()
    kids = [mutate(lad, start, random.Random(7), 2, budget) for _ in range(2)]
    assert kids[0] == kids[1]
    for kid in [mutate(lad, start, random.Random(s), 3, budget) for s in range(20)]:
        assert lad.total(kid) >= budget
        assert any(c != DROP for c in kid)
        assert all(c == DROP or lad.attn(i)[c[0]]["aligned"] for i, c in enumerate(kid))


def test_protected_layers_are_never_cut():
    lad = _fake_ladders(1)
    lad = Ladders(lad.records, frozenset({0}))
    assert knapsack(lad, 0.3 * 4 * 190)[0] == (0, 0)


@torch.no_grad()
def test_ladder_errors_are_the_measured_output_errors(tiny_models):
    """Each rung's error is ‖ΔY‖² of its module (measured here on the same inputs) over ‖Y‖²;
    attention rungs keep GQA valid and include per-group query-head cuts."""
    src = open_source(tiny_models["llama"])
    ad = src.adapter
    windows = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    acts = src.start(windows, 4)
    layer = src.layer(0)
    out, cols = run_collecting(src, layer, acts, ("o", "down"))
    W_o, W_f = ad.module(layer, "o").weight.double(), ad.module(layer, "down").weight.double()
    s = ad.shape_of(layer)
    t_o, t_f = {}, {}
    attn = attention_rungs(W_o.clone(), hessian(cols["o"].gram, 1e-9), ad, s, 1.0, 1, t_o.__setitem__)
    ffn = ffn_rungs(W_f.clone(), inverse_spd(hessian(cols["down"].gram, 1e-9)), ad, 1.0, 1, t_f.__setitem__)
    G_o, G_f = cols["o"].gram, cols["down"].gram
    for rungs, tensors, W, G, kind, width in ((attn, t_o, W_o, G_o, "attn", ad.head_dim), (ffn, t_f, W_f, G_f, "ffn", 1)):
        assert [r.error for r in rungs] == sorted(r.error for r in rungs)
        for k, r in enumerate(rungs[1:], 1):
            idx = torch.cat([torch.arange(u * width, (u + 1) * width) for u in r.keep])
            full = torch.zeros_like(W)
            full[:, idx] = tensors[f"{kind}{k}"].double()
            D = W - full
            assert float((D @ G * D).sum()) == pytest.approx(r.error, rel=1e-3)
    assert any("head" in r.moves for r in attn)
    for r in attn:
        per_group = [sum(1 for h in r.keep if h // 2 == g) for g in r.kv_keep]
        assert len(set(per_group)) == 1 and min(per_group) >= 1
    out.close()
    acts.close()


def test_forced_moves_replay_the_path(tiny_models):
    src = open_source(tiny_models["qwen2"])
    ad = src.adapter
    s = ad.layer_shapes()[0]
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, s.num_heads * ad.head_dim, generator=g, dtype=torch.float64)
    W = torch.randn(ad.hidden_size, s.num_heads * ad.head_dim, generator=g, dtype=torch.float64)
    H = hessian(X.T @ X, 0.01)
    free = list(attention_path(W.clone(), inverse_spd(H.clone()), ad, s))
    moves = [m for m, _, _ in free]
    replay = list(attention_path(W.clone(), inverse_spd(H), ad, s, forced=moves[:3]))
    assert [m for m, _, _ in replay] == moves[:3]
    assert replay[-1][2] == free[2][2]


def _plan(d, tmp_path=None, **kw):
    windows = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(0))
    req = PruneRequest(ratio=0.3, progress=False, search_evals=12, **kw)
    if tmp_path is not None:
        req.state = ResumeState(tmp_path / "layers")
    return make_plan(d, "search", req, windows)[0]


def test_search_is_deterministic_resumable_and_beats_its_seeds(tiny_models, tmp_path, monkeypatch):
    d = tiny_models["qwen2"]
    a = _plan(d, tmp_path)
    log = a.stats["search"]
    assert log["best_kl"] <= min(v["kl"] for v in log["seeds"].values())
    assert log["evaluated"] <= 12 and a.options["search_evals"] == 12
    # a resumed run replays the logged search without evaluating anything again
    from edgeprune.methods import fitness

    monkeypatch.setattr(fitness.KLFitness, "__call__", lambda self, allocs: pytest.fail("re-evaluated a candidate"))
    (tmp_path / "layers" / "layer1.json").unlink()  # interrupted during the final re-fit
    b = _plan(d, tmp_path)
    assert a.to_dict()["layers"] == b.to_dict()["layers"] and a.removed_layers == b.removed_layers
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k])
    monkeypatch.undo()
    c = _plan(d)  # no work directory: the same plan again
    assert c.to_dict()["layers"] == a.to_dict()["layers"]
    m = edgeprune.apply_plan(edgeprune.load(d), a)
    assert torch.isfinite(m(torch.arange(16).view(1, -1)).logits).all()


def test_search_refuses_what_it_cannot_do(tiny_models):
    d = tiny_models["llama"]
    with pytest.raises(PlanError, match="at least 2"):
        make_plan(d, "search", PruneRequest(ratio=0.2, progress=False), torch.randint(0, 512, (1, 64)))
    with pytest.raises(PlanError, match="protect"):
        make_plan(d, "search", PruneRequest(ratio=0.6, progress=False, protect=(0, 1, 2)), torch.randint(0, 512, (4, 64)))


def test_capacity_keeps_a_layer_and_counts_deep_cuts():
    from edgeprune.methods.search import capacity

    one = _fake_ladders(0, layers=1)
    assert capacity(one) == max(one.removed(0, c) for c in one.choices(0) if c != DROP)
    four = _fake_ladders(0)
    deepest = max(max(four.removed(i, c) for c in four.choices(i) if c != DROP) for i in range(4))
    assert capacity(four) == 3 * 190 + deepest
    assert capacity(Ladders(four.records, frozenset({0}))) == 3 * 190


def test_ladder_records_of_another_version_are_built_again(tmp_path):
    import json

    from edgeprune.methods.ladder import LadderStore

    store = LadderStore(tmp_path)
    store.put_record(0, {"attn": [], "ffn": [], "attn_params": 0, "drop": {"removed": 0, "error": 0.0}, "importance": 0.0})
    assert store.record(0) is not None
    old = json.loads((tmp_path / "L0.json").read_text())
    old.pop("version")
    (tmp_path / "L0.json").write_text(json.dumps(old))
    assert store.record(0) is None


@pytest.mark.parametrize("spread", [1e-3, 0.3, 3.0])
def test_the_one_pass_kl_is_the_two_pass_kl(spread):
    """The fitness keeps the dense model as pᵀW and Σ p log p (one vocabulary pass per
    candidate): its KL is the explicit Σ p (log p − log q) within float32 rounding, for
    candidates near and far from the dense model, across vocabulary blocks."""
    from edgeprune.methods import fitness

    g = torch.Generator().manual_seed(0)
    vocab, d, tokens = 2 * fitness.VOCAB_BLOCK + 123, 32, fitness.TOKEN_BLOCK + 17
    f = fitness.KLFitness.__new__(fitness.KLFitness)
    f.head = torch.randn(vocab, d, generator=g).to(torch.bfloat16)
    hd = torch.randn(tokens, d, generator=g)
    hq = hd + spread * torch.randn(tokens, d, generator=g)
    f.dense = [f._dense_terms(hd)]
    f._final = lambda acts: [hq]
    lp_d = torch.log_softmax(hd.double() @ f.head.double().T, -1)
    lp_q = torch.log_softmax(hq.double() @ f.head.double().T, -1)
    want = float((lp_d.exp() * (lp_d - lp_q)).sum())
    (got, n), = f._kl_sums(None)
    assert n == tokens
    # the float32 logits' rounding (the same as the two-pass form's) bounds it; the dense model's own KL is 0
    assert got == pytest.approx(want, rel=5e-3, abs=1e-7 * tokens)
    f._final = lambda acts: [hd]
    assert f._kl_sums(None)[0][0] == 0.0


def test_the_fitness_dense_terms_carry_no_autograd_graph(tiny_models):
    """The dense side of the fitness is computed once and kept for the whole search: with a
    graph attached (the final norm's weight is a parameter), every logits block it went
    through stayed alive, 24 GB at Llama-3.2-1B width, and the default method was killed by
    the OOM killer. Nothing it keeps may require grad; the dense model's own KL stays 0."""
    from edgeprune.methods.fitness import KLFitness

    src = open_source(tiny_models["llama"])
    windows = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    f = KLFitness(src, windows, None, None, 2)
    try:
        assert f.dense and not any(t.requires_grad for terms in f.dense for t in terms)
        dense = tuple((0, 0) for _ in range(src.num_layers))
        assert f([dense]) == [pytest.approx(0.0, abs=1e-6)]
    finally:
        f.close()


def test_the_refit_starts_from_the_deepest_rung_above_the_chosen_one_within_the_count():
    """`jump_start`: the kept channels of the rung above the chosen one (its step is chosen
    afresh on the pruned inputs), a shallower rung when channels were handed back past it, and
    the full width (None) from the first rung."""
    from edgeprune.methods.search_refit import jump_start

    class Lad:
        def ffn(self, i):
            return [{"keep": list(range(16))}, {"keep": list(range(12))}, {"keep": list(range(8))}, {"keep": list(range(4))}]

    assert jump_start(Lad(), 0, 3, 12) == list(range(8))  # rung 3 chosen, its 12 channels: from rung 2
    assert jump_start(Lad(), 0, 3, 7) == list(range(12))  # 5 handed back past rung 2: from rung 1
    assert jump_start(Lad(), 0, 3, 3) is None  # past rung 1 too: the full width
    assert jump_start(Lad(), 0, 1, 4) is None and jump_start(Lad(), 0, 0, 0) is None

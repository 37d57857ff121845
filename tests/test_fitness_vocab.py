"""The fitness's KL on a sample of the vocabulary (methods/fitness_vocab.py): exact 0 for the
dense model, never negative, near the exact KL on flat and peaked distributions, and the
search takes it end to end where the vocabulary is large enough (else the exact KL)."""
from __future__ import annotations

import math

import pytest
import torch

from edgeprune.methods import fitness
from edgeprune.methods.fitness_vocab import TOP, SampledKL, sampled

torch.set_num_threads(1)


def _case(vocab: int, temp: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d, tokens = 48, 300  # more tokens than one block of the dense pass
    f = fitness.KLFitness.__new__(fitness.KLFitness)
    f.head = (torch.randn(vocab, d, generator=g) * temp / math.sqrt(d)).to(torch.bfloat16)
    hd = torch.randn(tokens, d, generator=g) * 3
    return f, hd, g


def _exact(head, hd, hq) -> torch.Tensor:
    lp_d = torch.log_softmax(hd.double() @ head.double().T, -1)
    lp_q = torch.log_softmax(hq.double() @ head.double().T, -1)
    return (lp_d.exp() * (lp_d - lp_q)).sum(1)


@pytest.mark.parametrize("temp", [0.1, 1.0, 8.0])  # flat (a random-weight model) to peaked (a trained one)
def test_the_sampled_kl_is_near_the_exact_kl_and_zero_for_the_dense_model(temp):
    f, hd, g = _case(8192, temp)
    s = SampledKL(f.head, 1024)
    terms = s.dense_terms(hd, f._logits, fitness.TOKEN_BLOCK)
    assert float(s.kl(hd, terms).abs().max()) == 0.0
    for spread in (0.01, 0.3, 1.5):
        hq = hd + spread * torch.randn(hd.shape, generator=g)
        got = s.kl(hq, terms)
        assert bool((got >= -1e-12).all())  # the KL of two renormalised distributions
        want = float(_exact(f.head, hd, hq).mean())
        assert float(got.mean()) == pytest.approx(want, rel=0.05)


def test_the_sampled_kl_ranks_candidates_like_the_exact_one():
    """What the search needs: the order of candidates, compared on the same rows."""
    f, hd, g = _case(16384, 1.0, seed=1)
    s = SampledKL(f.head, 2048)
    terms = s.dense_terms(hd, f._logits, fitness.TOKEN_BLOCK)
    spreads = [0.05 * 1.25**k for k in range(10)]
    cands = [hd + sp * torch.randn(hd.shape, generator=g) for sp in spreads]
    est = [float(s.kl(h, terms).mean()) for h in cands]
    exact = [float(_exact(f.head, hd, h).mean()) for h in cands]
    assert sorted(range(10), key=est.__getitem__) == sorted(range(10), key=exact.__getitem__)


def test_only_a_large_vocabulary_is_sampled():
    assert not sampled(512, 0) and not sampled(10**6, 0)  # 0 asks for the exact KL
    assert sampled(4 * (64 + TOP), 64) and not sampled(4 * (64 + TOP) - 1, 64)
    assert not sampled(32000, 8000)


def test_a_token_whose_top_rows_hold_all_its_mass_is_exact():
    """A peaked token's shared rows weigh nothing (its top set holds the mass): no NaN."""
    f, hd, g = _case(4096, 200.0)
    s = SampledKL(f.head, 512)
    terms = s.dense_terms(hd, f._logits, fitness.TOKEN_BLOCK)
    hq = hd + 0.01 * torch.randn(hd.shape, generator=g)
    got = s.kl(hq, terms)
    assert bool(torch.isfinite(got).all())
    assert float(got.mean()) == pytest.approx(float(_exact(f.head, hd, hq).mean()), rel=0.05, abs=1e-9)


def test_search_takes_the_sampled_kl_end_to_end(tiny_models):
    """A 512-token vocabulary is sampled at 64 rows: the search runs on it and records it."""
    from edgeprune.calibrate.streaming import open_source
    from edgeprune.methods import PruneRequest
    from edgeprune.methods.search import plan_search

    src = open_source(tiny_models["llama"])
    calib = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    plans = {}
    for rows in (0, 64):
        plans[rows] = plan_search(src, calib, PruneRequest(ratio=0.2, search_evals=6, options={"search_kl_vocab": rows}))
    assert "sampled" in plans[64].options["fitness"] and "sampled" not in plans[0].options["fitness"]
    assert plans[64].options["search_kl_vocab"] == 64
    assert plans[64].stats["search"]["best_kl"] >= 0 and math.isfinite(plans[64].stats["search"]["best_kl"])

"""The fitness's KL over a sample of the vocabulary, for large vocabularies.

At Llama-3 width the exact KL of one candidate is a pass of every held-back token through
all 128,256 rows of the lm_head: 8 such passes were 160 of the 196 fitness seconds of a
2-layer search (benchmarks/scale.py). Per token, with p the dense model's distribution and
Δ_v = z_v − z_d,v the change of the candidate's logit of token v,

    KL(p ‖ q) = log E_p[e^Δ] − E_p[Δ]                                         (exact)

and both expectations are estimated on one small set of rows, so only those rows are
multiplied per candidate:
- each token's own `TOP` most likely tokens, with their exact dense probabilities;
- one random sample of `rows` vocabulary rows, shared by every token and every candidate
  (common random numbers: candidates are compared on the same rows), standing for the rest
  of the distribution: its rows outside the token's top set are weighted by their dense
  probabilities, rescaled to the exact mass the top set leaves (a ratio estimator).

The estimate is the exact KL between the dense and candidate distributions restricted to
those rows and renormalised, so it is ≥ 0, exactly 0 for the dense model, and its error
shrinks as the candidate nears the dense model (E[Δ]'s estimation error cancels between the
two terms). Its error against the exact KL is measured in benchmarks/search_stages.py and
tests/test_fitness_vocab.py. The dense side still takes one exact vocabulary pass, once.
"""
from __future__ import annotations

import math

import torch

TOP = 64  # each token's most likely tokens, taken exactly
GATHER = 1 << 24  # floats of gathered lm_head rows at a time (64 MB)


def sampled(vocab: int, rows: int) -> bool:
    """Whether a vocabulary is sampled: only where the sample is under a quarter of it (a
    small vocabulary is cheap whole, and `rows` = 0 asks for the exact KL)."""
    return rows > 0 and 4 * (rows + TOP) <= vocab


class SampledKL:
    """The dense terms of one search (per batch of windows) and each candidate's KL sums."""

    def __init__(self, head: torch.Tensor, rows: int, seed: int = 0):
        self.head = head
        gen = torch.Generator().manual_seed(seed)
        self.tail = torch.randperm(head.shape[0], generator=gen)[:rows].sort().values.to(head.device)
        self.w_tail = head[self.tail].float()  # cast once per search: the rows every candidate multiplies

    def logits(self, h: torch.Tensor, top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 logits of hidden states h (tokens x d) at each token's top rows and at the
        shared rows; the dense model and every candidate go through this very arithmetic."""
        x = h.float()
        z_tail = x @ self.w_tail.T
        step = max(1, GATHER // (top.shape[1] * x.shape[1]))
        z_top = torch.cat([torch.bmm(self.head[top[s : s + step]].float(), x[s : s + step, :, None]).squeeze(-1)
                           for s in range(0, x.shape[0], step)])
        return z_top, z_tail

    def dense_terms(self, h: torch.Tensor, exact_logits, block: int) -> tuple[torch.Tensor, ...]:
        """Per token: the top rows, the dense logits there and at the shared rows (from
        `logits`), and log π, the weights of the estimate (float64, −inf where a shared row
        is one of the token's top rows: it is counted once). `exact_logits(x)` yields the
        token block's full logits by vocabulary block, once; `block` tokens at a time (the
        fitness's TOKEN_BLOCK)."""
        tops, lps_top, lps_tail = [], [], []
        for s in range(0, h.shape[0], block):
            full = torch.cat(list(exact_logits(h[s : s + block].float())), dim=1)
            lse = torch.logsumexp(full.double(), dim=1, keepdim=True)
            top = full.topk(TOP, dim=1).indices
            lp_top = full.gather(1, top).double() - lse
            lp_tail = full[:, self.tail].double() - lse
            clash = torch.zeros_like(full, dtype=torch.bool).scatter_(1, top, True)[:, self.tail]
            lp_tail = lp_tail.masked_fill(clash, -math.inf)
            # the shared rows stand for the mass outside the top set: rescaled to it exactly
            rest = (-torch.logsumexp(lp_top, dim=1, keepdim=True).exp()).log1p()
            scale = rest - torch.logsumexp(lp_tail, dim=1, keepdim=True)
            tops.append(top)
            lps_top.append(lp_top)
            lps_tail.append(torch.where(torch.isfinite(scale), lp_tail + scale, torch.full_like(lp_tail, -math.inf)))
        top = torch.cat(tops)
        z_top, z_tail = self.logits(h, top)
        return top, z_top, z_tail, torch.cat(lps_top), torch.cat(lps_tail)

    def kl(self, h: torch.Tensor, terms: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Per-token KL estimate of the candidate with hidden states h (float64)."""
        top, zd_top, zd_tail, lp_top, lp_tail = terms
        z_top, z_tail = self.logits(h, top)
        delta = torch.cat([(z_top - zd_top).double(), (z_tail - zd_tail).double()], dim=1)
        logw = torch.cat([lp_top, lp_tail], dim=1)
        norm = torch.logsumexp(logw, dim=1)
        mean = (torch.exp(logw - norm[:, None]) * delta).sum(1)  # E[Δ] under the normalised weights
        return torch.logsumexp(logw + delta, dim=1) - norm - mean

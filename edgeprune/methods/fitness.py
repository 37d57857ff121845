"""The search's fitness: KL(dense ‖ pruned) per token on held-back calibration windows.

Candidates are evaluated together, layer by layer through the streaming driver: each dense
layer is read once per generation, each distinct choice at that layer is built from it
(sliced, with the ladder's compensated weights from disk) and run once for every distinct
*prefix* of choices (candidates that agree on layers 0..i share those activations). Memory
is one layer, its candidate copies, and one activation set per distinct prefix.

The dense side goes through the lm_head once, not once per candidate: per token,
KL(p ‖ q) = Σ p log p − Σ p z + logsumexp(z) with z = W h the candidate's logits, and
Σ p z = h · (pᵀW), so the dense model is kept as pᵀW (one hidden-size vector per token, what
its hidden state cost before) and Σ p log p. Each candidate then costs one vocabulary pass
(its logsumexp), where it cost two; the reformulation is exact, the float32 rounding of the
logits is the same, and the sums are float64 (tests/test_search.py bounds the difference).

A large vocabulary (`--search-kl-vocab` rows sampled, `fitness_vocab`) costs each candidate a pass
through a few thousand rows instead of all of them, with a stated, measured error.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .. import dist
from ..measure.reference import VOCAB_BLOCK, final_norm
from ..calibrate.streaming import Activations, LayerSource
from ..apply.surgery import slice_layer
from .allocate import DROP, Alloc, Choice, Ladders
from .fitness_vocab import SampledKL, sampled
from .ladder import LadderStore, rung_plan

TOKEN_BLOCK = 256  # tokens turned into logits at a time


class KLFitness:
    """Mean per-token KL(dense ‖ candidate) on fixed held-back windows."""

    sample: SampledKL | None = None  # the vocabulary sample, where the KL is estimated on one

    def __init__(self, source: LayerSource, windows: torch.Tensor, lad: Ladders, store: LadderStore, batch_size: int,
                 vocab_rows: int = 0):
        """`vocab_rows`: the vocabulary rows a candidate's KL is estimated on (`fitness_vocab`),
        where the vocabulary is large enough for that to pay; 0, or a small vocabulary: exact."""
        self.source, self.lad, self.store = source, lad, store
        self.inputs = source.start(windows, batch_size)  # embedded once, kept for every evaluation
        self.norm = final_norm(source)
        self.head = source.lm_head_weight()
        self.sample = SampledKL(self.head, vocab_rows) if sampled(self.head.shape[0], vocab_rows) else None
        dense = tuple((0, 0) for _ in range(source.num_layers))
        with torch.no_grad():  # the norm's weight is a parameter: with autograd on, every logits block of the
            # dense terms stayed alive in their graph (24 GB at Llama-3.2-1B width, killed by the OOM killer)
            self.dense = [self._dense_terms(h) if self.sample is None else self.sample.dense_terms(h, self._logits, TOKEN_BLOCK)
                          for h in self._final(self._hidden([dense])[dense])]

    @torch.no_grad()
    def __call__(self, allocs: list[Alloc]) -> list[float]:
        hidden = self._hidden(allocs)
        return [self._kl(hidden[a]) for a in allocs]

    def close(self) -> None:
        self.inputs.close()

    def _layer(self, i: int, dense: nn.Module, c: Choice) -> nn.Module:
        if c == (0, 0):
            return dense
        layer = copy.deepcopy(dense)
        plan = rung_plan(self.lad, self.store, i, c, self.source.num_layers, self.source.adapter.family)
        slice_layer(self.source.adapter, layer, i, plan, self.source.shapes[i])
        return layer

    @torch.no_grad()
    def _hidden(self, allocs: list[Alloc]) -> dict[Alloc, Activations]:
        acts: dict[tuple, Activations] = {(): self.inputs}
        for i in range(self.source.num_layers):
            need = sorted({a[: i + 1] for a in allocs})
            dense = self.source.layer(i) if any(p[-1] != DROP for p in need) else None
            built: dict[Choice, nn.Module] = {}
            new: dict[tuple, Activations] = {}
            for p in need:
                if p[-1] == DROP:
                    new[p] = acts[p[:-1]]
                    continue
                if p[-1] not in built:
                    built[p[-1]] = self._layer(i, dense, p[-1])
                new[p] = self.source.run(built[p[-1]], acts[p[:-1]], check_finite=False)
            keep = {id(v) for v in new.values()} | {id(self.inputs)}
            for v in acts.values():
                if id(v) not in keep:
                    v.close()
            acts = new
        return {a: acts[a] for a in allocs}

    def _final(self, acts: Activations) -> list[torch.Tensor]:
        out = [self.norm(x).reshape(-1, x.shape[-1]) for x in acts]
        if acts is not self.inputs:
            acts.close()
        return out

    def _head_blocks(self, device):
        for s in range(0, self.head.shape[0], VOCAB_BLOCK):
            yield self.head[s : s + VOCAB_BLOCK].to(device, torch.float32)

    def _logits(self, x: torch.Tensor):
        """One token block's float32 logits, by vocabulary block."""
        return (x @ w.T for w in self._head_blocks(x.device))

    def _dense_terms(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per token of one batch: m = pᵀW (float32), s = Σ p and r = h·m − s·logsumexp(W h) (float64;
        r is Σ p log p from the very arithmetic a candidate's terms go through (`_update`, block by
        block in the same order), so the dense model's own KL is exactly 0 and rounding scales with
        the distance to it). Two vocabulary passes per token block: the logits, then pᵀW. The lm_head
        is cast once per pass rather than once per vocabulary block overall: that would need the
        logits computed twice (a second V x H matmul per token), dearer than a bf16 cast."""
        ms, sums, lses = [], [], []
        for t in range(0, h.shape[0], TOKEN_BLOCK):
            x = h[t : t + TOKEN_BLOCK].float()
            blocks = list(self._logits(x))
            top = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
            total = torch.zeros_like(top)
            for b in blocks:
                _update(top, total, b)
            lse = top + total.log()
            m = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
            psum = torch.zeros_like(top)
            for b, w in zip(blocks, self._head_blocks(x.device)):
                p = (b.double() - lse[:, None]).exp()
                psum += p.sum(-1)
                m += (p.float() @ w).double()
            ms.append(m.float())  # kept at the hidden states' size; r below uses this very m
            sums.append(psum)
            lses.append(lse)
        m, s = torch.cat(ms), torch.cat(sums)
        return m, s, (h.double() * m.double()).sum(-1) - s * torch.cat(lses)

    def _lse(self, h: torch.Tensor) -> torch.Tensor:
        """logsumexp(W h) per token (float64): vocabulary blocks outside, token blocks inside, so
        the lm_head is cast to float32 once per candidate rather than once per token block."""
        top = torch.full((h.shape[0],), -math.inf, dtype=torch.float64, device=h.device)
        total = torch.zeros_like(top)
        for w in self._head_blocks(h.device):
            for t in range(0, h.shape[0], TOKEN_BLOCK):
                _update(top[t : t + TOKEN_BLOCK], total[t : t + TOKEN_BLOCK], h[t : t + TOKEN_BLOCK].float() @ w.T)
        return top + total.log()

    def _cross(self, h: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Σ p log q per token for the candidate's hidden states h: h·(pᵀW) − Σp · logsumexp(W h)."""
        return (h.double() * m.double()).sum(-1) - s * self._lse(h)

    def _kl(self, acts: Activations) -> float:
        sums = self._kl_sums(acts)
        total, n = dist.sum_floats(sum(t for t, _ in sums), sum(n for _, n in sums))  # every rank's held-back tokens
        value = total / max(n, 1)
        return value if math.isfinite(value) else float("inf")  # a broken candidate never wins

    @torch.no_grad()
    def per_batch(self, allocs: list[Alloc]) -> list[list[float]]:
        """Each candidate's mean KL per batch of windows (per window at batch size 1): what a
        variance penalty or a split of the held-back windows reads (benchmarks/fitness_gap.py)."""
        hidden = self._hidden(allocs)
        return [[t / max(n, 1) for t, n in self._kl_sums(hidden[a])] for a in allocs]

    def _kl_sums(self, acts: Activations) -> list[tuple[float, int]]:
        """(Σ KL, tokens) per batch of windows."""
        out = []
        for terms, hp in zip(self.dense, self._final(acts)):
            kl = self.sample.kl(hp, terms) if self.sample is not None else terms[2] - self._cross(hp, *terms[:2])
            total, n = float(kl.sum()), kl.numel()
            out.append((total, n))
        return out


def _update(top: torch.Tensor, total: torch.Tensor, logits: torch.Tensor) -> None:
    """One vocabulary block into a running logsumexp per token (in place): the logits are
    float32 (the flops), their exponentials summed in float64 against the running maximum."""
    new = torch.maximum(top, logits.max(-1).values.double())
    total.mul_((top - new).exp()).add_((logits.double() - new[:, None]).exp().sum(-1))
    top.copy_(new)

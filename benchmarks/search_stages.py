"""search's two hot spots at real width, before and after issue 23's cuts, in CPU seconds.

On a machine shared with other jobs wall time measures the neighbours; the CPU seconds of one
thread (time.process_time) measure the work. Interleaved (before, after, before, after, ...):
  - the OBS unit costs of one FFN step at the intermediate width (the ladder and the re-fit
    call it every step): the whole (U·g)² gather of H⁻¹ before, the U diagonal blocks after;
  - one candidate's KL over the vocabulary for one block of tokens: two lm_head passes (dense
    and candidate log-softmax) before, one (the candidate's logsumexp, the dense side kept as
    pᵀW) after.

    python benchmarks/search_stages.py --shape llama-3.2-1b --reps 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, write_results  # noqa: E402


def unit_costs_before(W, Hinv, cols):
    """The gather as it was (the whole block, then its diagonal)."""
    U, g = cols.shape
    pos = cols.reshape(-1)
    blocks = Hinv[pos.unsqueeze(1), pos.unsqueeze(0)].view(U, g, U, g).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    Wu = W[:, cols].permute(1, 0, 2)
    sol = torch.cholesky_solve(Wu.transpose(1, 2), torch.linalg.cholesky(blocks))
    return (Wu.transpose(1, 2) * sol).sum((1, 2))


def kl_before(hd, hq, head, block):
    def lp(h):
        return torch.log_softmax(torch.cat([h @ head[s : s + block].float().T for s in range(0, head.shape[0], block)], 1), -1)
    a, b = lp(hd), lp(hq)
    return float((a.exp() * (a - b)).sum())


def cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    from edgeprune.methods import fitness
    from edgeprune.methods.obs import unit_costs
    from edgeprune.io.synthetic import config_for

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama-3.2-1b")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--name", default="search_stages")
    a = p.parse_args()
    torch.set_num_threads(1)
    c = config_for(a.shape, 1)
    f, d, V = c["intermediate_size"], c["hidden_size"], c["vocab_size"]
    g = torch.Generator().manual_seed(0)
    X = torch.randn(f, f + 64, generator=g, dtype=torch.float64) / f**0.5
    Hinv = X @ X.T
    del X
    W = torch.randn(d, f, generator=g, dtype=torch.float64)
    cols = torch.arange(f).view(-1, 1)
    head = (torch.randn(V, d, generator=g) / d**0.5).to(torch.bfloat16)
    hd = torch.randn(fitness.TOKEN_BLOCK, d, generator=g)
    hq = hd + 0.3 * torch.randn(fitness.TOKEN_BLOCK, d, generator=g)
    kl = fitness.KLFitness.__new__(fitness.KLFitness)
    kl.head = head
    m, s, _ = kl._dense_terms(hd)
    times = {k: [] for k in ("uc0", "uc1", "kl0", "kl1")}
    for _ in range(a.reps):
        times["uc0"].append(cpu(lambda: unit_costs_before(W, Hinv, cols)))
        times["uc1"].append(cpu(lambda: unit_costs(W, Hinv, cols)))
        times["kl0"].append(cpu(lambda: kl_before(hd, hq, head, fitness.VOCAB_BLOCK)))
        times["kl1"].append(cpu(lambda: kl._cross(hq, m, s)))
    assert torch.equal(unit_costs_before(W, Hinv, cols), unit_costs(W, Hinv, cols))

    def cell(k):
        v = times[k]
        return f"{statistics.median(v):.3f} ({min(v):.3f}..{max(v):.3f})"

    rows = [dict(stage=f"OBS unit costs, one FFN step ({f} channels)", before=cell("uc0"), after=cell("uc1"),
                 ratio=statistics.median(times["uc0"]) / statistics.median(times["uc1"])),
            dict(stage=f"KL of one candidate, {fitness.TOKEN_BLOCK} tokens x {V} vocabulary", before=cell("kl0"),
                 after=cell("kl1"), ratio=statistics.median(times["kl0"]) / statistics.median(times["kl1"]))]
    md = markdown_table(rows, [("stage", "stage"), ("before", "before, CPU s median (min..max)"),
                               ("after", "after, CPU s median (min..max)"), ("ratio", "before / after")])
    print(md)
    write_results(a.name, {"command": " ".join(sys.argv), "args": vars(a), "cpu_seconds": times}, md)


if __name__ == "__main__":
    main()

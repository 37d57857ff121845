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


def dense_terms_before(kl, h):
    """The dense side as it was: log-softmax, then pᵀW, then Σ p log p through `_cross`."""
    from edgeprune.methods import fitness

    ms, sums = [], []
    for t in range(0, h.shape[0], fitness.TOKEN_BLOCK):
        x = h[t : t + fitness.TOKEN_BLOCK].float()
        lp = torch.log_softmax(torch.cat([x @ w.T for w in kl._head_blocks(x.device)], dim=1), dim=-1)
        p = lp.exp()
        sums.append(p.double().sum(-1))
        m = torch.zeros(x.shape, dtype=torch.float64)
        for k, w in enumerate(kl._head_blocks(x.device)):
            m += (p[:, k * fitness.VOCAB_BLOCK : k * fitness.VOCAB_BLOCK + w.shape[0]] @ w).double()
        ms.append(m.float())
    m, s = torch.cat(ms), torch.cat(sums)
    return m, s, kl._cross(h, m, s)


def ffn_ladder_before(W, Hinv, f):
    """One layer's FFN ladder as it was: the whole matrices downdated at every step, the unit
    costs by the batched block form."""
    from edgeprune.methods.ladder import ffn_counts
    from edgeprune.methods.obs import block_costs, dynamic_group_sizes, set_cost

    alive, kept = list(range(f)), []
    for n in ffn_counts(f, 1):
        for k in dynamic_group_sizes(n - (f - len(alive))):
            k = min(k, len(alive) - 1)
            pick = torch.argsort(block_costs(W, Hinv, torch.tensor(alive).view(-1, 1)), stable=True)[:k].tolist()
            S = torch.tensor([alive[i] for i in pick])
            LS = torch.linalg.cholesky(Hinv[S.unsqueeze(1), S.unsqueeze(0)])
            HS = Hinv[S]
            set_cost(W, Hinv, S, LS)
            W -= W[:, S] @ torch.cholesky_solve(HS, LS)
            Hinv -= HS.T @ torch.cholesky_solve(HS, LS)
            gone = set(S.tolist())
            alive = [c for c in alive if c not in gone]
            W[:, sorted(set(range(f)) - set(alive))] = 0
        kept.append(list(alive))
    return kept


def ffn_ladder_after(W, Hinv, f):
    from edgeprune.methods.ladder import ffn_counts
    from edgeprune.methods.obs import OBSState, dynamic_group_sizes

    state, kept = OBSState(W, Hinv, torch.arange(f).view(-1, 1)), []
    for n in ffn_counts(f, 1):
        inc = n - (f - len(state.alive))
        state.remove_steps(inc, dynamic_group_sizes(inc))
        kept.append(list(state.alive))
    return kept


def cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def _table(times: dict[str, list[float]], labels: list[tuple[str, str]]) -> str:
    """One row per (key, label): before and after, CPU s median (min..max), and their ratio."""
    def cell(k):
        v = times[k]
        return f"{statistics.median(v):.3f} ({min(v):.3f}..{max(v):.3f})"

    rows = [dict(stage=label, before=cell(f"{k}0"), after=cell(f"{k}1"),
                 ratio=statistics.median(times[f"{k}0"]) / statistics.median(times[f"{k}1"])) for k, label in labels]
    return markdown_table(rows, [("stage", "stage"), ("before", "before, CPU s median (min..max)"),
                                 ("after", "after, CPU s median (min..max)"), ("ratio", "before / after")])


def _inputs(shape: str, ladder_width: int | None) -> dict:
    """Random inputs of the shape's widths: H⁻¹ and W of one FFN, the lm_head, a token block."""
    from edgeprune.methods import fitness
    from edgeprune.io.synthetic import config_for

    c = config_for(shape, 1)
    f, d, V = c["intermediate_size"], c["hidden_size"], c["vocab_size"]
    g = torch.Generator().manual_seed(0)
    X = torch.randn(f, f + 64, generator=g, dtype=torch.float64) / f**0.5
    kl = fitness.KLFitness.__new__(fitness.KLFitness)
    kl.head = (torch.randn(V, d, generator=g) / d**0.5).to(torch.bfloat16)
    hd = torch.randn(fitness.TOKEN_BLOCK, d, generator=g)
    lf = ladder_width or f
    Xl = torch.randn(2 * lf, lf, generator=g, dtype=torch.float64) * torch.rand(lf, generator=g, dtype=torch.float64)
    return dict(f=f, d=d, V=V, lf=lf, Hinv=X @ X.T, W=torch.randn(d, f, generator=g, dtype=torch.float64),
                cols=torch.arange(f).view(-1, 1), kl=kl, hd=hd, hq=hd + 0.3 * torch.randn(fitness.TOKEN_BLOCK, d, generator=g),
                Hl=torch.linalg.inv(Xl.T @ Xl + 0.01 * torch.eye(lf, dtype=torch.float64)),
                Wl=torch.randn(d, lf, generator=g, dtype=torch.float64))


def main() -> None:
    from edgeprune.methods import fitness
    from edgeprune.methods.obs import unit_costs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama-3.2-1b")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--ladder-width", type=int, default=None, help="FFN channels of the ladder row (default: the shape's)")
    p.add_argument("--name", default="search_stages")
    a = p.parse_args()
    torch.set_num_threads(1)
    x = _inputs(a.shape, a.ladder_width)
    W, Hinv, cols, kl, hd, hq, lf = x["W"], x["Hinv"], x["cols"], x["kl"], x["hd"], x["hq"], x["lf"]
    m, s, _ = kl._dense_terms(hd)
    times: dict[str, list[float]] = {f"{k}{j}": [] for k in ("uc", "kl", "dt", "ld") for j in (0, 1)}
    kept = {}
    for _ in range(a.reps):  # before and after interleaved
        times["uc0"].append(cpu(lambda: unit_costs_before(W, Hinv, cols)))
        times["uc1"].append(cpu(lambda: unit_costs(W, Hinv, cols)))
        times["kl0"].append(cpu(lambda: kl_before(hd, hq, kl.head, fitness.VOCAB_BLOCK)))
        times["kl1"].append(cpu(lambda: kl._cross(hq, m, s)))
        times["dt0"].append(cpu(lambda: dense_terms_before(kl, hd)))
        times["dt1"].append(cpu(lambda: kl._dense_terms(hd)))
        times["ld0"].append(cpu(lambda: kept.__setitem__(0, ffn_ladder_before(x["Wl"].clone(), x["Hl"].clone(), lf))))
        times["ld1"].append(cpu(lambda: kept.__setitem__(1, ffn_ladder_after(x["Wl"].clone(), x["Hl"].clone(), lf))))
        print({k: round(v[-1], 2) for k, v in times.items()}, file=sys.stderr, flush=True)
    assert torch.allclose(unit_costs_before(W, Hinv, cols), unit_costs(W, Hinv, cols), rtol=1e-12, atol=0)
    assert kept[0] == kept[1], "the shrinking OBS kept other channels than the full-matrix one"
    tok = f"{fitness.TOKEN_BLOCK} tokens x {x['V']} vocabulary"
    md = _table(times, [("uc", f"OBS unit costs, one FFN step ({x['f']} channels)"), ("kl", f"KL of one candidate, {tok}"),
                        ("dt", f"dense terms, {tok}"), ("ld", f"FFN ladder of one layer ({lf} channels to 1/8, out {x['d']})")])
    print(md)
    write_results(a.name, {"command": " ".join(sys.argv), "args": vars(a), "cpu_seconds": times}, md)


if __name__ == "__main__":
    main()

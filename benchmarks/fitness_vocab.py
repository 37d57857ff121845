"""The search fitness's KL over a vocabulary sample against the exact KL, at a real width.

At the shape's hidden size and vocabulary, random lm_head rows at two temperatures (flat, as a
random-weight model's distribution is; peaked, as a trained model's is), one set of held-back
tokens, and candidates at several distances from the dense model:
  - CPU seconds of one thread (time.process_time: the work, not the neighbours), interleaved
    exact / sampled, for the dense terms (once per search) and one candidate's KL;
  - the sampled KL's relative error against the exact one per candidate, and whether the two
    rank the candidates alike (what the search's choices read).

    python benchmarks/fitness_vocab.py --shape llama-3.2-1b --tokens 512 --reps 3
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

SPREADS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)  # candidate hidden states: dense + spread x noise


def cpu(fn):
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def _fitness(V: int, d: int, temp: float, seed: int):
    from edgeprune.methods import fitness

    g = torch.Generator().manual_seed(seed)
    f = fitness.KLFitness.__new__(fitness.KLFitness)
    f.head = (torch.randn(V, d, generator=g) * temp / d**0.5).to(torch.bfloat16)
    return f, g


def _one(V: int, d: int, temp: float, tokens: int, rows: int, reps: int) -> dict:
    """Timings and errors at one temperature."""
    from edgeprune.methods.fitness import TOKEN_BLOCK
    from edgeprune.methods.fitness_vocab import TOP, SampledKL

    f, g = _fitness(V, d, temp, 0)
    hd = torch.randn(tokens, d, generator=g) * 3
    cands = [hd + s * torch.randn(tokens, d, generator=g) for s in SPREADS]
    sample = SampledKL(f.head, rows)
    t = {"dense_exact": [], "dense_sampled": [], "kl_exact": [], "kl_sampled": []}
    for _ in range(reps):  # interleaved
        s0, dense = cpu(lambda: f._dense_terms(hd))
        s1, terms = cpu(lambda: sample.dense_terms(hd, f._logits, TOKEN_BLOCK))
        t["dense_exact"].append(s0)
        t["dense_sampled"].append(s1)
        t["kl_exact"].append(cpu(lambda: f._cross(cands[2], *dense[:2]))[0])
        t["kl_sampled"].append(cpu(lambda: sample.kl(cands[2], terms))[0])
        print({k: round(v[-1], 3) for k, v in t.items()}, file=sys.stderr, flush=True)
    exact = [float((dense[2] - f._cross(h, *dense[:2])).mean()) for h in cands]
    est = [float(sample.kl(h, terms).mean()) for h in cands]
    top_mass = float(torch.exp(terms[3]).sum(1).mean())
    err = [e / x - 1 for e, x in zip(est, exact)]
    same_order = sorted(range(len(cands)), key=est.__getitem__) == sorted(range(len(cands)), key=exact.__getitem__)
    return dict(temp=temp, top_mass=top_mass, top=TOP, seconds=t, exact=exact, sampled=est, rel_err=err, same_order=same_order)


def _rows(res: list[dict], tokens: int) -> list[dict]:
    med = statistics.median
    out = []
    for r in res:
        s = r["seconds"]
        out.append(dict(dist=f"temperature {r['temp']:g} (top-{r['top']} mass {r['top_mass']:.2f})",
                        dense=f"{med(s['dense_exact']):.2f} / {med(s['dense_sampled']):.2f}",
                        kl=f"{med(s['kl_exact']):.3f} / {med(s['kl_sampled']):.3f}",
                        speed=f"{med(s['kl_exact']) / med(s['kl_sampled']):.1f}x",
                        err=f"{statistics.median(abs(e) for e in r['rel_err']):.2%} / {max(abs(e) for e in r['rel_err']):.2%}",
                        order="yes" if r["same_order"] else "no"))
    return out


def main() -> None:
    from edgeprune.io.synthetic import config_for

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama-3.2-1b")
    p.add_argument("--tokens", type=int, default=512, help="held-back tokens (the search holds back more)")
    p.add_argument("--rows", type=int, default=None, help="sampled rows (default: search's --search-kl-vocab)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--name", default="fitness_vocab")
    a = p.parse_args()
    from edgeprune.methods.registry import SEARCH_KL_VOCAB

    rows = a.rows or SEARCH_KL_VOCAB.default
    torch.set_num_threads(1)
    c = config_for(a.shape, 1)
    V, d = c["vocab_size"], c["hidden_size"]
    res = [_one(V, d, temp, a.tokens, rows, a.reps) for temp in (0.1, 1.0, 3.0)]
    md = markdown_table(_rows(res, a.tokens), [
        ("dist", "dense distribution"), ("dense", "dense terms, CPU s exact / sampled"),
        ("kl", "one candidate's KL, CPU s exact / sampled"), ("speed", "candidate speed-up"),
        ("err", f"relative error, median / max over {len(SPREADS)} candidates"), ("order", "same ranking")])
    md = f"{a.shape}: vocabulary {V}, hidden {d}, {a.tokens} held-back tokens, {rows} sampled rows; median of {a.reps}\n\n" + md
    print(md)
    write_results(a.name, {"command": " ".join(sys.argv), "args": vars(a), "V": V, "d": d, "rows": rows, "results": res}, md)


if __name__ == "__main__":
    main()

"""How many layer passes search's fitness makes, with and without the prefix cache, at real depth.

Timing the fitness at 16-32 layers and Llama-3 width takes hours on 2 cores; the count of
layer passes it makes does not, and a pass is what the cache saves (each costs the same: one
layer over the held-back windows). This replays search's own evolution (`search.evolve`: the
seeds, then (1 + λ) generations of `mutate`) on ladders of the real depth, with a fitness that
counts the passes exactly as `KLFitness._hidden` makes them (distinct prefixes per call, DROP
free, the real `PrefixCache`) and scores a candidate by its ladder error (`Ladders.proxy`), so
the search moves as it does on a model. Measured to decide whether a least-recently-used cache
of prefix outputs across generations pays: it did not (docs/BENCHMARKS.md), so `KLFitness`
has none; a slot is one prefix's activations (16 MB at 1B width and 2,048 held-back tokens).

    python benchmarks/prefix_cache.py --layers 16,32 --evals 128
"""
from __future__ import annotations

import argparse
import random
from collections import OrderedDict
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, write_results  # noqa: E402


def fake_ladders(layers: int, seed: int):
    """Ladders of a Llama layer's shape: 8 attention rungs, 16 FFN rungs, errors rising."""
    from edgeprune.methods.allocate import Ladders

    rng = random.Random(seed)

    def rungs(n, step):
        err, out = 0.0, [{"removed": 0, "error": 0.0, "keep": list(range(n)), "aligned": True}]
        for k in range(1, n):
            err += rng.random() * (1 + k / n)
            out.append({"removed": k * step, "error": err, "keep": list(range(n - k)), "aligned": True})
        return out

    recs = [{"attn": rungs(8, 4), "ffn": rungs(16, 6), "attn_params": 32,
             "drop": {"removed": 32 + 96, "error": 10 + rng.random() * 10}, "importance": rng.random()} for _ in range(layers)]
    return Ladders(recs)


class CountingFitness:
    """`KLFitness`'s pass structure without the passes: counts them, with a least recently used
    cache of `slots` prefixes across calls (0: none, as `KLFitness` is)."""

    def __init__(self, lad, slots: int):
        self.lad, self.passes, self.slots = lad, 0, slots
        self.cache: OrderedDict[tuple, None] = OrderedDict()
        self(([tuple((0, 0) for _ in lad.records)]))  # the dense terms' pass

    def __call__(self, allocs):
        from edgeprune.methods.allocate import DROP

        for i in range(len(self.lad.records)):
            for p in sorted({a[: i + 1] for a in allocs}):
                if p in self.cache:
                    self.cache.move_to_end(p)
                elif p[-1] != DROP:
                    self.passes += 1
                    if self.slots:
                        self.cache[p] = None
                        while len(self.cache) > self.slots:
                            self.cache.popitem(last=False)
        return [self.lad.proxy(a) for a in allocs]


def count(layers: int, evals: int, slots: int, seed: int) -> int:
    from edgeprune.methods import PruneRequest
    from edgeprune.methods.search import evolve

    lad = fake_ladders(layers, seed)
    budget = 0.25 * sum(r["drop"]["removed"] for r in lad.records)
    fit = CountingFitness(lad, slots)
    req = PruneRequest(ratio=0.25, search_evals=evals, seed=seed, progress=False)
    with tempfile.TemporaryDirectory() as d:
        evolve(lad, budget, fit, req, Path(d) / "log.json")
    return fit.passes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="16,32")
    p.add_argument("--evals", type=int, default=128)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--name", default="prefix_cache")
    a = p.parse_args()
    entry = {"32 slots (512 MB at 1B width)": 32, "200 slots": 200, "unbounded": 10**9}
    rows = []
    for L in (int(x) for x in a.layers.split(",")):
        base = [count(L, a.evals, 0, s) for s in range(a.seeds)]
        row = dict(layers=L, none=f"{sum(base) / len(base):.0f}")
        for name, slots in entry.items():
            got = [count(L, a.evals, slots, s) for s in range(a.seeds)]
            row[name] = f"{sum(got) / len(got):.0f} ({1 - sum(got) / sum(base):.0%} fewer)"
        rows.append(row)
    cols = [("layers", "layers"), ("none", "layer passes, no cache")] + [(k, f"with the cache at {k}") for k in entry]
    md = (f"search's fitness, {a.evals} candidates, mean over {a.seeds} seeds; ladders of random errors "
          f"(benchmarks/prefix_cache.py)\n\n" + markdown_table(rows, cols))
    print(md)
    write_results(a.name, {"command": " ".join(sys.argv), "args": vars(a), "rows": rows}, md)


if __name__ == "__main__":
    main()

"""How well the search's fitness predicts held-out perplexity, and which choice rule picks best.

For each model and ratio: the search runs as `plan_search` does (ladders on the first half
of the calibration windows, KL on the held-back half, the portfolio of seeds, evolution);
its candidates are every distinct seed and the best few it evaluated. Each candidate is then
scored several ways and, after the same final re-fit the search applies to its winner,
evaluated by perplexity on the evaluation text:

  - `held`   KL on the held-back windows (today's fitness);
  - `fit`    KL on the fitting windows (the ladders were fitted there: biased, but free);
  - `all`    KL on all calibration windows (`held` and `fit` together);
  - `held+sd` KL on the held-back windows plus one standard deviation across them (a penalty
    on candidates that are good on a few windows only);
  - `fresh`  KL on a second draw of calibration windows (another seed; offsets may overlap): what more
    held-back calibration text would give (not available to the method itself);
  - `top3-fit` / `top3-fresh`: the best three by `held`, then the one `fit` / `fresh` ranks first.

Printed per model and ratio: Spearman's rho of each score against the PPL, and the PPL of the
candidate each rule picks over the best candidate's PPL (1.0 = it picked the best).

    python benchmarks/fitness_gap.py --model ../shared/data/models/stories260K/hf --calib tinystories \
        --eval tinystories --ratios 0.2,0.3 --name stories260K
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, pin_threads, write_results  # noqa: E402

SCORES = ("held", "fit", "all", "held+sd", "fresh")
RULES = SCORES + ("top3-fit", "top3-fresh")


def spearman(x: list[float], y: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for k, i in enumerate(order):
            r[i] = float(k)
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else float("nan")


def candidates(model: str, windows, fresh, ratio: float, work: Path, top: int):
    """The search's candidates (distinct seeds and its `top` best) with their per-window KLs."""
    from edgeprune.methods import PruneRequest
    from edgeprune.methods.allocate import Ladders
    from edgeprune.methods.base import RATIO_TOLERANCE, dense_params
    from edgeprune.methods.fitness import KLFitness
    from edgeprune.methods.ladder import LadderStore
    from edgeprune.methods.search import build_ladders, evolve
    from edgeprune.methods.seeds import portfolio_seeds
    from edgeprune.calibrate.streaming import open_source

    src = open_source(model)
    n = windows.shape[0]
    held = n // 2
    req = PruneRequest(ratio=ratio, progress=False)
    P = dense_params(src.adapter)
    budget, tol = ratio * P, RATIO_TOLERANCE * P
    store = LadderStore(work / "ladder")
    lad = Ladders(build_ladders(src, windows[: n - held], req, store))
    fit = KLFitness(src, windows[n - held:], lad, store, req.batch_size)
    portfolio, _ = portfolio_seeds(src.adapter, src.shapes, lad, req, budget)
    best, log = evolve(lad, budget, fit, req, work / "search.json", tol, portfolio)
    fit.close()
    cache = {tuple(map(tuple, a)): v for a, v in json.loads((work / "search.json").read_text())["evaluated"]}
    names = {}
    for name, s in log["seeds"].items():
        a = next(a for a, v in cache.items() if v == s["kl"])
        names.setdefault(a, name)
    for a in sorted(cache, key=cache.get)[:top]:
        names.setdefault(a, "winner" if a == best else "evolved")
    allocs = list(names)
    per = {}
    for key, w in (("held", windows[n - held:]), ("fit", windows[: n - held]), ("fresh", fresh)):
        f = KLFitness(src, w, lad, store, 1)
        per[key] = f.per_batch(allocs)
        f.close()
    return src, req, lad, budget, tol, [(names[a], a, {k: per[k][j] for k in per}) for j, a in enumerate(allocs)]


def refit_ppl(model: str, src, req, lad, alloc, budget, tol, windows, evals) -> float:
    from edgeprune.io.checkpoint import load
    from edgeprune.measure.evaluate import perplexity
    from edgeprune.methods.allocate import DROP
    from edgeprune.methods.search_refit import final_stage
    from edgeprune.plan import Plan
    from edgeprune.apply.surgery import apply_plan

    plan = Plan(method="search", tensors={}, model_type=src.adapter.family, num_layers=src.num_layers,
                ratio_requested=req.ratio, removed_layers=[i for i, c in enumerate(alloc) if c == DROP])
    final_stage(src, windows, req, plan, lad, alloc, budget, tol)
    return perplexity(apply_plan(load(model), plan), evals, batch_size=8, progress=False)["perplexity"]


def scores(kl: dict[str, list[float]]) -> dict[str, float]:
    mean = statistics.fmean
    return {"held": mean(kl["held"]), "fit": mean(kl["fit"]), "all": mean(kl["held"] + kl["fit"]),
            "held+sd": mean(kl["held"]) + statistics.stdev(kl["held"]), "fresh": mean(kl["fresh"])}


def pick(rule: str, cands: list[dict]) -> dict:
    if rule.startswith("top3-"):
        top = sorted(cands, key=lambda c: c["held"])[:3]
        return min(top, key=lambda c: c[rule[5:]])
    return min(cands, key=lambda c: c[rule])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--ratios", default="0.2,0.3")
    from edgeprune import defaults

    ap.add_argument("--nsamples", type=int, default=defaults.NSAMPLES)
    ap.add_argument("--calib-seq-len", type=int, default=defaults.SEQ_LEN)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=300, help="evaluation windows")
    ap.add_argument("--top", type=int, default=6, help="best evaluated candidates added to the seeds")
    ap.add_argument("--name", default=None)
    a = ap.parse_args()
    pin_threads(1)
    from edgeprune.calibrate import data
    from edgeprune.run.pipeline import calibration, tokenizer_for

    evals = data.evaluation_set(tokenizer_for(a.model), a.eval, a.seq_len, a.max_windows)
    windows = calibration(a.model, a.calib, a.nsamples, a.calib_seq_len, 0)
    fresh = calibration(a.model, a.calib, a.nsamples, a.calib_seq_len, 1)
    rows, detail = [], []
    for ratio in [float(r) for r in a.ratios.split(",")]:
        with tempfile.TemporaryDirectory(prefix="edgeprune-gap-") as tmp:
            src, req, lad, budget, tol, cands = candidates(a.model, windows, fresh, ratio, Path(tmp), a.top)
            table = []
            for name, alloc, kl in cands:
                ppl = refit_ppl(a.model, src, req, lad, alloc, budget, tol, windows, evals)
                table.append({"name": name, "ppl": ppl, **scores(kl), "allocation": [list(c) for c in alloc]})
                print(f"{ratio} {name}: ppl {ppl:.3f} held {table[-1]['held']:.4f} fresh {table[-1]['fresh']:.4f}", file=sys.stderr)
        best = min(c["ppl"] for c in table)
        row = {"ratio": ratio, "candidates": len(table), "best_ppl": best}
        row.update({f"rho:{s}": spearman([c[s] for c in table], [c["ppl"] for c in table]) for s in SCORES})
        row.update({f"pick:{r}": pick(r, table)["ppl"] / best for r in RULES})
        rows.append(row)
        detail.append({"ratio": ratio, "candidates": table})
    cols = [("ratio", "ratio"), ("candidates", "candidates"), ("best_ppl", "best PPL")]
    cols += [(f"rho:{s}", f"rho {s}") for s in SCORES] + [(f"pick:{r}", f"pick {r} / best") for r in RULES]
    head = (f"Model `{a.model}`; calibration {a.calib} ({a.nsamples} x {a.calib_seq_len}, seed 0; fresh: seed 1); "
            f"PPL on {evals.shape[0]} windows of {a.seq_len} of {a.eval}'s eval portion after the final re-fit; "
            "rho: Spearman of the score against PPL over the candidates.\n\n")
    table = head + markdown_table(rows, cols)
    print(table)
    write_results(f"fitness-gap-{a.name or Path(a.model).name}", {"args": vars(a), "rows": rows, "detail": detail}, table)


if __name__ == "__main__":
    main()

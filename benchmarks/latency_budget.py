"""Latency-budgeted plans against parameter-budgeted ones at the same measured speed.

    python benchmarks/latency_budget.py [--models demo,../shared/data/models/stories260K/hf]
        [--speedups 1.1,1.2,1.3] [--methods search,slimgpt] [--target cpu-x86] [--tries 3] [--name NAME]

For every model and speedup S: one build with `--speedup S` (search, every artifact runtime
binding), then for each parameter-budgeted method builds at growing ratios, starting at the
ratio the latency plan achieved, until one is measured at least as fast (the least speedup over
the target's artifacts, each build's own interleaved dense/pruned measurement) as the latency
plan. That ratio's PPL is compared with the latency plan's: "lower" / "higher" when the two
speedup intervals overlap (the same speed within the noise), "inconclusive" when the speeds
could not be matched within --tries or the parameter plan landed clearly faster (its PPL then
buys speed the latency plan did not ask for). Each cell: PPL, measured speedup [95%], bytes.
Builds go to benchmarks/work/latency_budget/ (git-ignored); the table and JSON to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, pin_threads, write_results  # noqa: E402

WORK = Path(__file__).resolve().parent / "work" / "latency_budget"
GROW = 1.3  # the next ratio tried when a parameter plan is measured slower than the latency plan


def measured(profile: dict) -> dict:
    """The build's point: first artifact's PPL, the binding (least) speedup and its interval, bytes."""
    arts = profile["artifacts"]
    slow = min(arts, key=lambda a: a["speedup"]["decode_measured"])
    return {"ppl": arts[0]["perplexity"]["pruned"], "speedup": slow["speedup"]["decode_measured"],
            "interval": slow["speedup"]["decode_interval"], "binding": f"{slow['format']} {slow['dtype']}",
            "bytes": arts[0]["bytes"], "ratio": profile["prune"]["ratio_achieved"],
            "per_artifact": {f"{a['format']} {a['dtype']}": [a["speedup"]["decode_measured"], a["speedup"]["decode_interval"],
                                                             a["speedup"]["status"]] for a in arts}}


def one(model, out: Path, target: str, calib, **budget) -> dict:
    from edgeprune.run.build import build

    if not (out / "profile.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)  # the build refuses a missing parent, as it should for a user
        build(model=model, target=target, out=str(out), force=True, calib=calib, quiet=True, **budget)
    return measured(json.loads((out / "profile.json").read_text()))


def match(model, name: str, target: str, calib, method: str, want: dict, tries: int) -> tuple[dict | None, list]:
    """Builds of `method` at growing ratios until one is at least as fast as `want`."""
    r, seen = min(0.9, round(want["ratio"], 3)), []
    for _ in range(tries):
        got = one(model, WORK / name / f"{method}-r{r:g}", target, calib, ratio=r, method=method)
        seen.append(got)
        if got["speedup"] >= want["speedup"]:
            return got, seen
        r = min(0.9, round(r * GROW, 3))
    return None, seen


def verdict(lat: dict, par: dict | None) -> str:
    if par is None:
        return "inconclusive (speed not matched)"
    lo, hi = par["interval"]
    if lat["interval"][1] < lo:  # the parameter plan is clearly faster: not the same speed
        return "inconclusive (parameter plan faster)"
    return "lower" if lat["ppl"] < par["ppl"] else "higher"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=f"demo,{Path(__file__).resolve().parents[2] / 'shared/data/models/stories260K/hf'}")
    ap.add_argument("--calib", default=None, help="calibration for the models given by path (default: the build's)")
    ap.add_argument("--speedups", default="1.1,1.2,1.3")
    ap.add_argument("--methods", default="search,slimgpt")
    ap.add_argument("--target", default="cpu-x86")
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--name", default=None, help="results as latency_budget-NAME.{md,json} (default latency_budget)")
    a = ap.parse_args()
    pin_threads(1)
    from edgeprune.errors import EdgePruneError

    rows, raw = [], []
    for spec in a.models.split(","):
        model = None if spec == "demo" else spec
        name = "demo" if model is None else Path(spec).parent.name if Path(spec).name == "hf" else Path(spec).name
        calib = a.calib or ("tinystories" if model and "stories" in spec else None)
        for S in (float(x) for x in a.speedups.split(",")):
            try:
                lat = one(model, WORK / name / f"speedup-{S:g}", a.target, calib, speedup=S)
            except EdgePruneError as e:  # an unreachable budget is refused with the reachable range: a row says so
                print(f"[latency_budget] {name} --speedup {S:g}: refused: {e}", file=sys.stderr)
                rows.append({"model": name, "S": S, "verdict": f"refused: {e}"})
                raw.append({"model": name, "speedup": S, "refused": str(e)})
                continue
            for method in a.methods.split(","):
                par, seen = match(model, name, a.target, calib, method, lat, a.tries)
                raw.append({"model": name, "speedup": S, "latency": lat, "method": method, "matched": par, "tried": seen})
                rows.append({"model": name, "S": S, "lat_ppl": lat["ppl"],
                             "lat_speed": f"{lat['speedup']:.2f} [{lat['interval'][0]:.2f}, {lat['interval'][1]:.2f}]",
                             "lat_bytes": lat["bytes"], "method": method,
                             "ratio": par["ratio"] if par else None, "par_ppl": par["ppl"] if par else None,
                             "par_speed": f"{par['speedup']:.2f} [{par['interval'][0]:.2f}, {par['interval'][1]:.2f}]" if par else None,
                             "par_bytes": par["bytes"] if par else None, "verdict": verdict(lat, par)})
    cols = [("model", "model"), ("S", "--speedup"), ("lat_ppl", "latency plan PPL"), ("lat_speed", "its speedup [95%]"),
            ("lat_bytes", "bytes"), ("method", "parameter-budgeted"), ("ratio", "ratio at equal speed"),
            ("par_ppl", "PPL"), ("par_speed", "speedup [95%]"), ("par_bytes", "bytes"), ("verdict", "latency plan PPL")]
    title = (f"Latency-budgeted search vs parameter-budgeted methods at equal measured speed, target {a.target} "
             "(speedup: the least over the target's artifacts, each build's interleaved measurement; PPL: first artifact)")
    table = title + "\n\n" + markdown_table(rows, cols)
    print(table)
    print(write_results(f"latency_budget-{a.name}" if a.name else "latency_budget",
                        {"target": a.target, "rows": rows, "raw": raw}, table))


if __name__ == "__main__":
    main()

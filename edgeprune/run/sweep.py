"""`edgeprune sweep`: the trade-off drawn. One build per budget (speedups and ratios) into
`<out>/<budget>/`, sharing what does not depend on the budget: the search's candidate ladders
(built on the dense model's inputs, so one build of them serves every budget) and the dense
reference exports (linked, not exported again). Each point is measured against the dense model
in the build's own interleaved check. Writes `sweep.json`, `sweep.md` and `pareto.png`
(perplexity against measured decode ms/token with interval bars, marker size by artifact bytes,
parameter-budgeted points beside latency-budgeted ones, the target's default point marked).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..io.atomic import write_text
from ..io.outdir import INCOMPLETE, OWNER, check_output_dir, claim
from ..errors import EdgePruneError


def log(msg: str) -> None:
    print(f"[edgeprune sweep] {msg}", file=sys.stderr)


def budgets_of(speedups: list[float], ratios: list[float]) -> list[tuple[str, float]]:
    from ..measure.budget import parse

    out = [("speedup", s) for s in speedups] + [("ratio", r) for r in ratios]
    for kind, v in out:
        parse(**{kind: v})  # each validated before any work
    if not out:
        raise EdgePruneError("no budget to sweep; pass --speedups 1.1,1.2 and/or --ratios 0.1,0.2")
    return out


def sweep(model: str | None, target: str, speedups: list[float], ratios: list[float], out: str, force: bool = False,
          resume: bool = False, **build_kw) -> dict:
    """Build at every budget, then write sweep.json, sweep.md and pareto.png into `out`."""

    points_asked = budgets_of(speedups, ratios)
    out_dir = Path(out).absolute()
    refill = resume and (out_dir / "sweep.json").is_file()  # --resume also refills a finished sweep's refused points
    if not refill:
        check_output_dir(out_dir, force=force, resume=resume)
    # under the lock, the same checks again (a refill takes what is there: as with --force, nothing is refused)
    lock, _ = claim(out_dir, force or refill, resume, resuming=resume)
    try:
        (out_dir / INCOMPLETE).write_text("edgeprune sweep in progress\n")
        (out_dir / OWNER).write_text("edgeprune sweep\n")
        return _sweep_points(model, target, points_asked, out_dir, resume, build_kw)
    finally:
        lock.release()


def _sweep_points(model: str | None, target: str, points_asked: list, out_dir: Path, resume: bool,
                  build_kw: dict) -> dict:
    """Every point's build (a resumed point continues; a finished one is read back), then the
    sweep's summary, table and plot."""
    from .build import build

    t0, first, points = time.perf_counter(), None, []
    if not build_kw.get("runtime_threads"):  # every point measured alike (a point's own pick follows the load)
        build_kw["runtime_threads"] = _recorded_threads(out_dir, points_asked) if resume else None
        if not build_kw["runtime_threads"]:
            from ..measure.latency import free_cores

            build_kw["runtime_threads"] = free_cores()
    log(f"runtime threads: {build_kw['runtime_threads']} for every point's latency model and speedup check")
    for k, (kind, v) in enumerate(points_asked):
        d = out_dir / f"{kind}-{v:g}"
        done = time.perf_counter() - t0
        eta = f", about {done / k * (len(points_asked) - k):.0f} s left" if k else ""
        log(f"point {k + 1}/{len(points_asked)}: --{kind.replace('_', '-')} {v:g} -> {d.name} ({done:.0f} s so far{eta})")
        try:
            if not (d / "profile.json").is_file() or (d / INCOMPLETE).exists():
                build(model=model, target=target, out=str(d), resume=d.exists(), force=False,
                      ladder_dir=str(out_dir / "ladder"), reference_from=str(first) if first else None,
                      **{kind: v}, **build_kw)
            profile = json.loads((d / "profile.json").read_text())
        except EdgePruneError as e:  # an unreachable budget is a point the sweep reports, not the sweep's end
            log(f"point {d.name} refused: {e}")
            points.append({"budget": {"kind": kind, "requested": v}, "dir": d.name, "refused": str(e)})
            continue
        first = first or d
        points.append(point_of(profile, kind, v, d.name))
    res = summarise(points, json.loads((first / "profile.json").read_text()) if first else None, target, model)
    res["wall_seconds"] = time.perf_counter() - t0
    write_text(out_dir / "sweep.json", json.dumps(res, indent=1))  # atomic: --resume and readers trust it
    write_text(out_dir / "sweep.md", markdown(res))
    res["plots"] = [p for p in [plot(res, out_dir / "pareto.png")] if p]
    write_text(out_dir / "sweep.json", json.dumps(res, indent=1))
    (out_dir / INCOMPLETE).unlink(missing_ok=True)
    return res


def _recorded_threads(out_dir: Path, points_asked) -> int | None:
    """The runtime threads an interrupted sweep's points were measured with (their build
    state records them): a resumed sweep keeps them, so its points stay comparable."""
    for kind, v in points_asked:
        state = out_dir / f"{kind}-{v:g}" / "build_state.json"
        try:
            got = json.loads(state.read_text())["args"].get("runtime_threads")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if got:
            return int(got)
    return None


def point_of(profile: dict, kind: str, v: float, name: str) -> dict:
    """One budget's measured point per artifact: PPL, decode ms/token with its interval, bytes, check."""
    arts = []
    for a in profile["artifacts"]:
        dense = a["latency"]["dense"]["decode_ms_per_token_median"]
        sp = a["speedup"]
        lo, hi = sp["decode_interval"]
        ms, m = a["latency"]["pruned"]["decode_ms_per_token_median"], sp["decode_measured"]
        arts.append({"artifact": f"{a['format']} {a['dtype']}", "bytes": a["bytes"], "ppl": a["perplexity"]["pruned"],
                     "ppl_dense": a["perplexity"]["dense"], "decode_ms": a["latency"]["pruned"]["decode_ms_per_token_median"],
                     "decode_ms_dense": dense, "decode_ms_interval": [ms * m / hi, ms * m / lo] if lo > 0 else None,  # the paired ratio's relative interval
                     "speedup": sp["decode_measured"], "speedup_interval": [lo, hi], "ideal": sp["decode_ideal"],
                     "status": sp["status"], "bytes_dense": a["reference_dense"]["bytes"],
                     "predicted": a.get("latency_predicted")})
    return {"budget": {"kind": kind, "requested": v}, "dir": name, "ratio": profile["prune"]["ratio_achieved"],
            "method": profile["prune"]["method"], "layers_removed": profile["prune"]["layers_removed"], "artifacts": arts}


def summarise(points: list[dict], first: dict | None, target: str, model) -> dict:
    from .targets import load_target

    tgt = load_target(target)
    default = ("speedup", tgt.speedup) if tgt.speedup is not None else ("ratio", tgt.ratio)
    ref = {}
    for p in points:
        p["chosen"] = (p["budget"]["kind"], p["budget"]["requested"]) == default
        for a in p.get("artifacts", []):
            # every build timed its own dense model on a noisy machine: the plot puts all points on the
            # first one's dense median, each at its own paired speedup (and interval)
            d = ref.setdefault(a["artifact"], a["decode_ms_dense"])
            lo, hi = a["speedup_interval"]
            a["plot_ms"] = {"dense": d, "pruned": d / a["speedup"], "interval": [d / hi, d / lo] if lo > 0 else None}
    host = first["provenance"]["host"] if first else {}
    return {"target": tgt.name, "model": str(model or "the embedded demo model"), "host": host,
            "default_budget": {"kind": default[0], "requested": default[1]}, "points": points,
            "measured": "decode ms/token: median over each build's interleaved dense/pruned repetitions; interval: "
                        "that median scaled by the 95% bootstrap interval of the paired speedup (relative to its median)"}


def markdown(res: dict) -> str:
    lines = [f"# edgeprune sweep: {res['model']} on {res['target']}", "",
             f"Measured on {res['host'].get('cpu', '?')} (the build host). {res['measured']}.", "",
             "| budget | ratio | artifact | bytes | PPL | decode ms/token [95%] | speedup [95%] / ideal | check | chosen |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in res["points"]:
        b = f"{p['budget']['kind']} {p['budget']['requested']:g}"
        if p.get("refused"):
            lines.append(f"| {b} | - | - | - | - | - | - | refused: {p['refused']} | |")
            continue
        for a in p["artifacts"]:
            iv = a["decode_ms_interval"] or [float("nan")] * 2
            lines.append(f"| {b} | {p['ratio']:.3f} | {a['artifact']} | {a['bytes']:,} | {a['ppl']:.3f} | {a['decode_ms']:.3f} "
                         f"[{iv[0]:.3f}, {iv[1]:.3f}] | {a['speedup']:.2f}x [{a['speedup_interval'][0]:.2f}, "
                         f"{a['speedup_interval'][1]:.2f}] / {a['ideal']:.2f}x | {a['status']} | {'**yes**' if p['chosen'] else ''} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> str | None:
    """pareto.png: PPL against measured decode ms/token per artifact (one panel each)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    pts = [p for p in res["points"] if not p.get("refused")]
    if not pts:
        return None
    names = [a["artifact"] for a in pts[0]["artifacts"]]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.4), squeeze=False)
    big = max(a["bytes_dense"] for p in pts for a in p["artifacts"])
    for ax, name in zip(axes[0], names):
        for p in pts:
            a = next(x for x in p["artifacts"] if x["artifact"] == name)
            x, iv = a["plot_ms"]["pruned"], a["plot_ms"]["interval"] or [a["plot_ms"]["pruned"]] * 2
            speed = p["budget"]["kind"] != "ratio"
            ax.errorbar(x, a["ppl"], xerr=[[max(0.0, x - iv[0])], [max(0.0, iv[1] - x)]], fmt="none",
                        ecolor="gray", capsize=3, zorder=1)
            ax.scatter(x, a["ppl"], s=30 + 300 * a["bytes"] / big, marker="o" if speed else "s",
                       color="tab:green" if speed else "tab:blue", edgecolor="black" if p["chosen"] else "none",
                       linewidth=2, zorder=2, label="latency budget" if speed else "parameter budget")
            ax.annotate(f"{p['budget']['kind'][0]}{p['budget']['requested']:g}", (x, a["ppl"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        a0 = pts[0]["artifacts"][names.index(name)]
        ax.scatter(a0["plot_ms"]["dense"], a0["ppl_dense"], s=30 + 300 * a0["bytes_dense"] / big, marker="*", color="gray",
                   label="dense", zorder=2)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7)
        ax.set_xlabel("decode ms/token (dense / paired speedup, 95%)", fontsize=8)
        ax.set_ylabel("perplexity (through the runtime)")
        ax.set_title(name, fontsize=9)
    fig.suptitle(f"{res['target']} budgets on {res['host'].get('cpu', '?')[:48]} (build host); "
                 "marker size: artifact bytes; ringed: the target's default", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name

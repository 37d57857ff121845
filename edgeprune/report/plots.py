"""latency.png and perplexity.png: the build's measurements drawn so that a picture never says
something the text does not. No torch (bench redraws them on the device).

latency.png, one panel per artifact, a linear ms/token axis, a pair of bars per measurement
(the build host's, then the last `edgeprune bench`'s when there is one, then the device
estimate): the dense bar is the median of the dense runs, the pruned bar is dense / the
speedup check's paired speedup, and the pruned whiskers are the check's 95% interval
(`speedup.decode_bars`), so a pruned bar is shorter exactly when the check measured a speedup.

perplexity.png: dense vs pruned through each artifact's runtime, whiskers the 95% bootstrap
interval over the evaluation windows (`evaluate.ppl_intervals`), and the target's quality bar.
"""
from __future__ import annotations

from pathlib import Path

from ..measure.speedup import decode_bars

DENSE, PRUNED, ALARM, LIMIT = "#8c8c8c", "tab:green", "tab:red", "black"
LABEL = {"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85}  # a value label stays legible over a line


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def heading(profile: dict, method: bool = True) -> str:
    """Method, target and host(s), for every figure's title."""
    pr, host = profile["prune"], profile["provenance"]["host"]["cpu"]
    benches = profile.get("measured_on_device") or []
    on = f"; bench on {benches[-1]['host']['cpu']}" if benches else ""
    return ((f"{pr['method']}, {pr['ratio_achieved']:.0%} of non-embedding parameters removed; " if method else "")
            + f"target {profile['target']['name']}; build host {host}{on}")


def latency_groups(profile: dict) -> list[dict]:
    """What latency.png draws, per artifact: its measurement pairs (`decode_bars`) in order."""
    est = {(e["format"], e["dtype"]): e for e in profile.get("device_estimate", {}).get("artifacts", [])}
    bench = (profile.get("measured_on_device") or [None])[-1]
    out = []
    for a in profile["artifacts"]:
        pairs = [{"where": "build host", "kind": "measured",
                  **decode_bars(a["latency"]["dense"]["decode_ms_per_token_runs"], a["speedup"])}]
        m = next((m for m in (bench or {}).get("artifacts", []) if (m["format"], m["dtype"]) == (a["format"], a["dtype"])), None)
        if m:
            where = "bench (build host)" if bench.get("same_host_as_build") else "bench on device"
            pairs.append({"where": where, "kind": "measured", **decode_bars(m["latency_dense"]["decode_ms_per_token_runs"],
                                                                             m["speedup"])})
        e = est.get((a["format"], a["dtype"]))
        if e:
            rel = e.get("relative_error") or 0.0
            d, p = e["decode_ms_per_token_dense"], e["decode_ms_per_token_pruned"]
            pairs.append({"where": f"estimate for {profile['target']['name']}", "kind": "estimate", "dense": d,
                          "pruned": p, "dense_interval": [d * (1 - rel), d * (1 + rel)],
                          "pruned_interval": [p * (1 - rel), p * (1 + rel)], "relative_error": rel, "speedup": d / p})
        out.append({"label": f"{a['format']} {a['dtype']}", "pairs": pairs})
    return out


def _tick(p: dict) -> str:
    if p["kind"] == "estimate":
        return f"{p['where']}\n{p['speedup']:.2f}x, ±{p['relative_error']:.0%}\n(not measured)"
    lo, hi = p["speedup_interval"]
    return f"{p['where']}\n{p['speedup']:.2f}x [{lo:.2f}, {hi:.2f}]\n{p['status']} (ideal {p['ideal']:.2f}x)"


def plot_latency(build_dir: Path, profile: dict) -> str | None:  # long: bars, whiskers, marks, labels
    plt = _plt()
    groups = latency_groups(profile)
    if plt is None or not groups:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n_pairs = max(len(g["pairs"]) for g in groups)
    cols = min(len(groups), 3 if n_pairs <= 2 else 2)  # panels wrap: a row stays readable on a screen
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.5, (2.2 * n_pairs + 1) * cols), 4.2 * rows + 1.0), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    for ax, g in zip(axes.flat, groups):
        top = 0.0
        for x, p in enumerate(g["pairs"]):
            hatch = "//" if p["kind"] == "estimate" else None
            for off, side, color in ((-0.2, "dense", DENSE), (0.2, "pruned", PRUNED)):
                v, (lo, hi) = p[side], p[f"{side}_interval"]
                ax.bar(x + off, v, 0.38, color=color, hatch=hatch, edgecolor="white" if hatch else color,
                       alpha=0.55 if hatch else 1.0)
                ax.errorbar(x + off, v, yerr=[[v - lo], [hi - v]], fmt="none", ecolor="black", capsize=4, lw=1)
                mark = p.get("ideal_pruned") or 0 if side == "pruned" else 0  # above the ideal line too
                ax.text(x + off, max(v, hi, mark) * 1.02, f"{v:.3g}", ha="center", va="bottom", fontsize=7, zorder=5, bbox=LABEL)
                top = max(top, hi, v)
            if p.get("ideal_pruned") is not None:
                ax.hlines(p["ideal_pruned"], x + 0.01, x + 0.39, colors="black", linestyles="--", lw=1.5)
                top = max(top, p["ideal_pruned"])
        ax.set_xticks(range(len(g["pairs"])), [_tick(p) for p in g["pairs"]], fontsize=7)
        ax.set_ylim(0, top * 1.2)
        ax.set_title(g["label"], fontsize=10)
        ax.set_ylabel("decode ms/token (lower is faster)")
    handles = [Patch(color=DENSE, label="dense: median of its runs (whisker: 95% interval of the median)"),
               Patch(color=PRUNED, label="pruned: dense / the check's paired speedup (whisker: the check's 95% interval)"),
               Line2D([], [], color="black", ls="--", label="ideal pruned: dense / ideal speedup (bytes read per token; under a speed budget, the speedup asked for)"),
               Patch(facecolor=PRUNED, alpha=0.55, hatch="//", edgecolor="white",
                     label="device estimate (hatched; whisker: the model's error on the build host)")]
    spare = list(axes.flat[len(groups):])
    if spare:  # the empty panel of a wrapped grid holds the legend
        spare[-1].legend(handles=handles, loc="center", fontsize=8, frameon=False)
    else:
        fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"decode latency, dense vs pruned\n{heading(profile)}", fontsize=9)
    fig.tight_layout(rect=(0, 0 if spare else 0.9 / (4.2 * rows + 1.0), 1, 1))
    fig.savefig(build_dir / "latency.png", dpi=90)
    plt.close(fig)
    return "latency.png"


def plot_perplexity(build_dir: Path, profile: dict) -> str | None:  # long: bars, whiskers, bar line, labels
    plt = _plt()
    arts = profile["artifacts"]
    if plt is None or not arts:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from ..run.target_keys import value

    bar = float((profile.get("verdict") or {}).get("max_ppl_ratio") or value(profile["target"], "quality.max_ppl_ratio"))
    fig, ax = plt.subplots(figsize=(max(6.5, 2.4 * len(arts) + 1.5), 4.8))
    top = 0.0
    for x, a in enumerate(arts):
        pp = a["perplexity"]
        if pp.get("dense") is None or pp.get("pruned") is None:
            continue
        over = pp["ratio"] > bar
        for off, side, color in ((-0.2, "dense", DENSE), (0.2, "pruned", ALARM if over else PRUNED)):
            v = pp[side]
            lo, hi = pp.get(f"{side}_interval") or (v, v)
            ax.bar(x + off, v, 0.38, color=color)
            ax.errorbar(x + off, v, yerr=[[v - lo], [hi - v]], fmt="none", ecolor="black", capsize=4, lw=1)
            ax.text(x + off, hi * 1.01, f"{v:.3g}", ha="center", va="bottom", fontsize=7, zorder=5, bbox=LABEL)
            top = max(top, hi)
        limit = pp["dense"] * bar
        ax.hlines(limit, x - 0.39, x + 0.39, colors=LIMIT, linestyles=":", lw=2, zorder=3)
        top = max(top, limit)
    ticks = []
    for a in arts:
        pp, iv = a["perplexity"], a["perplexity"].get("ratio_interval")
        ratio = "-" if pp.get("ratio") is None else f"x{pp['ratio']:.3f}" + (f" [{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "")
        ticks.append(f"{a['format']} {a['dtype']}\npruned/dense {ratio}")
    ax.set_xticks(range(len(arts)), ticks, fontsize=8)
    ax.set_ylim(0, top * 1.15)
    proto = (arts[0]["perplexity"].get("protocol") or {})
    ax.set_ylabel("perplexity (lower is better)")
    handles = [Patch(color=DENSE, label="dense"), Patch(color=PRUNED, label="pruned, within the bar"),
               Patch(color=ALARM, label="pruned, past the bar (quality alarm)"),
               Line2D([], [], color=LIMIT, ls=":", lw=2, label=f"quality bar: x{bar:g} the dense perplexity"),
               Line2D([], [], color="black", marker="|", ls="none", label="whisker: 95% bootstrap interval over the windows")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"perplexity through each artifact's runtime ({proto.get('data')} evaluation portion, "
                 f"{proto.get('windows')} windows of {proto.get('seq_len')} tokens)\n{heading(profile)}", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(build_dir / "perplexity.png", dpi=90)
    plt.close(fig)
    return "perplexity.png"


def draw(build_dir: Path, profile: dict) -> list[str]:
    """The measurement figures (build and bench call this): their names, for profile["plots"]."""
    return [n for n in (plot_latency(build_dir, profile), plot_perplexity(build_dir, profile)) if n]

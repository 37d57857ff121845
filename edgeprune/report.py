"""profile.json (versioned schema) -> report.md and plots. No torch needed.

Schema version 1; the keys scripts may rely on are documented in README.md ("profile.json").
"""
from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = 1


def _status(sp: dict) -> str:
    st = sp.get("status") or ("pass" if sp.get("passed") else "miss")
    return {"pass": "pass", "miss": "**MISS**", "inconclusive": "inconclusive"}.get(st, st)


def _interval(sp: dict) -> str:
    iv = sp.get("decode_interval")
    return f"[{iv[0]:.2f}, {iv[1]:.2f}]" if iv else ""


def _fmt(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


def write_report(build_dir: Path, profile: dict) -> Path:
    lines = [f"# edgeprune build report: {profile['target']['name']}", ""]
    pr = profile["prune"]
    lines += [
        f"- model: `{profile['checkpoint'].get('base_model')}` -> `{profile['checkpoint']['path']}`",
        f"- method **{pr['method']}**, ratio requested {pr['ratio_requested']} ({pr.get('ratio_reason', '')}), "
        f"achieved {pr['ratio_achieved']:.4f} of non-embedding parameters",
        f"- parameters: {pr['params_dense']:,} -> {pr['params_pruned']:,} non-embedding; "
        f"{pr['params_dense_total']:,} -> {pr['params_pruned_total']:,} total",
        f"- prune-time peak memory {pr['peak_memory_bytes'] / 2**20:.1f} MiB "
        f"({pr['peak_memory_above_baseline_bytes'] / 2**20:.1f} MiB above the process baseline), {pr['wall_seconds']:.1f} s",
        f"- host: {profile['provenance']['host']}",
        "",
        "## Artifacts",
        "",
        "| format | dtype | bytes | verified | PPL dense | PPL pruned | decode ms/tok dense (min/med) | decode ms/tok pruned (min/med) | prefill tok/s dense→pruned | speedup measured [95% interval] / ideal | check |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in profile["artifacts"]:
        ld, lp = a["latency"]["dense"], a["latency"]["pruned"]
        sp = a["speedup"]
        lines.append(
            f"| {a['format']} | {a['dtype']} | {a['bytes']:,} | {a['verify'].get('passed')} | "
            f"{_fmt(a['perplexity']['dense'], '.3f')} | {_fmt(a['perplexity']['pruned'], '.3f')} | "
            f"{ld['decode_ms_per_token_min']:.3f} / {ld['decode_ms_per_token_median']:.3f} | "
            f"{lp['decode_ms_per_token_min']:.3f} / {lp['decode_ms_per_token_median']:.3f} | "
            f"{ld['prefill_tokens_per_s_max']:.0f} → {lp['prefill_tokens_per_s_max']:.0f} | "
            f"{sp['decode_measured']:.2f} {_interval(sp)} / {sp['decode_ideal']:.2f} | {_status(sp)} |"
        )
    p0 = profile["artifacts"][0]["perplexity"]["protocol"] if profile["artifacts"] else {}
    lines += ["", f"Perplexity protocol: {json.dumps(p0)}. Latency protocol: "
              f"{json.dumps(profile['artifacts'][0]['latency']['pruned'].get('protocol')) if profile['artifacts'] else '-'}."]
    warns = [a for a in profile["artifacts"] if not a["speedup"].get("passed")]
    if warns:
        lines += ["", "> **Speedup check not passed** (advisory): " + "; ".join(
            f"{a['format']} {a['dtype']}: {_status(a['speedup'])}, {a['speedup'].get('reason', '')}"
            for a in warns) + ". Tiny models are dominated by per-token overhead, not weight reads."]
    est = profile["device_estimate"]
    lines += ["", f"## Device estimate for {profile['target']['name']} (an ESTIMATE from spec bandwidth and compute, not a measurement)", "",
              "| artifact | decode ms/token dense → pruned | prefill tok/s dense → pruned |", "|---|---|---|"]
    for e in est["artifacts"]:
        lines.append(f"| {e['format']} {e['dtype']} | {e['decode_ms_per_token_dense']:.3f} → {e['decode_ms_per_token_pruned']:.3f} | "
                     f"{e['prefill_tokens_per_s_dense']:.0f} → {e['prefill_tokens_per_s_pruned']:.0f} |")
    est_by = {(e["format"], e["dtype"]): e for e in est["artifacts"]}
    for m in profile.get("measured_on_device", []):
        same = " (the build host, not a separate device)" if m.get("same_host_as_build") else ""
        lines += ["", f"## Measured on {m['host']['cpu']}{same} by edgeprune bench, {m['time']}", "",
                  "| artifact | decode ms/token dense → pruned (median) | speedup [95% interval] / ideal | check | "
                  "prefill tok/s pruned (max) | estimate decode ms/token |", "|---|---|---|---|---|---|"]
        for a in m["artifacts"]:
            e = est_by.get((a["format"], a["dtype"]), {})
            lat, sp = a["latency"], a.get("speedup") or {}
            dense = _fmt((a.get("latency_dense") or {}).get("decode_ms_per_token_median"), ".3f")
            lines.append(f"| {a['format']} {a['dtype']} | {dense} → {lat['decode_ms_per_token_median']:.3f} | "
                         f"{_fmt(sp.get('decode_measured'), '.2f')} {_interval(sp)} / {_fmt(sp.get('decode_ideal'), '.2f')} | "
                         f"{_status(sp) if sp else '-'} | {lat['prefill_tokens_per_s_max']:.0f} | "
                         f"{_fmt(e.get('decode_ms_per_token_pruned'), '.3f')} |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in profile.get("plots", [])]
    lines += ["", "## Provenance", "", "```json", json.dumps(profile["provenance"], indent=1), "```", ""]
    path = build_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def plot_latency_and_ppl(build_dir: Path, profile: dict) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    arts = profile["artifacts"]
    if not arts:
        return []
    labels = [f"{a['format']} {a['dtype']}" for a in arts]
    x = range(len(arts))
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].bar([i - 0.2 for i in x], [a["latency"]["dense"]["decode_ms_per_token_min"] for a in arts], 0.4, label="dense")
    ax[0].bar([i + 0.2 for i in x], [a["latency"]["pruned"]["decode_ms_per_token_min"] for a in arts], 0.4, label="pruned")
    ax[0].set_xticks(list(x), labels)
    ax[0].set_ylabel("decode ms/token (min)")
    ax[0].legend()
    ax[1].bar([i - 0.2 for i in x], [a["perplexity"]["dense"] or 0 for a in arts], 0.4, label="dense")
    ax[1].bar([i + 0.2 for i in x], [a["perplexity"]["pruned"] or 0 for a in arts], 0.4, label="pruned")
    ax[1].set_xticks(list(x), labels)
    ax[1].set_ylabel("perplexity (through the runtime)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(build_dir / "latency_ppl.png", dpi=80)
    plt.close(fig)
    return ["latency_ppl.png"]

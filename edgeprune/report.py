"""profile.json (versioned schema) -> report.md and plots. No torch needed.

Schema version 1; the keys scripts may rely on are documented in README.md ("profile.json").
"""
from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = 1


def _verdict(profile: dict) -> str:
    """The one paragraph a newcomer reads first: speed, quality, memory fit."""
    host = profile["provenance"]["host"]["cpu"]
    parts = []
    for a in profile["artifacts"]:
        sp, pp = a["speedup"], a["perplexity"]
        iv = sp.get("decode_interval") or [sp["decode_measured"]] * 2
        dense_b = (a.get("reference_dense") or {}).get("bytes")
        choice = a.get("dtype_choice") or {}
        parts.append(f"{a['format']} {a['dtype']}"
                     + (f" (instead of {choice['requested']}: {choice['why']})" if choice.get("requested", a["dtype"]) != a["dtype"] else "")
                     + f": {_fmt(dense_b, ',')} -> {a['bytes']:,} B, {speed_words(sp)} (95% interval "
                     f"{iv[0]:.2f}-{iv[1]:.2f}x, ideal {sp['decode_ideal']:.2f}x: {sp.get('status', 'n/a')}), perplexity "
                     f"{_fmt(pp.get('dense'), '.2f')} -> {_fmt(pp.get('pruned'), '.2f')} "
                     f"(x{_fmt(pp.get('ratio'), '.3f')})")
    tgt = profile["target"]
    budget = tgt.get("memory", {}).get("budget_bytes")
    biggest = max((a["bytes"] for a in profile["artifacts"]), default=0)
    fit = (f"the largest artifact ({biggest / 1e9:.3g} GB) {'fits' if budget and biggest <= budget else 'does NOT fit'} "
           f"{tgt['name']}'s {budget / 1e9:.3g} GB budget" if budget else "")
    return (f"**Verdict.** Measured on {host} (the build host; run `edgeprune bench` on the device itself): "
            + "; ".join(parts) + (f". Memory: {fit} (KV cache not included)." if fit else "."))


def speed_words(sp: dict) -> str:
    """The decode speed in words. "faster" only when the measurement is above 1 and the ideal
    allows a speedup at all: a pruned artifact that reads more bytes than the dense one
    (ideal below 1) is never called faster, whatever a noisy run measured."""
    m, ideal = sp["decode_measured"], sp["decode_ideal"]
    if ideal < 1:
        return (f"decode {m:.2f}x the dense speed, NOT faster: the pruned artifact reads more bytes per token "
                f"than the dense one (ideal {ideal:.2f}x)")
    if m > 1:
        return f"decode {m:.2f}x faster"
    return f"decode {m:.2f}x the dense speed (not faster)"


def _status(sp: dict) -> str:
    st = sp.get("status") or ("pass" if sp.get("passed") else "miss")
    return {"pass": "pass", "miss": "**MISS**", "inconclusive": "inconclusive"}.get(st, st)


def _interval(sp: dict) -> str:
    iv = sp.get("decode_interval")
    return f"[{iv[0]:.2f}, {iv[1]:.2f}]" if iv else ""


def _fmt(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


def write_report(build_dir: Path, profile: dict) -> Path:  # long: the report in reading order
    lines = [f"# edgeprune build report: {profile['target']['name']}", "", _verdict(profile), ""]
    pr = profile["prune"]
    cal = profile["provenance"].get("calibration", {})
    lines += [
        f"- calibration data: {cal.get('data')} ({cal.get('n_samples')} x {cal.get('seq_len')} tokens, calibration portion"
        f"{', the default: pass --calib for in-domain text' if cal.get('defaulted') else ''}); evaluation data: "
        f"{(profile['provenance'].get('evaluation') or {}).get('data', cal.get('data'))} (held-out evaluation portion)",
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
        "| format | dtype | bytes | verified | timed in | PPL dense | PPL pruned | decode ms/tok dense (min/med) | decode ms/tok pruned (min/med) | prefill tok/s dense→pruned | speedup measured [95% interval] / ideal | check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in profile["artifacts"]:
        ld, lp = a["latency"]["dense"], a["latency"]["pruned"]
        sp = a["speedup"]
        lines.append(
            f"| {a['format']} | {a['dtype']} | {a['bytes']:,} | {a['verify'].get('passed')} | "
            f"{lp.get('protocol', {}).get('runtime', '-')} | {_fmt(a['perplexity']['dense'], '.3f')} | {_fmt(a['perplexity']['pruned'], '.3f')} | "
            f"{ld['decode_ms_per_token_min']:.3f} / {ld['decode_ms_per_token_median']:.3f} | "
            f"{lp['decode_ms_per_token_min']:.3f} / {lp['decode_ms_per_token_median']:.3f} | "
            f"{ld['prefill_tokens_per_s_max']:.0f} → {lp['prefill_tokens_per_s_max']:.0f} | "
            f"{sp['decode_measured']:.2f} {_interval(sp)} / {sp['decode_ideal']:.2f} | {_status(sp)} |"
        )
    lines += _text_path_lines(profile["artifacts"])
    lines += budget_lines(profile)
    p0 = profile["artifacts"][0]["perplexity"]["protocol"] if profile["artifacts"] else {}
    lines += ["", f"Perplexity protocol: {json.dumps(p0)}. Latency protocol: "
              f"{json.dumps(profile['artifacts'][0]['latency']['pruned'].get('protocol')) if profile['artifacts'] else '-'}."]
    warns = [a for a in profile["artifacts"] if not a["speedup"].get("passed")]
    if warns:
        lines += ["", "> **Speedup check not passed** (advisory): " + "; ".join(
            f"{a['format']} {a['dtype']}: {_status(a['speedup'])}, {a['speedup'].get('reason', '')}"
            for a in warns) + ". Tiny models are dominated by per-token overhead, not weight reads."]
    est = profile["device_estimate"]
    lines += ["", f"## Device estimate for {profile['target']['name']} (an ESTIMATE, not a measurement)", "",
              "| artifact | decode ms/token dense → pruned | ± (model error on the build host) | of which per-token overhead | "
              "prefill tok/s dense → pruned |", "|---|---|---|---|---|"]
    for e in est["artifacts"]:
        lines.append(f"| {e['format']} {e['dtype']} | {e['decode_ms_per_token_dense']:.3f} → {e['decode_ms_per_token_pruned']:.3f} | "
                     f"±{e.get('relative_error', float('nan')):.0%} | {e.get('overhead_ms_per_token', float('nan')):.3f} ms | "
                     f"{e['prefill_tokens_per_s_dense']:.0f} → {e['prefill_tokens_per_s_pruned']:.0f} |")
    if est["artifacts"]:
        lines += ["", f"How: {est['artifacts'][0].get('assumptions', '')}."]
        caveats = sorted({e["caveat"] for e in est["artifacts"] if e.get("caveat")})
        lines += [f"> **Caveat:** {c}." for c in caveats]
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
    x = list(range(len(arts)))
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for off, which, color in ((-0.2, "dense", "tab:gray"), (0.2, "pruned", "tab:green")):
        med = [a["latency"][which]["decode_ms_per_token_median"] for a in arts]
        runs = [a["latency"][which].get("decode_ms_per_token_runs") or [m] for a, m in zip(arts, med)]
        err = [[m - min(r) for m, r in zip(med, runs)], [max(r) - m for m, r in zip(med, runs)]]
        ax[0].bar([i + off for i in x], med, 0.4, yerr=err, capsize=3, color=color, label=f"{which} (median, min-max)")
    ideal = [a["latency"]["dense"]["decode_ms_per_token_median"] / a["speedup"]["decode_ideal"] for a in arts]
    ax[0].scatter([i + 0.2 for i in x], ideal, marker="_", s=400, color="black", zorder=3, label="ideal pruned")
    for i, a in enumerate(arts):
        ax[0].annotate(a["speedup"].get("status", ""), (i, max(a["latency"]["dense"]["decode_ms_per_token_median"], 1e-9)),
                       ha="center", va="bottom", fontsize=8)
    ax[0].set_yscale("log")
    ax[0].set_xticks(x, labels)
    ax[0].set_ylabel("decode ms/token (log scale)")
    host = profile["provenance"]["host"]["cpu"]
    ax[0].set_title(f"decode latency on {host[:40]}\n(target {profile['target']['name']})", fontsize=9)
    ax[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.15), ncol=3)
    ax[1].bar([i - 0.2 for i in x], [a["perplexity"]["dense"] or 0 for a in arts], 0.4, color="tab:gray", label="dense")
    ax[1].bar([i + 0.2 for i in x], [a["perplexity"]["pruned"] or 0 for a in arts], 0.4, color="tab:green", label="pruned")
    for i, a in enumerate(arts):
        r = a["perplexity"].get("ratio")
        if r:
            ax[1].annotate(f"x{r:.2f}", (i + 0.2, a["perplexity"]["pruned"]), ha="center", va="bottom", fontsize=8)
    ax[1].set_xticks(x, labels)
    ax[1].set_ylabel("perplexity (through the runtime)")
    ratio = profile["prune"].get("ratio_achieved")
    ax[1].set_title(f"perplexity, dense vs pruned ({profile['prune']['method']}, ratio {ratio:.2f})", fontsize=9)
    ax[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.15), ncol=2)
    fig.tight_layout()
    fig.savefig(build_dir / "latency_ppl.png", dpi=90)
    plt.close(fig)
    return ["latency_ppl.png"]


def plot_bench(build_dir: Path, record: dict, target: str) -> str | None:
    """`bench`'s own plot: dense vs pruned decode as measured on this host (log axis, spread,
    ideal, verdict), so a device run is drawn, not only written down."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    arts = record["artifacts"]
    x = list(range(len(arts)))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for off, key, label, color in ((-0.2, "latency_dense", "dense", "tab:gray"), (0.2, "latency", "pruned", "tab:green")):
        med = [a[key]["decode_ms_per_token_median"] for a in arts]
        runs = [a[key].get("decode_ms_per_token_runs") or [m] for a, m in zip(arts, med)]
        err = [[m - min(r) for m, r in zip(med, runs)], [max(r) - m for m, r in zip(med, runs)]]
        ax.bar([i + off for i in x], med, 0.4, yerr=err, capsize=3, color=color, label=f"{label} (median, min-max)")
    ideal = [a["latency_dense"]["decode_ms_per_token_median"] / a["speedup"]["decode_ideal"] for a in arts]
    ax.scatter([i + 0.2 for i in x], ideal, marker="_", s=400, color="black", zorder=3, label="ideal pruned")
    for i, a in enumerate(arts):
        ax.annotate(a["speedup"]["status"], (i, a["latency_dense"]["decode_ms_per_token_median"]), ha="center",
                    va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{a['format']} {a['dtype']}" for a in arts])
    ax.set_ylabel("decode ms/token (log scale)")
    same = " (the build host)" if record.get("same_host_as_build") else ""
    ax.set_title(f"edgeprune bench on {record['host']['cpu'][:40]}{same}\ntarget {target}, {record['time']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.12), ncol=3)
    fig.tight_layout()
    name = "bench_latency.png"
    fig.savefig(build_dir / name, dpi=90)
    plt.close(fig)
    return name


def _text_path_lines(artifacts: list[dict]) -> list[str]:
    """Text in, text out, per artifact: the runtime's own tokenizer on the fixed strings and its
    completion of the first prompt (what a user of llama.cpp or ORT GenAI would see)."""
    out = ["", "Text in, text out (the runtime's own tokenizer, greedy generation, its detokenizer):", ""]
    for a in artifacts:
        v = a["verify"]
        for who, tp in (("llama.cpp", v.get("text_path")), ("ORT GenAI", (v.get("genai") or {}).get("text_path"))):
            if not tp or "tokenizer" not in tp:
                continue
            t, runs = tp["tokenizer"], tp["generation"]["runs"]
            verdict = "pass" if tp["passed"] else ("limitation: " + tp["limitation"] if tp.get("limitation") else "FAIL")
            first = runs[0] if runs else {}
            out.append(f"- {a['format']} {a['dtype']} in {who}: {t['strings'] - t['failed']}/{t['strings']} strings tokenized "
                       f"as transformers does, {sum(r['passed'] for r in runs)}/{len(runs)} completions equal; "
                       f"{first.get('prompt', '')!r} -> {first.get('runtime_text', '')!r} ({verdict})")
    return out if len(out) > 3 else []


def budget_lines(profile: dict) -> list[str]:
    """The budget as asked and the latency model's prediction against the measurement, in one
    or two lines (nothing under a plain ratio budget without a latency model)."""
    b, lm = profile.get("budget") or {}, profile.get("latency_model")
    if not b or b.get("kind") == "ratio" and not lm:
        return []
    asked = {"speedup": f"decode speedup {b['requested']:g}x", "latency_ms": f"{b['requested']:g} ms/token"}.get(
        b["kind"], f"ratio {b['requested']}")
    out = [f"Budget: {asked} (became ratio {b['ratio']:.4f})"
           + (f"; latency model: {lm.get('runtime')} {lm.get('dtype')}, context {lm.get('context')}, "
              f"{lm.get('threads')} threads, from {'a device table' if lm.get('source') == 'table' else 'this build host'}, "
              f"{_fmt(lm.get('relative_error'), '.1%')} error on held-out shapes." if lm else ".")]
    for a in profile["artifacts"]:
        p = a.get("latency_predicted")
        if p:
            out.append(f"Predicted vs measured ({a['format']} {a['dtype']}): decode {p['dense_ms_per_token']['predicted']:.3f} -> "
                       f"{p['pruned_ms_per_token']['predicted']:.3f} ms/token predicted, {p['dense_ms_per_token']['measured']:.3f} -> "
                       f"{p['pruned_ms_per_token']['measured']:.3f} measured; speedup {p['speedup']['predicted']:.2f}x predicted, "
                       f"{p['speedup']['measured']:.2f}x measured.")
    return [""] + out

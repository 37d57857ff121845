"""profile.json (versioned schema) -> report.md. No torch needed.

report.md opens with the verdict (`verdict.py`: one GO / NO-GO / UNCERTAIN line per artifact,
any quality alarm, a short paragraph), then the figures behind it, the sample generations, the
device estimate, bench's measurements, the plots (`plots.py`, `plan_plot.py`) and provenance.
Schema version 1; the keys scripts may rely on are documented in README.md ("profile.json").
"""
from __future__ import annotations

import json
from pathlib import Path

from ..io.atomic import write_text

SCHEMA_VERSION = 1


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


def _host(h: dict) -> str:
    return f"{h.get('cpu')}, {h.get('cores')} cores, {h.get('system')} {h.get('machine')}" + (f", GPU {h['gpu']}" if h.get("gpu") else "")


def _fmt(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


def _budget_words(profile: dict, pr: dict) -> str:
    """The budget as the user stated it: a speed budget has no requested ratio."""
    b = profile.get("budget") or {}
    if b.get("kind") in ("speedup", "latency_ms"):
        return f"budget --{b['kind'].replace('_', '-')} {b['requested']:g}"
    return f"ratio requested {pr['ratio_requested']}"


def write_report(build_dir: Path, profile: dict) -> Path:
    """report.md in reading order: verdict, build, artifacts, text path, budget, samples,
    protocols, device estimate, on-device measurements, plots, provenance."""
    from .verdict import samples_lines, verdict_lines

    lines = [f"# edgeprune build report: {profile['target']['name']}", ""] + verdict_lines(profile)
    lines += _build_lines(profile) + _artifact_lines(profile)
    lines += _text_path_lines(profile["artifacts"])
    lines += budget_lines(profile)
    lines += [""] + samples_lines(profile)
    lines += _protocol_lines(profile) + _estimate_lines(profile) + _on_device_lines(profile)
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in profile.get("plots", [])]
    lines += ["", "## Provenance", "", "```json", json.dumps(profile["provenance"], indent=1), "```", ""]
    path = build_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path


def _build_lines(profile: dict) -> list[str]:
    """What was pruned, how, on which data, at what peak memory and time, on which host."""
    pr = profile["prune"]
    cal = profile["provenance"].get("calibration", {})
    return [
        "## Build",
        "",
        f"- calibration data: {cal.get('data')} ({cal.get('n_samples')} x {cal.get('seq_len')} tokens, calibration portion"
        f"{', the default: pass --calib for in-domain text' if cal.get('defaulted') else ''}); evaluation data: "
        f"{(profile['provenance'].get('evaluation') or {}).get('data', cal.get('data'))} (held-out evaluation portion)",
        f"- model: `{profile['checkpoint'].get('base_model')}` -> `{profile['checkpoint']['path']}`",
        f"- method **{pr['method']}**, {_budget_words(profile, pr)} ({pr.get('ratio_reason', '')}), "
        f"{pr['ratio_achieved']:.1%} of non-embedding parameters removed",
        f"- parameters: {pr['params_dense']:,} -> {pr['params_pruned']:,} non-embedding; "
        f"{pr['params_dense_total']:,} -> {pr['params_pruned_total']:,} total",
        f"- prune-time peak memory {pr['peak_memory_bytes'] / 2**20:.1f} MiB "
        f"({pr['peak_memory_above_baseline_bytes'] / 2**20:.1f} MiB above the process baseline), {pr['wall_seconds']:.1f} s",
        f"- build host: {_host(profile['provenance']['host'])}",
        "",
    ]


def _artifact_lines(profile: dict) -> list[str]:
    """One row per artifact: bytes, verification, perplexity with its interval, decode and
    prefill dense against pruned, the speedup check."""
    from ..measure.speedup import decode_bars

    lines = [
        "## Artifacts",
        "",
        "Decode ms/token as the plot draws it: dense = median of its runs; pruned = dense / the paired speedup "
        "(the check's statistic; the per-side medians are in profile.json).",
        "",
        "| format | dtype | bytes dense → pruned | verified | timed in | PPL dense | PPL pruned [95% interval] | decode ms/tok dense → pruned | prefill tok/s dense→pruned | speedup measured [95% interval] / ideal | check |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in profile["artifacts"]:
        ld, lp = a["latency"]["dense"], a["latency"]["pruned"]
        sp, pp = a["speedup"], a["perplexity"]
        bars = decode_bars(ld["decode_ms_per_token_runs"], sp)
        piv = pp.get("pruned_interval")
        lines.append(
            f"| {a['format']} | {a['dtype']} | {_fmt((a.get('reference_dense') or {}).get('bytes'), ',')} → {a['bytes']:,} | "
            f"{a['verify'].get('passed')} | {lp.get('protocol', {}).get('runtime', '-')} | {_fmt(pp['dense'], '.3f')} | "
            f"{_fmt(pp['pruned'], '.3f')}{f' [{piv[0]:.3f}, {piv[1]:.3f}]' if piv else ''} | "
            f"{bars['dense']:.3f} → {bars['pruned']:.3f} | "
            f"{ld['prefill_tokens_per_s_max']:.0f} → {lp['prefill_tokens_per_s_max']:.0f} | "
            f"{sp['decode_measured']:.2f} {_interval(sp)} / {sp['decode_ideal']:.2f} | {_status(sp)} |"
        )
    return lines


def _protocol_lines(profile: dict) -> list[str]:
    """How perplexity and latency were measured, and the advisory for a check not passed."""
    p0 = profile["artifacts"][0]["perplexity"]["protocol"] if profile["artifacts"] else {}
    ivm = profile["artifacts"][0]["perplexity"].get("method") if profile["artifacts"] else None
    lines = ["", f"Perplexity protocol: {json.dumps(p0)}{f'; interval: {ivm}' if ivm else ''}. Latency protocol: "
              f"{json.dumps(profile['artifacts'][0]['latency']['pruned'].get('protocol')) if profile['artifacts'] else '-'}."]
    warns = [a for a in profile["artifacts"] if not a["speedup"].get("passed")]
    if warns:
        lines += ["", "> **Speedup check not passed** (advisory): " + "; ".join(
            f"{a['format']} {a['dtype']}: {_status(a['speedup'])}, {a['speedup'].get('reason', '')}"
            for a in warns) + ". Tiny models are dominated by per-token overhead, not weight reads."]
    return lines


def _estimate_lines(profile: dict) -> list[str]:
    """The target's device estimate, labelled as one, with its error and caveats."""
    est = profile["device_estimate"]
    lines = ["", f"## Device estimate for {profile['target']['name']} (an ESTIMATE, not a measurement)", "",
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
    return lines


def _on_device_lines(profile: dict) -> list[str]:
    """Each `edgeprune bench` measurement appended to the profile, beside the estimate."""
    from ..measure.speedup import decode_bars

    est, lines = profile["device_estimate"], []
    est_by = {(e["format"], e["dtype"]): e for e in est["artifacts"]}
    for m in profile.get("measured_on_device", []):
        same = " (the build host, not a separate device)" if m.get("same_host_as_build") else ""
        lines += ["", f"## Measured on {m['host']['cpu']}{same} by edgeprune bench, {m['time']}", "",
                  "| artifact | decode ms/token dense → pruned (as plotted) | speedup [95% interval] / ideal | check | "
                  "prefill tok/s pruned (max) | estimate decode ms/token |", "|---|---|---|---|---|---|"]
        for a in m["artifacts"]:
            e = est_by.get((a["format"], a["dtype"]), {})
            lat, sp = a["latency"], a.get("speedup") or {}
            runs = (a.get("latency_dense") or {}).get("decode_ms_per_token_runs")
            bars = decode_bars(runs, sp) if runs and sp else {}
            lines.append(f"| {a['format']} {a['dtype']} | {_fmt(bars.get('dense'), '.3f')} → {_fmt(bars.get('pruned'), '.3f')} | "
                         f"{_fmt(sp.get('decode_measured'), '.2f')} {_interval(sp)} / {_fmt(sp.get('decode_ideal'), '.2f')} | "
                         f"{_status(sp) if sp else '-'} | {lat['prefill_tokens_per_s_max']:.0f} | "
                         f"{_fmt(e.get('decode_ms_per_token_pruned'), '.3f')} |")
    return lines


def _text_path_lines(artifacts: list[dict]) -> list[str]:
    """Text in, text out, per artifact: the runtime's own tokenizer on the fixed strings and its
    completion of the first prompt (what a user of llama.cpp or ORT GenAI would see)."""
    from exporters.text_path import in_report

    out = ["", "Text in, text out (the runtime's own tokenizer, greedy generation, its detokenizer):", ""]
    for a in artifacts:
        for who, tp in in_report(a["verify"]):
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
           + (f"; latency model: {' '.join(str(x) for x in (lm.get('runtime'), lm.get('dtype')) if x)}, context {lm.get('context')}, "
              f"{lm.get('threads')} threads, from {'a device table' if lm.get('source') == 'table' else 'this build host'}, "
              f"{_fmt(lm.get('relative_error'), '.1%')} error on held-out shapes"
              + (f" (median; at most {_fmt(lm.get('max_relative_error'), '.1%')})" if lm.get("max_relative_error") is not None
                 else "") + "." if lm else ".")]
    for a in profile["artifacts"]:
        p = a.get("latency_predicted")
        if p:
            out.append(f"Predicted vs measured ({a['format']} {a['dtype']}): decode {p['dense_ms_per_token']['predicted']:.3f} -> "
                       f"{p['pruned_ms_per_token']['predicted']:.3f} ms/token predicted, {p['dense_ms_per_token']['measured']:.3f} -> "
                       f"{p['pruned_ms_per_token']['measured']:.3f} measured; speedup {p['speedup']['predicted']:.2f}x predicted, "
                       f"{p['speedup']['measured']:.2f}x measured.")
    return [""] + out

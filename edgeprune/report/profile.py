"""The build's profile: what each artifact pair measured on the build host (perplexity
through its runtime, interleaved latency, the speedup check), the device estimate, memory and
provenance, assembled into `profile.json` (schema in the README). `build` calls it once per
artifact pair and once at the end; the measuring itself is `measure/artifact_eval.py`.

Added to schema 1 (additive): `artifacts[].perplexity` {`dense_interval`, `pruned_interval`,
`ratio_interval`, `windows`, `method`} (`evaluate.ppl_intervals`; absent for a pair measured
before it existed); `artifacts[].samples[]` {`prompt`, `runtime`, `dense`, `pruned`, `dense_ids`,
`pruned_ids`} (the verify text path's greedy completions); `verdict` (fields in
`edgeprune/report/verdict.py`); `provenance.resumes[]` {`command`, `time`, `resumed`} after
`provenance.command`, which stays the command that started the build.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..measure.artifact_eval import evaluation
IDEAL_DEFINITION = "dense/pruned bytes of linear weights read per decoded token (lm_head included, token embedding excluded)"


# ---- sizes -----------------------------------------------------------------------------
def sizes(ad) -> tuple[int, int]:
    """(non-embedding parameters, embedding parameters) of the adapter's model."""
    from ..models import expected_nonembedding

    return expected_nonembedding(ad, ad.layer_shapes()), ad.embedding_params()


def kv_cache_bytes(ad, context: int, fmt: str, dtype: str) -> int:
    """KV cache at `context` tokens, at the bytes per element the artifact's runtime keeps for
    that format and dtype (`Format.kv_bytes`: llama.cpp f16, ONNX the graph's float type)."""
    from exporters.formats import get

    element_bytes = get(fmt).kv_bytes(dtype)
    return sum(2 * s.num_kv_heads * ad.head_dim * context * element_bytes for s in ad.layer_shapes())


def bytes_per_weight(dtype: str) -> float:
    from edgeprune.dtypes import get

    return get(dtype).bytes_per_weight


def linear_weight_bytes(artifact: Path, fmt: str, dtype: str, ad) -> int:
    """Bytes of every linear weight read per decoded token (lm_head included, embedding
    excluded), as the format reads them (`Format.weight_bytes`: off a GGUF file, from the shapes for ONNX)."""
    from exporters.formats import get

    return get(fmt).weight_bytes(artifact, dtype, ad)


def artifact_entry(f: dict, ep: dict, ed: dict, measured: dict, out_dir: Path, ad, ad_p, ppl_protocol: dict,
                   requested: float | None = None) -> dict:
    """One artifact's profile entry: sizes, verification, perplexity, latency, speedup check."""
    from ..measure.evaluate import ppl_intervals
    from ..measure.speedup import check
    from .verdict import samples_of

    lat = measured["latency"]
    ppl_d, ppl_p = measured["ppl"]
    weights = {"dense": linear_weight_bytes(Path(ed["path"]), f["format"], f["dtype"], ad),
               "pruned": linear_weight_bytes(Path(ep["path"]), f["format"], f["dtype"], ad_p)}
    runs = {k: lat[k].get("decode_ms_per_token_runs") or [lat[k]["decode_ms_per_token_min"]] for k in ("dense", "pruned")}
    sp = check(runs["dense"], runs["pruned"], weights["dense"] / weights["pruned"], requested)
    return {
        "format": f["format"], "dtype": f["dtype"], "path": str(Path(ep["path"]).relative_to(out_dir)),
        "bytes": ep["bytes"], "verify": ep["verify"], "verify_report": ep.get("verify_report"),
        "architecture": ep.get("architecture"), "fallbacks": ep.get("fallbacks", []),
        "dtype_choice": f.get("choice"),  # the target's dtype, or the next of its list, and why (build.stage_dtypes)
        "reference_dense": {"path": str(Path(ed["path"]).relative_to(out_dir)), "bytes": ed["bytes"],
                            "verify_passed": ed["verify"].get("passed")},
        "perplexity": {"dense": ppl_d, "pruned": ppl_p, "ratio": ppl_p / ppl_d, "protocol": ppl_protocol,
                       **(ppl_intervals(*measured["ppl_window_nll"]) if measured.get("ppl_window_nll") else {})},
        "samples": samples_of(ep["verify"], ed["verify"]),  # the verify text path's completions, dense vs pruned
        "latency": lat,
        "speedup": {**sp, "ideal_definition": IDEAL_DEFINITION, "weight_bytes_per_token": weights,
                    "prefill_measured": lat["pruned"]["prefill_tokens_per_s_max"] / lat["dense"]["prefill_tokens_per_s_max"]},
    }


def estimate_for(tgt, entry: dict, ad, ad_p, host: dict) -> dict:
    """The device estimate for one artifact pair, its overhead fitted on this host's measurement."""
    from ..measure.estimate import device_estimate, fit_overhead, overhead_scale

    lat, weights = entry["latency"], entry["speedup"]["weight_bytes_per_token"]
    ctx = lat["pruned"]["protocol"]["context"] + lat["pruned"]["protocol"]["new_tokens"] // 2
    fd = entry["format"], entry["dtype"]
    read = {"dense": weights["dense"] + kv_cache_bytes(ad, ctx, *fd), "pruned": weights["pruned"] + kv_cache_bytes(ad_p, ctx, *fd)}
    fit = fit_overhead({k: lat[k]["decode_ms_per_token_median"] for k in ("dense", "pruned")}, read, host["bandwidth"])
    bpw = bytes_per_weight(entry["dtype"])
    est = device_estimate(tgt, entry["format"], entry["dtype"], weights,
                          {"dense": kv_cache_bytes(ad, tgt.context, *fd), "pruned": kv_cache_bytes(ad_p, tgt.context, *fd)},
                          {k: 2 * v / bpw for k, v in weights.items()}, fit,
                          overhead_scale(tgt, host["threads"], host["clock_ghz"]))
    return {**est, "host_fit": fit}


def prune_section(method: str, ratio: float, why: str, rep: dict) -> dict:
    pm = rep["peak_memory"]
    return {
        "method": method, "ratio_requested": ratio, "ratio_reason": why, "ratio_achieved": rep["ratio_achieved"],
        "params_dense": rep["params_dense_nonembedding"], "params_pruned": rep["params_pruned_nonembedding"],
        "params_dense_total": rep["params_dense_total"], "params_pruned_total": rep["params_pruned_total"],
        "params_definition": "non-embedding: all parameters except token embedding and lm_head",
        "peak_memory_bytes": pm["peak_bytes"], "peak_memory_above_baseline_bytes": pm["above_baseline_bytes"],
        "peak_memory_kind": pm["kind"], "wall_seconds": rep["wall_seconds"], "layers_removed": rep["layers_removed"],
        "calibration_tokens": rep["calibration_tokens"],
        "ratio_note": rep.get("ratio_note"),  # set when the plan lands more than the tolerance from the ratio
    }


def assemble(b) -> dict:  # long: the profile's sections, in schema order
    """profile.json's content from a finished build (`edgeprune.run.build.Build`)."""
    from ..io.checkpoint import load_config
    from ..calibrate.data import load_text
    from .plan_plot import plot_plan
    from ..measure.latency import host_info
    from ..models import get_adapter
    from ..plan import Plan
    from .provenance import commands, license_of, min_runtime_versions, now, sha256, versions
    from .plots import draw, heading
    from .markdown import SCHEMA_VERSION
    from .verdict import decide

    cfg = load_config(b.model_dir)
    ad, ad_p = get_adapter(cfg), get_adapter(load_config(b.out_dir / "model"))
    _, protocol = evaluation(b.model_dir, cfg, b.calib, b.opts["data_dir"])
    exports, rep = b.done["export"], b.done["prune"]
    artifacts, estimates = [], []
    for f in b.formats:
        key = f"{f['format']}-{f['dtype']}"
        entry = artifact_entry(f, exports[f"pruned:{key}"], exports[f"dense:{key}"], b.done["profile"][key], b.out_dir,
                               ad, ad_p, protocol, requested_speedup(b))
        sp = entry["speedup"]
        if sp["status"] != "pass":
            print(f"[edgeprune build] {'WARNING' if sp['status'] == 'miss' else 'note'}: {key} speedup check "
                  f"{sp['status'].upper()}: {sp['decode_measured']:.2f}x vs ideal {sp['decode_ideal']:.2f}x; {sp['reason']}",
                  file=sys.stderr)
        _add_prediction(entry, b)
        artifacts.append(entry)
        estimates.append(estimate_for(b.tgt, entry, ad, ad_p, b.done["host"]))
    o = b.opts
    profile = {
        "schema_version": SCHEMA_VERSION,
        "target": {"name": b.tgt.name, "file": str(b.tgt.path), **b.tgt.data},
        "prune": prune_section(b.method, b.ratio, b.why, rep),
        **budget_sections(b),
        "memory": memory_figures(rep, exports),
        "checkpoint": {"path": "model", "base_model": str(getattr(cfg, "_name_or_path", "") or b.model_dir), "format": "huggingface"},
        "artifacts": artifacts,
        "device_estimate": {"target": b.tgt.name, "bandwidth_gb_s": b.tgt.bandwidth / 1e9,
                            "peak_tflops": b.tgt.peak_flops / 1e12, "artifacts": estimates},
        "provenance": {
            "versions": versions(), **commands(b.state, o["command"]), "seed": o["seed"],
            "calibration": {"data": b.calib, "sha256": sha256(load_text(b.calib, "calib", o["data_dir"])),
                            "n_samples": o["nsamples"], "seq_len": o["seq_len"], "portion": "calib", "defaulted": b.defaulted},
            "evaluation": {"data": b.calib, "portion": "eval (disjoint from the calibration portion)"},
            "base_model": {"name": "edgeprune embedded demo model (trained on the Python stdlib source)" if b.demo
                           else str(b.model_dir), "license": license_of(b.model_dir, cfg)},
            "min_runtime_versions": min_runtime_versions(artifacts, b.out_dir), "host": host_info(), "time": now(),
        },
    }
    kv = {f"{a['format']} {a['dtype']}": kv_cache_bytes(ad_p, b.tgt.context, a["format"], a["dtype"])
          for a in artifacts}
    profile["verdict"] = decide(profile, kv)
    for line in profile["verdict"]["alarms"]:
        print(f"[edgeprune build] WARNING: {line}", file=sys.stderr)
    plot_plan(Plan.load(b.out_dir / "model"), str(b.out_dir / "plan.png"), ad.layer_shapes(), ad_p.layer_shapes(),
              heading(profile, method=False))
    profile["plots"] = ["plan.png"] + draw(b.out_dir, profile)
    return profile


def budget_sections(b) -> dict:
    """profile.json `budget` (kind, requested, the ratio it became) and `latency_model` (source,
    held-out relative error, runtime, dtype, context, threads; null under a ratio budget)."""
    from ..run.budget_stages import budget_record, latency_model_record

    rep = b.done["prune"]
    return {"budget": budget_record(b.budget, b.ratio, rep["ratio_achieved"], rep),
            "latency_model": latency_model_record(b.latency)}


def requested_speedup(b) -> float | None:
    """The speedup a speed budget asked for (a --latency-ms budget as the predicted dense time
    over it), which every artifact's check is held to; None under a parameter budget."""
    budget = getattr(b, "budget", None)
    if budget is None or not budget.is_speed:
        return None
    if budget.kind == "speedup":
        return float(budget.requested)
    pred = b.done["prune"].get("latency_predicted") or {}
    dense = pred.get("dense_ms_per_token")
    return float(dense) / float(budget.requested) if dense else None


def _add_prediction(entry: dict, b) -> None:
    from ..run.budget_stages import artifact_prediction

    pred = artifact_prediction(entry, b.latency, b.done["prune"])
    if pred is not None:
        entry["latency_predicted"] = pred


def memory_figures(rep: dict, exports: dict) -> dict:
    """The process's real peak RSS over every stage of the build, and each stage's own."""
    from ..measure.memory import process_peak_bytes

    stages = {k: v["peak_bytes"] for k, v in rep["peak_memory"].get("stages", {}).items()}
    for key, e in exports.items():
        for stage, m in (e.get("peak_memory") or {}).get("stages", {}).items():
            stages[f"{stage} {key}"] = m["peak_bytes"]
    return {"kind": rep["peak_memory"]["kind"], "peak_bytes": max([process_peak_bytes(), *stages.values()]),
            "stages_peak_bytes": stages,
            "note": "whole-process RSS high-water mark; stages run in this process (a resumed build only sees its own run)"}


# ---- writing ---------------------------------------------------------------------------------
def write_profile(out_dir: Path, profile: dict) -> list[str]:
    """profile.json (atomically, NaN never written) and report.md; returns non-finite fields."""
    import json

    from .markdown import write_report

    from ..io.atomic import write_text
    from .provenance import finite, non_finite

    bad = non_finite(profile)
    if bad:
        profile["non_finite_fields"] = bad
    write_text(out_dir / "profile.json", json.dumps(finite(profile), indent=1, allow_nan=False))
    write_report(out_dir, profile)
    return bad


def summary_lines(profile: dict, out_dir: Path) -> list[str]:
    """The console summary: the verdict first, then each pair's figures (decode as the plot
    draws it: dense median -> dense / the check's speedup, so no line contradicts the check)."""
    from ..measure.speedup import decode_bars

    v = profile.get("verdict") or {"artifacts": []}
    lines = [f"  {r['decision']:<9} {r['format']} {r['dtype']}" + (f": {r['reasons'][0]}" if r["reasons"] else "")
             for r in v["artifacts"]]
    for a in profile["artifacts"]:
        sp = a["speedup"]
        bars = decode_bars(a["latency"]["dense"]["decode_ms_per_token_runs"], sp)
        lines.append(f"  {a['format']:4} {a['dtype']:5} {a['reference_dense']['bytes']:>12,} -> {a['bytes']:>12,} B  PPL {a['perplexity']['dense']:.3f} -> "
                     f"{a['perplexity']['pruned']:.3f}  decode {bars['dense']:.3f} -> {bars['pruned']:.3f} ms/tok  "
                     f"speedup {sp['decode_measured']:.2f}x "
                     f"[{sp['decode_interval'][0]:.2f}, {sp['decode_interval'][1]:.2f}] (ideal {sp['decode_ideal']:.2f}x): "
                     f"{sp['status'].upper()}")
    mem = profile["memory"]
    lines.append(f"  peak memory {mem['peak_bytes'] / 2**20:.0f} MiB over every stage (" + ", ".join(
        f"{k} {v / 2**20:.0f}" for k, v in mem["stages_peak_bytes"].items()) + " MiB)")
    lines.append(f"  profile: {out_dir / 'profile.json'}  report: {out_dir / 'report.md'}")
    return lines

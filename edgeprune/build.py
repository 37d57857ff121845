"""`edgeprune build`: load -> calibrate -> prune -> apply -> save -> export -> verify -> profile.

Each stage records its result in `build_state.json`; `--resume` skips finished stages
(and the prune stage resumes per layer). The directory carries `.edgeprune-incomplete`
until every stage ran and every artifact verified; only then is it complete.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

from .checkpoint import INCOMPLETE, check_output_dir, load_config
from .errors import EdgePruneError
from .models import get_adapter
from .report import SCHEMA_VERSION, plot_latency_and_ppl, write_report
from .targets import Target, load_target

AUTO_LADDER = [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7]
PPL_SEQ_LEN = 256
PPL_MAX_WINDOWS = 8
LATENCY_REPS = 5


class BuildError(EdgePruneError):
    pass


def log(msg: str) -> None:
    print(f"[edgeprune build] {msg}", file=sys.stderr)


# ---- ratio selection ------------------------------------------------------------------
def _sizes(ad) -> tuple[int, int]:
    from .models import expected_nonembedding

    non_emb = expected_nonembedding(ad, ad.layer_shapes())
    emb = ad.embedding_params()
    return non_emb, emb


def kv_cache_bytes(ad, context: int) -> int:
    """f16 KV cache of the dense model at `context` tokens (conservative: pruning shrinks it)."""
    return sum(2 * s.num_kv_heads * ad.head_dim * context * 2 for s in ad.layer_shapes())


def choose_ratio(target: Target, ad, requested: float | None) -> tuple[float, str]:
    if requested is not None:
        return requested, "from --ratio"
    if target.ratio != "auto":
        return float(target.ratio), f"the {target.name} target's default"
    non_emb, emb = _sizes(ad)
    bpp = max(bytes_per_weight(f["dtype"]) for f in target.formats)
    kv = kv_cache_bytes(ad, target.context)

    def need(r: float) -> float:
        return (emb + (1 - r) * non_emb) * bpp + kv

    budget = target.budget_bytes
    if need(0.0) <= budget:
        return AUTO_LADDER[0], (f"auto: the dense model already fits ({need(0.0) / 1e9:.3f} GB of {budget / 1e9:.1f} GB), "
                                f"so the smallest ratio on the ladder, {AUTO_LADDER[0]}, is used")
    for r in AUTO_LADDER:
        if need(r) <= budget:
            return r, f"auto: smallest ratio whose artifact + KV cache fits: {need(r) / 1e9:.3f} GB <= budget {budget / 1e9:.1f} GB"
    raise BuildError(
        f"even ratio {AUTO_LADDER[-1]} needs {need(AUTO_LADDER[-1]) / 1e9:.2f} GB (weights at {bpp:.2f} B/param + KV cache "
        f"at context {target.context}), over {target.name}'s budget of {budget / 1e9:.1f} GB; choose a smaller model, "
        "a more compact dtype in a custom target, or a bigger device"
    )


# ---- per-token bytes and estimates ----------------------------------------------------
def linear_weight_bytes(artifact: Path, fmt: str, dtype: str, ad_pruned) -> int:
    """Bytes of every linear weight read per decoded token (lm_head included, embedding excluded)."""
    if fmt == "gguf":
        import gguf

        r = gguf.GGUFReader(str(artifact))
        names = {t.name: int(t.n_bytes) for t in r.tensors}
        total = sum(b for n, b in names.items() if n.endswith(".weight") and "norm" not in n and n != "token_embd.weight")
        if "output.weight" not in names:  # tied: lm_head reads the embedding matrix
            total += names["token_embd.weight"]
        return total
    non_emb, _ = _sizes(ad_pruned)
    norms = sum(2 * ad_pruned.hidden_size for _ in ad_pruned.layer_shapes()) + ad_pruned.hidden_size
    lm_head = ad_pruned.vocab_size * ad_pruned.hidden_size
    return int((non_emb - norms + lm_head) * bytes_per_weight(dtype))


def _warn_alignment(tgt: Target, ad) -> None:
    """A quantised format whose block the target's alignment does not respect falls back to a
    bigger type (llama.cpp does so silently for k-quants): say so before the work."""
    from exporters.dtypes import get

    for f in tgt.formats:
        block = get(f["dtype"]).block
        if f["format"] == "gguf" and block > 1 and tgt.align % block:
            log(f"WARNING: target align {tgt.align} is not a multiple of {f['dtype']}'s block {block}: pruned widths "
                f"may fall back to a bigger type (listed in the verify report); set align = {block} in the target")
        elif f["format"] == "gguf" and block > 1 and ad.hidden_size % block:
            log(f"note: hidden size {ad.hidden_size} is not a multiple of {f['dtype']}'s block {block}: some tensors "
                "will fall back whatever the pruning does (listed in the verify report)")


def bytes_per_weight(dtype: str) -> float:
    from exporters.dtypes import get

    return get(dtype).bytes_per_weight


def _estimate(tgt: Target, f: dict, weights: dict, ad, ad_p, lat: dict, state: dict, save_state) -> dict:
    """The device estimate for one artifact pair, its overhead fitted on this host's
    measurement (edgeprune.estimate); the host's bandwidth is measured once per build."""
    from .estimate import device_estimate, fit_overhead, host_bandwidth, host_clock_ghz, overhead_scale

    threads = lat["pruned"]["protocol"]["threads"]
    host = state["done"].get("host")
    if host is None or host.get("threads") != threads:
        host = {"bandwidth": host_bandwidth(threads), "clock_ghz": host_clock_ghz(), "threads": threads}
        state["done"]["host"] = host
        save_state()
    ctx = lat["pruned"]["protocol"]["context"] + lat["pruned"]["protocol"]["new_tokens"] // 2
    read = {"dense": weights["dense"] + kv_cache_bytes(ad, ctx), "pruned": weights["pruned"] + kv_cache_bytes(ad_p, ctx)}
    ms = {k: lat[k]["decode_ms_per_token_median"] for k in ("dense", "pruned")}
    fit = fit_overhead(ms, read, host["bandwidth"])
    bpw = bytes_per_weight(f["dtype"])
    est = device_estimate(tgt, f["format"], f["dtype"], weights,
                          {"dense": kv_cache_bytes(ad, tgt.context), "pruned": kv_cache_bytes(ad_p, tgt.context)},
                          {k: 2 * v / bpw for k, v in weights.items()}, fit,
                          overhead_scale(tgt, threads, host["clock_ghz"]))
    return {**est, "host_fit": fit}


# ---- perplexity through the runtime ---------------------------------------------------
def runtime_perplexity(artifact: Path, windows) -> float:
    from exporters.runtimes import open_artifact

    from .evaluate import perplexity_from

    sess = open_artifact(artifact, n_ctx=windows.shape[1] + 8) if str(artifact).endswith(".gguf") else open_artifact(artifact)
    import torch

    return perplexity_from(lambda ids: torch.from_numpy(sess.logits(ids[0].tolist()))[None], windows, progress=False)["perplexity"]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("edgeprune", "torch", "transformers", "onnxruntime", "onnx", "gguf", "llama_cpp_python"):
        try:
            out[name] = md.version(name.replace("_", "-"))
        except md.PackageNotFoundError:
            out[name] = None
    try:
        import llama_cpp

        out["llama_cpp_python"] = llama_cpp.__version__
    except ImportError:
        pass
    return out


def _onnx_min_ort(path: Path) -> str:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    opset = max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    table = {17: "1.13", 18: "1.14", 19: "1.16", 20: "1.17", 21: "1.20", 22: "1.20", 23: "1.22"}
    need = f"onnxruntime >= {table.get(opset, '1.22')} (graph opset {opset})"
    if any(n.op_type == "MatMulNBits" for n in m.graph.node):
        import onnxruntime

        need += (f"; int4 needs the com.microsoft MatMulNBits kernel on your execution provider "
                 f"(tested with onnxruntime {onnxruntime.__version__})")
    if (path.parent / "genai_config.json").is_file():
        need += "; as an ORT GenAI folder: onnxruntime-genai >= 0.18.0 (per-layer KV-head counts)"
    return need


# ---- the pipeline ---------------------------------------------------------------------
def build(model: str | None = None, target: str = "cpu-x86", ratio: float | None = None, method: str | None = None,
          calib: str | None = None, out: str = "build", force: bool = False, resume: bool = False,
          data_dir=None, nsamples: int = 32, seq_len: int = 128, seed: int = 0, device: str = "cpu",
          command: str = "") -> dict:
    from . import data as data_mod
    from .demo import ensure_demo_model
    from .pipeline import preflight, prune, tokenizer_for

    tgt = load_target(target)
    out_dir = Path(out).absolute()
    check_output_dir(out_dir, force=force, resume=resume)
    demo = model is None
    model_dir = Path(ensure_demo_model()) if demo else Path(model)
    cfg = load_config(model_dir)
    ad = get_adapter(cfg)
    defaulted = calib is None
    calib = calib or ("demo" if demo else "wikitext2")
    if defaulted and not demo:
        import warnings

        warnings.warn(f"no --calib given: calibrating on {calib}'s calibration portion and evaluating on its evaluation "
                      "portion (general English text). If your model's domain differs (code, stories, chat), pass --calib "
                      "with in-domain text", stacklevel=2)
    from .data import warn_if_overlap

    warn_if_overlap(calib, calib)  # build evaluates on the calibration source's eval portion
    method = method or tgt.method
    the_ratio, why = choose_ratio(tgt, ad, ratio)
    args = {"model": str(model_dir), "target": tgt.name, "ratio": the_ratio, "method": method, "calib": calib,
            "nsamples": nsamples, "seq_len": seq_len, "seed": seed}
    state_path = out_dir / "build_state.json"
    state: dict = {"args": args, "done": {}}
    if resume and state_path.is_file():
        old = json.loads(state_path.read_text())
        if old["args"] != args:
            raise BuildError(f"{out_dir} was started with different arguments {old['args']}; use the same ones with --resume, or --force")
        state = old
        log(f"resuming; finished stages: {', '.join(state['done']) or 'none'}")
    else:  # refusals come before the build directory exists
        preflight(model_dir, method, calib, nsamples, seq_len, seed, data_dir)
        if out_dir.exists() and force:
            shutil.rmtree(out_dir)  # check_output_dir made sure edgeprune wrote it
    out_dir.mkdir(exist_ok=True)
    (out_dir / INCOMPLETE).write_text("edgeprune build in progress\n")

    def save_state() -> None:
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(state_path)

    log(f"target {tgt.name}; method {method}; ratio {the_ratio} ({why})")
    _warn_alignment(tgt, ad)
    log(f"calibration data: {calib} (calibration portion); evaluation data: {calib} (held-out evaluation portion)"
        + (" [default]" if defaulted else ""))
    # 1. prune (resumable per layer)
    if "prune" not in state["done"]:
        t0 = time.perf_counter()
        layers = "auto" if method == "comp" else None
        res = prune(model_dir, method, ratio=the_ratio, layers=layers, calib=calib, n_samples=nsamples, seq_len=seq_len,
                    seed=seed, device=device, data_dir=data_dir, out=out_dir / "model", resume=True, force=True,
                    align=tgt.align, checked=True)
        rep = dict(res.report)
        rep["stage_seconds"] = time.perf_counter() - t0
        state["done"]["prune"] = rep
        save_state()
        del res
    rep = state["done"]["prune"]
    pruned_dir = out_dir / "model"
    ad_p = get_adapter(load_config(pruned_dir))

    # 2. export + verify (pruned artifacts and dense references in the same formats)
    from exporters import export

    exports = state["done"].setdefault("export", {})
    for f in tgt.formats:
        key = f"{f['format']}-{f['dtype']}"
        for which, src, base in (("pruned", pruned_dir, out_dir / "artifacts"), ("dense", model_dir, out_dir / "reference")):
            k = f"{which}:{key}"
            if k in exports:
                continue
            base.mkdir(exist_ok=True)
            path = base / (f"model-{f['dtype']}.gguf" if f["format"] == "gguf" else f"onnx-{f['dtype']}")
            log(f"export {which} {key} -> {path.relative_to(out_dir)}")
            exports[k] = export(src, f["format"], path, dtype=f["dtype"], force=True)
            save_state()

    # 3. profile
    tok = tokenizer_for(model_dir)
    eval_text = data_mod.load_text(calib, "eval", data_dir)
    seq = min(PPL_SEQ_LEN, int(getattr(cfg, "max_position_embeddings", 2048)))
    windows = data_mod.eval_windows(data_mod.tokenize(tok, eval_text), seq, PPL_MAX_WINDOWS)
    ppl_protocol = {"data": calib, "portion": "eval", "seq_len": seq, "windows": int(windows.shape[0]),
                    "tokens": int(windows.shape[0] * (seq - 1)), "through": "the artifact's runtime"}
    from .latency import host_info, measure
    from .speedup import check as speedup_check

    context = max(8, min(tgt.context, int(getattr(cfg, "max_position_embeddings", 2048)) - tgt.new_tokens - 8))
    artifacts, estimates = [], []
    profiled = state["done"].setdefault("profile", {})
    for f in tgt.formats:
        key = f"{f['format']}-{f['dtype']}"
        ep, ed = exports[f"pruned:{key}"], exports[f"dense:{key}"]
        if key not in profiled:
            log(f"profile {key}: perplexity and latency (dense vs pruned, interleaved)")
            ppl_d = runtime_perplexity(Path(ed["path"]), windows)
            ppl_p = runtime_perplexity(Path(ep["path"]), windows)
            lat = measure({"dense": Path(ed["path"]), "pruned": Path(ep["path"])}, context, tgt.new_tokens, LATENCY_REPS,
                          vocab=ad.vocab_size)
            profiled[key] = {"ppl": [ppl_d, ppl_p], "latency": lat}
            save_state()
        ppl_d, ppl_p = profiled[key]["ppl"]
        lat = profiled[key]["latency"]
        b_d = linear_weight_bytes(Path(ed["path"]), f["format"], f["dtype"], ad)
        b_p = linear_weight_bytes(Path(ep["path"]), f["format"], f["dtype"], ad_p)
        ideal = b_d / b_p
        sp = speedup_check(lat["dense"].get("decode_ms_per_token_runs") or [lat["dense"]["decode_ms_per_token_min"]],
                           lat["pruned"].get("decode_ms_per_token_runs") or [lat["pruned"]["decode_ms_per_token_min"]], ideal)
        if sp["status"] != "pass":
            log(f"{'WARNING' if sp['status'] == 'miss' else 'note'}: {key} speedup check {sp['status'].upper()}: "
                f"{sp['decode_measured']:.2f}x vs ideal {ideal:.2f}x; {sp['reason']}")
        artifacts.append({
            "format": f["format"], "dtype": f["dtype"], "path": str(Path(ep["path"]).relative_to(out_dir)),
            "bytes": ep["bytes"], "verify": ep["verify"], "verify_report": ep.get("verify_report"),
            "architecture": ep.get("architecture"), "fallbacks": ep.get("fallbacks", []),
            "reference_dense": {"path": str(Path(ed["path"]).relative_to(out_dir)), "bytes": ed["bytes"], "verify_passed": ed["verify"].get("passed")},
            "perplexity": {"dense": ppl_d, "pruned": ppl_p, "ratio": ppl_p / ppl_d, "protocol": ppl_protocol},
            "latency": lat,
            "speedup": {**sp,
                        "ideal_definition": "dense/pruned bytes of linear weights read per decoded token (lm_head included, token embedding excluded)",
                        "weight_bytes_per_token": {"dense": b_d, "pruned": b_p},
                        "prefill_measured": lat["pruned"]["prefill_tokens_per_s_max"] / lat["dense"]["prefill_tokens_per_s_max"]},
        })
        estimates.append(_estimate(tgt, f, {"dense": b_d, "pruned": b_p}, ad, ad_p, lat, state, save_state))

    from .inspect_cmd import plot_plan
    from .plan import Plan

    plots = []
    plan = Plan.load(pruned_dir)
    plot_plan(plan, str(out_dir / "plan.png"))
    plots.append("plan.png")
    non_emb_d, emb = _sizes(ad)
    calib_text = data_mod.load_text(calib, "calib", data_dir)
    min_versions = {}
    for a in artifacts:
        if a["format"] == "gguf":
            min_versions[a["path"]] = ("llama.cpp with the 'deci' architecture (DeciLM/Nemotron-NAS support, added December 2024); "
                                       "tested with llama-cpp-python 0.3.36" if a["architecture"] == "deci"
                                       else f"llama.cpp with the '{a['architecture']}' architecture; tested with llama-cpp-python 0.3.36")
        else:
            min_versions[a["path"]] = _onnx_min_ort(out_dir / a["path"])
    profile = {
        "schema_version": SCHEMA_VERSION,
        "target": {"name": tgt.name, "file": str(tgt.path), **tgt.data},
        "prune": {
            "method": method, "ratio_requested": the_ratio, "ratio_reason": why, "ratio_achieved": rep["ratio_achieved"],
            "params_dense": rep["params_dense_nonembedding"], "params_pruned": rep["params_pruned_nonembedding"],
            "params_dense_total": rep["params_dense_nonembedding"] + emb,
            "params_pruned_total": rep["params_pruned_nonembedding"] + emb,
            "params_definition": "non-embedding: all parameters except token embedding and lm_head",
            "peak_memory_bytes": rep["peak_memory"]["peak_bytes"],
            "peak_memory_above_baseline_bytes": rep["peak_memory"]["above_baseline_bytes"],
            "peak_memory_kind": rep["peak_memory"]["kind"],
            "wall_seconds": rep["wall_seconds"], "layers_removed": rep["layers_removed"],
            "calibration_tokens": rep["calibration_tokens"],
        },
        "memory": _memory_figures(rep, exports),
        "checkpoint": {"path": "model", "base_model": str(getattr(cfg, "_name_or_path", "") or model_dir), "format": "huggingface"},
        "artifacts": artifacts,
        "device_estimate": {"target": tgt.name, "bandwidth_gb_s": tgt.bandwidth / 1e9, "peak_tflops": tgt.peak_flops / 1e12,
                            "artifacts": estimates},
        "provenance": {
            "versions": _versions(), "command": command, "seed": seed, "calibration": {"data": calib, "sha256": _sha256(calib_text),
                                                                                     "n_samples": nsamples, "seq_len": seq_len,
                                                                                     "portion": "calib", "defaulted": defaulted},
            "evaluation": {"data": calib, "portion": "eval (disjoint from the calibration portion)"},
            "base_model": {"name": "edgeprune embedded demo model (trained on the Python stdlib source)" if demo else str(model_dir),
                           "license": _license(model_dir, cfg)},
            "min_runtime_versions": min_versions, "host": host_info(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }
    plots += plot_latency_and_ppl(out_dir, profile)
    profile["plots"] = plots
    bad = _non_finite(profile)
    if bad:  # a profile never holds NaN/Inf (invalid JSON, and a lie); the build fails below
        profile["non_finite_fields"] = bad
    tmp = out_dir / ".profile.json.tmp"
    tmp.write_text(json.dumps(_finite(profile), indent=1, allow_nan=False))
    tmp.replace(out_dir / "profile.json")
    write_report(out_dir, profile)
    if bad:
        raise BuildError(f"non-finite values in the profile ({', '.join(bad[:3])}); the model produces NaN/Inf, "
                         "check its weights; the build is left incomplete")
    if not all(a["verify"].get("passed") for a in artifacts):
        raise BuildError("an artifact failed verification; the build is left incomplete (see its .verify.json)")
    state["complete"] = True
    save_state()
    (out_dir / INCOMPLETE).unlink(missing_ok=True)
    lines = [f"build complete: {out_dir} (target {tgt.name}, {method} ratio {the_ratio}: {why})"]
    for a in artifacts:
        lines.append(f"  {a['format']:4} {a['dtype']:5} {a['bytes']:>12,} B  PPL {a['perplexity']['dense']:.3f} -> {a['perplexity']['pruned']:.3f}  "
                     f"decode {a['latency']['dense']['decode_ms_per_token_min']:.3f} -> {a['latency']['pruned']['decode_ms_per_token_min']:.3f} ms/tok  "
                     f"speedup {a['speedup']['decode_measured']:.2f}x [{a['speedup']['decode_interval'][0]:.2f}, "
                     f"{a['speedup']['decode_interval'][1]:.2f}] (ideal {a['speedup']['decode_ideal']:.2f}x): "
                     f"{a['speedup']['status'].upper()}")
    mem = profile["memory"]
    lines.append(f"  peak memory {mem['peak_bytes'] / 2**20:.0f} MiB over every stage (" + ", ".join(
        f"{k} {v / 2**20:.0f}" for k, v in mem["stages_peak_bytes"].items()) + " MiB)")
    lines.append(f"  profile: {out_dir / 'profile.json'}  report: {out_dir / 'report.md'}")
    return {"summary": "\n".join(lines), "profile": profile}


def _non_finite(x, path: str = "") -> list[str]:
    if isinstance(x, float) and not math.isfinite(x):
        return [path or "."]
    if isinstance(x, dict):
        return [p for k, v in x.items() for p in _non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(x, list):
        return [p for i, v in enumerate(x) for p in _non_finite(v, f"{path}[{i}]")]
    return []


def _finite(x):
    """NaN/Inf -> None, recursively (the fields are listed in `non_finite_fields`)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _memory_figures(rep: dict, exports: dict) -> dict:
    """The process's real peak RSS over every stage of the build, and each stage's own."""
    from .memory import process_peak_bytes

    stages = {k: v["peak_bytes"] for k, v in rep["peak_memory"].get("stages", {}).items()}
    for key, e in exports.items():
        for stage, m in (e.get("peak_memory") or {}).get("stages", {}).items():
            stages[f"{stage} {key}"] = m["peak_bytes"]
    return {"kind": rep["peak_memory"]["kind"], "peak_bytes": max([process_peak_bytes(), *stages.values()]),
            "stages_peak_bytes": stages,
            "note": "whole-process RSS high-water mark; stages run in this process (a resumed build only sees its own run)"}


def _license(model_dir: Path, cfg) -> str | None:
    readme = model_dir / "README.md"
    if readme.is_file():
        for line in readme.read_text(errors="replace").splitlines()[:30]:
            if line.lower().startswith("license:"):
                return line.split(":", 1)[1].strip()
    return getattr(cfg, "license", None)

"""`edgeprune build`: load -> calibrate -> prune -> apply -> save -> export -> verify -> profile.

`build` reads as its list of stages (`STAGES`). Each stage is a function of the build's
context and records its result under its name in `build_state.json`; `--resume` skips
finished work (the prune stage resumes per layer, export per artifact, profile per pair).
The directory carries `.edgeprune-incomplete` until every stage ran and every artifact
verified. What a profile holds and how it is measured lives in `edgeprune/profile.py`.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import dist
from . import profile as prof
from .checkpoint import INCOMPLETE, check_output_dir, load_config
from .errors import EdgePruneError, ToleranceError
from .guard import OutLock, fingerprint, refuse_changed, refuse_overlap, set_stage
from .models import get_adapter
from .targets import Target, load_target

AUTO_LADDER = [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7]


class BuildError(EdgePruneError):
    pass


QUIET = {"on": False}  # build --quiet: stage lines and progress bars off (warnings still show)


def log(msg: str) -> None:
    if not QUIET["on"] or msg.startswith("WARNING"):
        print(f"[edgeprune build] {msg}", file=sys.stderr)


@dataclass
class Build:
    """Everything the stages share; `state` is what `build_state.json` holds."""

    tgt: Target
    out_dir: Path
    model_dir: Path
    demo: bool
    calib: str
    defaulted: bool
    method: str
    ratio: float | None  # the parameter ratio asked of the method (None: search under a speed budget)
    why: str
    opts: dict
    align: int = 1  # --align, else the target's
    budget: object = None  # a speed budget (budget.Budget) or None: the ratio
    latency: object = None  # the latency model of the target's first artifact (speed budgets)
    state: dict = field(default_factory=dict)
    profile: dict = field(default_factory=dict)
    lock: OutLock | None = None
    created: bool = False  # this run made out_dir (a failure before any stage finished removes it)

    @property
    def done(self) -> dict:
        return self.state["done"]

    @property
    def formats(self) -> list[dict]:
        """The target's formats with the dtype `stage_dtypes` chose for each (its record under
        "choice"), each (format, dtype) once."""
        out, seen = [], set()
        for f in self.tgt.formats:
            rec = self.done.get("dtypes", {}).get(f"{f['format']}-{f['dtype']}")
            g = {"format": f["format"], "dtype": rec["chosen"] if rec else f["dtype"], **({"choice": rec} if rec else {})}
            if (g["format"], g["dtype"]) not in seen:
                seen.add((g["format"], g["dtype"]))
                out.append(g)
        return out

    def save_state(self) -> None:
        path = self.out_dir / "build_state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(path)


def choose_ratio(target: Target, ad, requested: float | None) -> tuple[float, str]:
    if requested is not None:
        return requested, "from --ratio"
    if target.ratio != "auto":
        return float(target.ratio), f"the {target.name} target's default"
    non_emb, emb = prof.sizes(ad)
    bpp = max(prof.bytes_per_weight(f["dtype"]) for f in target.formats)
    kv = prof.kv_cache_bytes(ad, target.context)

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


def _warn_alignment(tgt: Target, ad, align: int, chosen: dict[str, dict]) -> None:
    """A quantised format whose block the build's alignment does not respect falls back to a
    bigger type (llama.cpp does so silently for k-quants): say so before the work, for the
    dtype the dense widths leave each format (`_check_dtypes`)."""
    from exporters.dtypes import get

    for t in tgt.formats:
        f = {**t, "dtype": chosen[f"{t['format']}-{t['dtype']}"]["chosen"]}
        block = get(f["dtype"]).block
        if f["format"] == "gguf" and block > 1 and align % block:
            log(f"WARNING: align {align} is not a multiple of {f['dtype']}'s block {block}: pruned widths "
                f"may fall back to a bigger type (listed in the verify report); set align = {block} in the target")
        elif f["format"] == "gguf" and block > 1 and ad.hidden_size % block:
            log(f"note: hidden size {ad.hidden_size} is not a multiple of {f['dtype']}'s block {block}: some tensors "
                "will fall back whatever the pruning does (listed in the verify report)")


def _check_dtypes(tgt: Target, ad, align: int) -> dict[str, dict]:
    """What the dense widths already decide (a hidden size off the block makes most weights
    fall back whatever the pruning does), said before any work; refused when no dtype of a
    format's list fits. `stage_dtypes` decides on the pruned widths before exporting."""
    from . import dtype_fit

    try:
        return dtype_fit.decide(tgt.formats, ad, ad, align, log, rules=("fallback",))
    except dtype_fit.DTypeError as e:
        raise BuildError(str(e)) from None


def check_align(align, tgt: Target) -> int:
    """--align, validated as prune's is (a positive whole number), else the target's."""
    if align is None:
        return tgt.align
    if isinstance(align, bool) or not isinstance(align, int) or align < 1:
        raise BuildError(f"--align must be a positive whole number (got {align!r}); e.g. --align 32, or 1 for none")
    return align


def _read_state(path: Path) -> dict:
    """build_state.json as written by `save_state`, and every artifact it records as exported
    still there with a valid verify report (the export stage would skip it), or one line."""
    from exporters.artifacts import read_verify_report

    from . import schema

    st = schema.read(path, schema.BUILD_STATE, "build state", "the build cannot be resumed; pass --force to start over")
    for res in st["done"].get("export", {}).values():
        read_verify_report(Path(res["path"]), "pass --force to rebuild")
    return st


# ---- the stages -------------------------------------------------------------------------
def stage_prune(b: Build) -> None:
    """Calibrate, plan, apply and save the pruned checkpoint into `model/` (resumable per layer)."""
    from .pipeline import prune

    from .methods import get

    o = b.opts
    speed = {"speedup": None, "latency_ms": None, "ratio": b.ratio}
    if b.budget is not None:  # prune translates it again for a parameter-only method (same model, same ratio)
        speed = {"ratio": None, b.budget.kind: b.budget.requested, "latency_model": b.latency}
    kw = None if "prune" in b.done else dict(
        model_dir=b.model_dir, method=b.method, **speed, layers=get(b.method).build_layers, calib=b.calib,
        n_samples=o["nsamples"], seq_len=o["seq_len"], seed=o["seed"], device=o["device"], data_dir=o["data_dir"],
        out=b.out_dir / "model", resume=True, force=True, align=b.align, checked=True, progress=not QUIET["on"],
        search_evals=o.get("search_evals", 128), **({"extra": {"ladder_dir": o["ladder_dir"]}} if o.get("ladder_dir") else {}))
    dist.broadcast_object(kw)  # a distributed build's other ranks prune with these arguments (`follow`)
    if kw is None:
        return
    t0 = time.perf_counter()
    res = prune(**kw)
    b.done["prune"] = {**res.report, "stage_seconds": time.perf_counter() - t0}
    b.save_state()


def follow(device: str) -> None:
    """A distributed build on a rank other than 0: rank 0 checks the request, owns the build
    directory and runs every stage; this rank takes part in the prune stage only (with the
    arguments rank 0 sends, on its own device), then leaves rank 0 to export and profile."""
    from .pipeline import prune

    kw = dist.broadcast_object(None)
    if kw is not None:
        prune(**{**kw, "device": device, "progress": False})


def stage_dtypes(b: Build) -> None:
    """Before exporting: each format's dtype, or the next of the target's list, that fits the
    pruned widths (few fallbacks, pruned weights smaller than dense: `dtype_fit`); refused
    with the reason when none does (the prune stays done: fix the target and --resume)."""
    from . import dtype_fit

    if "dtypes" in b.done:
        return
    dense, pruned = get_adapter(load_config(b.model_dir)), get_adapter(load_config(b.out_dir / "model"))
    try:
        chosen = dtype_fit.decide(b.tgt.formats, dense, pruned, b.align, log)
    except dtype_fit.DTypeError as e:
        raise BuildError(f"{e}; then rerun with --resume") from None
    b.done["dtypes"] = chosen
    b.save_state()


def stage_export(b: Build) -> None:
    """Export and verify every format, pruned (`artifacts/`) and dense (`reference/`)."""
    from exporters import export

    exports = b.done.setdefault("export", {})
    for f in b.formats:
        key = f"{f['format']}-{f['dtype']}"
        for which, src, base in (("pruned", b.out_dir / "model", b.out_dir / "artifacts"),
                                 ("dense", b.model_dir, b.out_dir / "reference")):
            if f"{which}:{key}" in exports:
                continue
            base.mkdir(exist_ok=True)
            path = base / (f"model-{f['dtype']}.gguf" if f["format"] == "gguf" else f"onnx-{f['dtype']}")
            if which == "dense" and b.opts.get("reference_from"):
                from .sweep import link_reference

                linked = link_reference(b, key, path)
                if linked is not None:
                    exports[f"{which}:{key}"] = linked
                    b.save_state()
                    continue
            log(f"export {which} {key} -> {path.relative_to(b.out_dir)}")
            try:
                exports[f"{which}:{key}"] = export(src, f["format"], path, dtype=f["dtype"], force=True,
                                                        gguf_pre=b.opts.get("gguf_pre"))
            except ToleranceError as e:
                if which != "pruned" or not _next_dtype(b, f, str(e)):
                    raise
                return stage_export(b)  # the formats changed: start the loop over (finished exports are kept)
            b.save_state()


def _next_dtype(b: Build, f: dict, why: str) -> bool:
    """After a verification outside the dtype's tolerance, move that format to the next dtype of
    the target's list (recorded with the reason); False when the list is exhausted."""
    rec_key = next(k for k in b.done.get("dtypes", {}) if b.done["dtypes"][k]["chosen"] == f["dtype"]
                   and k.startswith(f["format"] + "-")) if b.done.get("dtypes") else None
    entry = next(t for t in b.tgt.formats if f"{t['format']}-{t['dtype']}" == (rec_key or f"{f['format']}-{f['dtype']}"))
    order = [entry["dtype"], *entry.get("fallback", [])]
    later = order[order.index(f["dtype"]) + 1:] if f["dtype"] in order else []
    if not later or rec_key is None:
        return False
    rec = b.done["dtypes"][rec_key]
    log(f"WARNING: {f['format']} {f['dtype']} failed its tolerance on this model ({why.split('; the artifact')[0]}); "
        f"using {later[0]}, the next of the target's list")
    rec.update(chosen=later[0], why="; ".join(x for x in (rec.get("why"), f"{f['dtype']}: verification outside tolerance")
                                              if x))
    b.save_state()
    return True


def stage_measure(b: Build) -> None:
    """Perplexity through each runtime and interleaved dense/pruned latency, per format."""
    cfg = load_config(b.model_dir)
    windows, _ = prof.evaluation(b.model_dir, cfg, b.calib, b.opts["data_dir"])
    measured = b.done.setdefault("profile", {})
    exports = b.done["export"]
    for f in b.formats:
        key = f"{f['format']}-{f['dtype']}"
        if key in measured:
            continue
        log(f"profile {key}: perplexity and latency (dense vs pruned, interleaved)")
        measured[key] = prof.measure_pair(Path(exports[f"dense:{key}"]["path"]), Path(exports[f"pruned:{key}"]["path"]),
                                          windows, b.tgt, cfg, get_adapter(cfg).vocab_size)
        b.save_state()
    threads = next(iter(measured.values()))["latency"]["pruned"]["protocol"]["threads"] if measured else 1
    if b.done.get("host", {}).get("threads") != threads:
        b.done["host"] = prof.host_probe(threads)
        b.save_state()


def stage_profile(b: Build) -> None:
    """Assemble profile.json and report.md from the finished stages."""
    profile = prof.assemble(b)
    bad = prof.write_profile(b.out_dir, profile)
    if bad:
        raise BuildError(f"non-finite values in the profile ({', '.join(bad[:3])}); the model produces NaN/Inf, "
                         "check its weights; the build is left incomplete")
    if not all(a["verify"].get("passed") for a in profile["artifacts"]):
        raise BuildError("an artifact failed verification; the build is left incomplete (see its .verify.json)")
    b.profile = profile


STAGES = (stage_prune, stage_dtypes, stage_export, stage_measure, stage_profile)


def build(model: str | None = None, target: str = "cpu-x86", ratio: float | None = None, method: str | None = None,
          calib: str | None = None, out: str = "build", force: bool = False, resume: bool = False,
          data_dir=None, nsamples: int = 32, seq_len: int = 128, seed: int = 0, device: str = "cpu",
          search_evals: int = 128, align: int | None = None, command: str = "",
          gguf_pre: str | None = None, formats: str | None = None, quiet: bool = False,
          speedup: float | None = None, latency_ms: float | None = None,
          latency_table: str | None = None, ladder_dir: str | None = None, reference_from: str | None = None) -> dict:
    """Run every stage of a build into `out`; returns the console summary and the profile.
    The budget is at most one of `ratio`, `speedup`, `latency_ms` (else the target's);
    `formats` (`gguf:q8_0,onnx:f32`) replaces the target's artifact list."""
    QUIET["on"] = quiet
    if formats:
        from .targets import with_formats

        target = with_formats(load_target(target), formats)
    b = _start(model, target, ratio, method, calib, out, force, resume,
               dict(data_dir=data_dir, nsamples=nsamples, seq_len=seq_len, seed=seed, device=device, command=command,
                    search_evals=search_evals, align=align, gguf_pre=gguf_pre,
                    speed=(speedup, latency_ms), latency_table=latency_table,
                    ladder_dir=ladder_dir, reference_from=reference_from))  # both: `edgeprune sweep` shares them
    try:
        for stage in STAGES:
            set_stage(f"build {stage.__name__.removeprefix('stage_')}")
            stage(b)
    except Exception:
        if b.created and not b.done and not (b.out_dir / "model" / INCOMPLETE).exists():
            shutil.rmtree(b.out_dir, ignore_errors=True)  # made by this run, nothing in it worth resuming
        raise
    finally:
        b.lock.release()
    b.state["complete"] = True
    b.save_state()
    (b.out_dir / INCOMPLETE).unlink(missing_ok=True)
    asked = b.budget.words().lstrip("-") if b.budget is not None else f"ratio {b.ratio}"
    lines = [f"build complete: {b.out_dir} (target {b.tgt.name}, {b.method} {asked}: {b.why})"]
    return {"summary": "\n".join(lines + prof.summary_lines(b.profile, b.out_dir)), "profile": b.profile}


def _start(model, target, ratio, method, calib, out, force, resume, opts: dict) -> Build:  # long: every refusal first
    """Check everything, then create (or reopen) the build directory: refusals come first."""
    from .data import warn_if_overlap
    from .demo import ensure_demo_model
    from .pipeline import preflight

    tgt = target if isinstance(target, Target) else load_target(target)
    align = check_align(opts.get("align"), tgt)
    out_dir = Path(out).absolute()
    demo = model is None
    model_dir = Path(ensure_demo_model()) if demo else Path(model)
    refuse_overlap(out_dir, {"--model": model_dir, "--calib": calib, "--target": tgt.path})
    check_output_dir(out_dir, force=force, resume=resume)
    ad = get_adapter(load_config(model_dir))
    dense_fit = _check_dtypes(tgt, ad, align)  # before any directory exists
    defaulted = calib is None
    calib = calib or ("demo" if demo else "wikitext2")
    if defaulted and not demo:
        import warnings

        warnings.warn(f"no --calib given: calibrating on {calib}'s calibration portion and evaluating on its evaluation "
                      "portion (general English text). If your model's domain differs (code, stories, chat), pass --calib "
                      "with in-domain text", stacklevel=3)
    warn_if_overlap(calib, calib)  # build evaluates on the calibration source's eval portion
    method = method or tgt.method
    if any(f["format"] == "gguf" for f in tgt.formats):
        from exporters.vocab import preflight as tokenizer_preflight

        tokenizer_preflight(model_dir, opts.get("gguf_pre"))  # a vocabulary llama.cpp cannot hold is refused first
    from .budget_stages import budget_words, choose

    budget, why = choose(tgt, ratio, *opts.get("speed", (None, None)))
    if budget is not None and not budget.is_speed:
        budget = None  # --ratio: today's path
    the_ratio, why = choose_ratio(tgt, ad, ratio) if budget is None else (None, why)
    b = Build(tgt, out_dir, model_dir, demo, calib, defaulted, method, the_ratio, why, opts, align=align, budget=budget)
    args = {"model": str(model_dir), "target": tgt.name, "ratio": the_ratio, "method": method, "calib": calib,
            "nsamples": opts["nsamples"], "seq_len": opts["seq_len"], "seed": opts["seed"], "align": align,
            "formats": [[f["format"], f["dtype"]] for f in tgt.formats]}
    if budget is not None:
        args.update(budget=budget.to_json(), latency_table=str(opts.get("latency_table") or ""))
    inputs = fingerprint(model_dir, calib, tgt.path, opts["data_dir"])
    run = {"command": opts["command"], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    b.state = {"args": args, "inputs": inputs, "done": {}, "commands": [run]}
    state_path = out_dir / "build_state.json"
    if resume and state_path.is_file():
        old = _read_state(state_path)
        if old["args"] != args:
            raise BuildError(f"{out_dir} was started with different arguments {old['args']}; use the same ones with --resume, or --force")
        refuse_changed(old.get("inputs"), inputs, out_dir)
        b.state = old
        # the command that started the build stays first; each resume is appended (provenance)
        old.setdefault("commands", [{"command": None, "time": None, "note": "not recorded by the edgeprune that started it"}])
        old["commands"].append({**run, "resumed": True})
        log(f"resuming; finished stages: {', '.join(old['done']) or 'none'}")
    else:
        preflight(model_dir, method, calib, opts["nsamples"], opts["seq_len"], opts["seed"], opts["data_dir"],
                  progress=not QUIET["on"])  # --quiet: no "checking weights" bar either
    if budget is not None:  # the latency model, then the budget refused when out of reach, before the directory
        from .budget_stages import build_budget

        build_budget(b, ad, dense_fit)
    if not (resume and state_path.is_file()) and out_dir.exists() and force:
        shutil.rmtree(out_dir)  # check_output_dir made sure edgeprune wrote it
    b.created = not out_dir.exists()
    out_dir.mkdir(exist_ok=True)
    b.lock = OutLock(out_dir).acquire()
    (out_dir / INCOMPLETE).write_text("edgeprune build in progress\n")
    b.save_state()  # the arguments and input hashes, before any stage: a resume compares them
    log(f"target {tgt.name}; method {method}; {budget_words(b)}; align {align}"
        + (" (--align)" if opts.get("align") is not None else " (the target's)"))
    _warn_alignment(tgt, ad, align, dense_fit)
    log(f"calibration data: {calib} (calibration portion); evaluation data: {calib} (held-out evaluation portion)"
        + (" [default]" if defaulted else ""))
    return b

"""The build's stages after the checks, in order: prune, dtypes, export, measure, profile.
Each is a function of the build's context (`build_context.Build`) and records its result
under its name in `build_state.json`, so that `--resume` skips finished work (the prune
stage resumes per layer, export per artifact, measure per pair)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .. import dist
from ..measure import artifact_eval as ev
from ..report import profile as prof
from .build_context import QUIET, Build, BuildError, log
from ..io.checkpoint import load_config
from ..errors import ToleranceError
from ..models import get_adapter


def stage_prune(b: Build) -> None:
    """Calibrate, plan, apply and save the pruned checkpoint into `model/` (resumable per layer)."""
    from .pipeline import prune

    from ..methods import get

    o = b.opts
    speed = {"speedup": None, "latency_ms": None, "ratio": b.ratio}
    if b.budget is not None:  # prune translates it again for a parameter-only method (same model, same ratio)
        speed = {"ratio": None, b.budget.kind: b.budget.requested, "latency_model": b.latency}
    kw = None if "prune" in b.done else dict(
        model_dir=b.model_dir, method=b.method, **speed, layers=get(b.method).build_layers, calib=b.calib,
        n_samples=o["nsamples"], seq_len=o["seq_len"], seed=o["seed"], device=o["device"], data_dir=o["data_dir"],
        out=b.out_dir / "model", resume=True, force=True, align=b.align, checked=True, progress=not QUIET["on"],
        **b.options, **({"extra": {"ladder_dir": o["ladder_dir"]}} if o.get("ladder_dir") else {}))
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
    from ..measure import dtype_fit

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
    from exporters.formats import get as get_format

    exports = b.done.setdefault("export", {})
    for f in b.formats:
        key = f"{f['format']}-{f['dtype']}"
        for which, src, base in (("pruned", b.out_dir / "model", b.out_dir / "artifacts"),
                                 ("dense", b.model_dir, b.out_dir / "reference")):
            if f"{which}:{key}" in exports:
                continue
            base.mkdir(exist_ok=True)
            path = base / get_format(f["format"]).artifact_name(f["dtype"])
            if which == "dense" and b.opts.get("reference_from"):
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
    windows, _ = ev.evaluation(b.model_dir, cfg, b.calib, b.opts["data_dir"])
    measured = b.done.setdefault("profile", {})
    exports = b.done["export"]
    for f in b.formats:
        key = f"{f['format']}-{f['dtype']}"
        if key in measured:
            continue
        log(f"profile {key}: perplexity and latency (dense vs pruned, interleaved)")
        measured[key] = ev.measure_pair(Path(exports[f"dense:{key}"]["path"]), Path(exports[f"pruned:{key}"]["path"]),
                                          windows, b.tgt, cfg, get_adapter(cfg).vocab_size,
                                          _linked_dense_ppl(b, key, exports[f"dense:{key}"], windows),
                                          threads=b.state.get("runtime_threads"))
        b.save_state()
    threads = next(iter(measured.values()))["latency"]["pruned"]["protocol"]["threads"] if measured else 1
    if b.done.get("host", {}).get("threads") != threads:
        b.done["host"] = ev.host_probe(threads)
        b.save_state()


def link_reference(b, key: str, path: Path) -> dict | None:
    """The dense export of format `key` from the sweep's first build, linked at `path` (the
    dense model is the same for every budget); None when that build has none."""
    from exporters.formats import of_path

    src_dir = b.opts.get("reference_from")
    if not src_dir:
        return None
    state = Path(src_dir) / "build_state.json"
    rec = json.loads(state.read_text())["done"].get("export", {}).get(f"dense:{key}") if state.is_file() else None
    if rec is None:
        return None
    # the same name in the first build's reference/ (a GGUF file, or an ONNX folder whose model.onnx the record names)
    src = Path(src_dir) / path.parent.name / path.name
    inner = Path(rec["path"]).relative_to(src) if Path(rec["path"]) != src else None
    if path.is_symlink() or path.exists():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    os.symlink(src, path, target_is_directory=src.is_dir())
    form = of_path(src)
    side = form.verify_report(src) if form is not None else None
    if side is not None and src not in side.parents and side.is_file():  # kept beside the artifact (GGUF), not inside
        form.verify_report(path).unlink(missing_ok=True)
        os.symlink(side, form.verify_report(path))
    return {**rec, "path": str(path / inner if inner else path), "linked_from": rec["path"]}


def _linked_dense_ppl(b: Build, key: str, rec: dict, windows) -> dict | None:
    """The dense perplexity the sweep's first build measured through the artifact linked here,
    when it was measured on the same windows (their digest); None: measure it."""
    src = b.opts.get("reference_from")
    state = Path(src) / "build_state.json" if src and rec.get("linked_from") else None
    if state is None or not state.is_file():
        return None
    m = json.loads(state.read_text())["done"].get("profile", {}).get(key)
    if not m or m.get("windows_sha") != ev.windows_digest(windows):
        return None
    return {"perplexity": m["ppl"][0], "window_nll": m["ppl_window_nll"][0]}


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

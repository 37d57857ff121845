"""The prune pipeline: calibrate -> plan (layer-streamed, memory measured) -> apply -> save.

Resumable: with a work directory, the calibration windows and every finished layer's
decision are kept there, so an interrupted run continued with `--resume` reproduces the
plan of an uninterrupted one.
"""
from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import defaults, dist
from ..calibrate.data import calib_input, local_path, tokenizer_for  # noqa: F401  (tokenizer_for re-exported: callers import it from here)
from ..io.atomic import write_text
from ..io.checkpoint import load
from ..io.outdir import INCOMPLETE, check_output_dir, claim
from .dist_run import from_writer, on_writer, open_out, peaks
from ..measure.latency import DEFAULT_RUNTIME
from ..measure.memory import PeakMemory, stage_report
from ..methods import DEFAULT, PruneRequest, get
from ..methods.base import achieved_ratio, dense_params
from ..models import expected_nonembedding
from ..io.outlock import OutLock
from ..io.guard import fingerprint, refuse_other_run, refuse_overlap, set_stage
from ..plan import Plan
from .request_checks import MIN_CALIB_TOKENS, check_request, ratio_note
from ..io.resume import ResumeState  # noqa: F401  (re-exported: tests and dist_worker patch it here)
from .preflight import calibration, preflight, read_windows  # noqa: F401  (re-exported)
from ..calibrate.streaming import open_source
from ..apply.surgery import apply_plan
from ..io.tensorfiles import DiskTensors
from ..io.weights import parse_dtype
from ..report.plan_plot import record_widths
from ..apply.writeout import save_pruned

@dataclass
class PruneResult:
    plan: Plan
    model: torch.nn.Module | None
    report: dict = field(default_factory=dict)


def make_plan(model, method: str, req: PruneRequest, calib: torch.Tensor | None, device="cpu") -> tuple[Plan, dict]:
    """Run a method under the peak-memory meter; check the achieved ratio."""
    m = get(method)
    check_request(m, req.ratio, req.layers if req.layers != "auto" or m.takes_layers else None,
                  req.budget if m.cost_budget else None)
    if m.needs_calibration and calib is not None and calib.numel() < MIN_CALIB_TOKENS:
        warnings.warn(f"only {calib.numel()} calibration tokens (< {MIN_CALIB_TOKENS}); the plan may be noisy. "
                      "Raise --nsamples for a steadier result", stacklevel=2)
    t0 = time.perf_counter()
    with PeakMemory(device) as mem:
        source = open_source(model, device)
        plan = m.plan(source, calib, req)
        adapter = source.adapter
    wall = time.perf_counter() - t0
    ratio = achieved_ratio(plan, adapter)
    dense = dense_params(adapter)
    report = {
        "method": method,
        "ratio_requested": req.ratio,
        "ratio_achieved": ratio,
        "params_dense_nonembedding": dense,
        "params_pruned_nonembedding": expected_nonembedding(adapter, plan.result_shapes(adapter)),
        "params_embedding": adapter.embedding_params(),
        "params_dense_total": dense + adapter.embedding_params(),
        "params_pruned_total": expected_nonembedding(adapter, plan.result_shapes(adapter)) + adapter.embedding_params(),
        "layers_removed": plan.removed_layers,
        "peak_memory": stage_report({"plan": mem}, device),
        "wall_seconds": wall,
        "calibration_tokens": int(calib.numel()) if calib is not None else 0,
    }
    if req.latency is not None:
        from .budget_stages import record_budget

        record_budget(plan, report, req, adapter, ratio)
    plan.stats["report"] = report
    for o in m.options:  # every option a user can set is in the plan's record (methods write theirs first)
        if o.switch is not None and o.changes_plan:
            plan.options.setdefault(o.name, req.options[o.name])
    record_widths(plan, adapter)  # every method's plan carries its true kept widths (plan.png, inspect)
    note = ratio_note(m, req, ratio, plan)
    if note:
        warnings.warn(note, stacklevel=2)
        report["ratio_note"] = note
    return plan, report


def prune(  # long: one keyword argument per CLI option (the body is under 50 lines)
    model_dir: str | Path,
    method: str = DEFAULT,
    *,
    ratio: float | None = None,
    layers: int | str | None = None,
    calib: str = defaults.CALIB,
    n_samples: int = defaults.NSAMPLES,
    seq_len: int = defaults.SEQ_LEN,
    seed: int = defaults.SEED,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    out: str | Path | None = None,
    force: bool = False,
    resume: bool = False,
    dtype: str | None = None,
    checked: bool = False,
    speedup: float | None = None,
    latency_ms: float | None = None,
    latency_runtime: str = DEFAULT_RUNTIME,
    latency_table: str | Path | None = None,
    latency_model=None,
    **request,
) -> PruneResult:
    """Prune a checkpoint directory; with `out`, stream the physically pruned model there.

    The budget is one of `ratio`, `speedup` or `latency_ms` (decode ms/token): a speed budget is
    predicted by `latency_model`, else by one measured on this host for `latency_runtime`
    (FORMAT:DTYPE, at 128 tokens of context) or read from `latency_table` (measured on the
    device), and refused before any work when no plan reaches it.
    With `out`, nothing is loaded whole: planning and the apply+save are layer-streamed and
    the checkpoint keeps the source dtype (or `dtype`: bf16, f16, f32). Without `out` the
    pruned model is returned in memory (float32), for the Python API on small models.
    """
    from ..measure.budget import parse

    out_dtype = parse_dtype(dtype) if dtype else None
    budget = parse(ratio, speedup, latency_ms)
    speed = budget is not None and budget.is_speed
    req = PruneRequest(ratio=ratio, layers=layers, seed=seed, budget=budget if speed else None, **request)
    req.progress = req.progress and dist.is_writer()  # one progress display: rank 0's
    check_request(get(method), ratio, layers, req.budget)  # the ratio is validated here, once, before any work
    out_path = Path(out).absolute() if out else None
    on_disk = isinstance(model_dir, (str, Path))
    src = dict(calib=calib, n_samples=n_samples, seq_len=seq_len, seed=seed, data_dir=data_dir)
    args = {"model": str(Path(model_dir).absolute()) if on_disk else "in-memory", "method": method,
            "revision": get(method).revision, "ratio": ratio,
            "layers": layers, "calib": str(calib), "n_samples": n_samples, "seq_len": seq_len, "seed": seed, "dtype": dtype,
            "request": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(request.items()) if k != "progress"}}
    on_writer(lambda: _check_out(out_path, model_dir if on_disk else None, calib, force, resume))
    if speed:
        args.update(budget=budget.to_json(), latency_runtime=latency_runtime, latency_table=str(latency_table or ""))
        from .budget_stages import prune_budget

        def measured() -> tuple:  # rank 0 measures (or reads) the latency model; every rank takes its budget
            prune_budget(model_dir, method, req, latency_model, latency_runtime, latency_table)
            return req.latency, req.ratio, req.extra.get("budget")

        req.latency, req.ratio, req.extra["budget"] = from_writer(measured)
    resuming = from_writer(lambda: bool(out_path and resume and (out_path / INCOMPLETE).exists()
                                        and (out_path / ".work").is_dir()))
    set_stage("prune checks")
    windows = on_writer(lambda: _checked_windows(model_dir, method, src, req, checked, resuming, layers))
    work, lock, follower = open_out(out_path, req, lambda: _prepare_out(
        out_path, force, resume, resuming, args, req, fingerprint(model_dir, local_path(calib, data_dir)) if out_path else {}))
    try:
        return _plan_and_save(model_dir, method, req, windows, work, out_path if dist.is_writer() else None, resuming,
                              out_dtype, device, dict(src, calib=str(calib), out=out_path))
    finally:
        if lock is not None:
            lock.release()
        if follower is not None:
            follower.close()


def _check_out(out_path: Path | None, model_dir, calib, force: bool, resume: bool) -> None:
    """--out may neither hold nor sit inside an input, and must be new, edgeprune's, or resumable."""
    if out_path is not None:
        refuse_overlap(out_path, {"--model": model_dir, "--calib": calib_input(calib)})
        check_output_dir(out_path, force=force, resume=resume)


def _checked_windows(model_dir, method: str, src: dict, req: PruneRequest, checked: bool, resuming: bool,
                     layers) -> torch.Tensor | None:
    """The prune's own input checks (unless `build` ran them), returning the calibration
    windows they made; a checked fresh run still tokenizes here, so bad text fails before
    --out exists. None when the resume record holds them or the method needs none."""
    if not checked:
        return preflight(model_dir, method, src["calib"], src["n_samples"], src["seq_len"], src["seed"], src["data_dir"],
                         req.progress, req.protect, req.offload, windows=not resuming, layers=layers)
    if get(method).needs_calibration and not resuming:
        return calibration(model_dir, src["calib"], src["n_samples"], src["seq_len"], src["seed"], src["data_dir"])
    return None


def _plan_and_save(model_dir, method: str, req: PruneRequest, windows, work: Path | None, out_path: Path | None,
                   resuming: bool, out_dtype, device: str, opts: dict) -> PruneResult:
    """Plan under the memory meter, then apply and save (or apply in memory)."""
    windows = from_writer(lambda: _run_windows(model_dir, method, windows, work, opts))
    torch.manual_seed(opts["seed"])
    set_stage(f"prune plan ({method})")
    try:
        plan, report = make_plan(model_dir, method, req, windows, device)
    except Exception:
        _forget_if_fresh(out_path, resuming, work)
        raise
    plan.options.update({k: opts[k] for k in ("calib", "n_samples", "seq_len", "seed")})
    stages = {"plan": report["peak_memory"]["stages"]["plan"]}
    t0 = time.perf_counter()
    set_stage("prune apply and save")
    if dist.active():
        report["distributed"] = {"world_size": dist.world(), "backend": torch.distributed.get_backend(),
                                 "peak_memory_per_rank": peaks(report["peak_memory"])}
    if opts["out"] is not None and out_path is None:  # a follower rank: rank 0 saves; wait for it
        dist.barrier()
        return PruneResult(plan, None, report)
    with PeakMemory(device) as mem:
        if out_path is not None:
            saved = save_pruned(model_dir, plan, out_path, dtype=out_dtype, force=True, progress=req.progress)
            report["checkpoint"] = saved
            shutil.rmtree(work, ignore_errors=True)
            model = None
        else:
            model = apply_plan(load(model_dir, device=device), plan)
    stages["apply_save"] = mem
    report["peak_memory"] = stage_report(stages, device)
    report["apply_save_seconds"] = time.perf_counter() - t0
    if out_path is not None:
        dist.barrier()  # the followers end once the checkpoint is saved (or with rank 0's failure)
    return PruneResult(plan, model, report)


def _run_windows(model_dir, method: str, windows, work: Path | None, opts: dict) -> torch.Tensor | None:
    """Rank 0's calibration windows, kept in the work directory for a resume (or read back
    from it when resuming); every rank then prunes with exactly these."""
    if windows is None and get(method).needs_calibration:
        return calibration(model_dir, opts["calib"], opts["n_samples"], opts["seq_len"], opts["seed"],
                           opts["data_dir"], work)
    if work is not None and windows is not None:
        torch.save(windows, work / "calib.pt")
    return windows


def _forget_if_fresh(out_path: Path | None, resuming: bool, work: Path | None) -> None:
    """A refusal before any layer finished leaves nothing behind: the next plain run must
    not trip on a half-made --out."""
    if out_path is None or resuming or work is None:
        return
    if not any((work / "layers").glob("layer*.json")):
        shutil.rmtree(out_path, ignore_errors=True)  # created by this run, holding nothing worth resuming


def _prepare_out(out_path: Path | None, force: bool, resume: bool, resuming: bool, args: dict, req: PruneRequest,
                 inputs: dict[str, str]) -> tuple[Path | None, OutLock | None]:
    """Create --out (after every check passed) with its work directory and take its lock; on
    --resume, refuse when the arguments or the inputs' content differ from the interrupted
    run's, naming the difference."""
    if out_path is None:
        return None, None
    work = out_path / ".work"
    if resuming:
        from ..io import schema

        schema.check_work_files(work)  # every file the resume reads, before anything here changes
        if (work / "calib.pt").is_file():
            read_windows(work / "calib.pt")
        old = schema.read(work / "args.json", schema.RESUME_ARGS, "resume record", schema.RESTART) \
            if (work / "args.json").is_file() else None
        recorded = work / "inputs.json"
        refuse_other_run(out_path, old, args, schema.read(recorded, schema.RESUME_INPUTS, "resume record", schema.RESTART)
                         if recorded.is_file() else None, inputs)
    lock, _ = claim(out_path, force, resume, resuming)  # the --out checks again, under its lock
    (out_path / INCOMPLETE).write_text("edgeprune prune in progress\n")
    work.mkdir(exist_ok=True)
    write_text(work / "args.json", json.dumps(args, indent=1))
    write_text(work / "inputs.json", json.dumps(inputs, indent=1))
    req.state = ResumeState(work / "layers")
    shutil.rmtree(work / "tensors", ignore_errors=True)  # re-fitted tensors of this run only
    req.tensors = DiskTensors(work / "tensors")
    return work, lock

"""`edgeprune build`: load -> calibrate -> prune -> apply -> save -> export -> verify -> profile.

`build` reads as its list of stages (`STAGES`). Each stage is a function of the build's
context and records its result under its name in `build_state.json`; `--resume` skips
finished work (the prune stage resumes per layer, export per artifact, profile per pair).
The directory carries `.edgeprune-incomplete` until every stage ran and every artifact
verified. What a profile holds and how it is measured lives in `edgeprune/report/profile.py`.
"""
from __future__ import annotations

import shutil

from .. import defaults
from ..report import profile as prof
from .build_context import QUIET, Build, BuildError, log  # noqa: F401  (the build's API)
from .build_stages import follow, stage_dtypes, stage_export, stage_measure, stage_profile, stage_prune  # noqa: F401
from .build_start import _check_dtypes, _read_state, _start, check_align, choose_ratio, method_options  # noqa: F401
from ..io.outdir import INCOMPLETE
from ..io.guard import set_stage
from .targets import load_target


STAGES = (stage_prune, stage_dtypes, stage_export, stage_measure, stage_profile)


def build(model: str | None = None, target: str = "cpu-x86", ratio: float | None = None, method: str | None = None,
          calib: str | None = None, out: str = "build", force: bool = False, resume: bool = False,
          data_dir=None, nsamples: int = defaults.NSAMPLES, seq_len: int = defaults.SEQ_LEN,
          seed: int = defaults.SEED, device: str = "cpu",
          options: dict | None = None, align: int | None = None, command: str = "",
          gguf_pre: str | None = None, formats: str | None = None, quiet: bool = False,
          speedup: float | None = None, latency_ms: float | None = None,
          latency_table: str | None = None, ladder_dir: str | None = None, reference_from: str | None = None,
          runtime_threads: int | None = None) -> dict:
    """Run every stage of a build into `out`; returns the console summary and the profile.
    The budget is at most one of `ratio`, `speedup`, `latency_ms` (else the target's);
    `formats` (`gguf:q8_0,onnx:f32`) replaces the target's artifact list; `options` sets method
    options a build takes (`methods.BUILD_OPTIONS`, e.g. {"search_evals": 8}) over the target's."""
    QUIET["on"] = quiet
    if formats:
        from .target_formats import with_formats

        target = with_formats(load_target(target), formats)
    b = _start(model, target, ratio, method, calib, out, force, resume,
               dict(data_dir=data_dir, nsamples=nsamples, seq_len=seq_len, seed=seed, device=device, command=command,
                    options=options or {}, align=align, gguf_pre=gguf_pre,
                    speed=(speedup, latency_ms), latency_table=latency_table,
                    ladder_dir=ladder_dir, reference_from=reference_from,  # both: `edgeprune sweep` shares them
                    runtime_threads=runtime_threads))
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

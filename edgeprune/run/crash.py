"""How a run that stops for a reason other than bad input ends: one line on stderr naming
the stage and the exception, where the traceback was saved, and whether `--resume` can
continue (exit 1); an interrupt says the same about resuming (exit 130). A user needs the
line to decide what to do and the file to report a bug; a traceback on the console gives
neither clearly.
"""
from __future__ import annotations

import tempfile
import traceback
from pathlib import Path

ERROR_LOG = "edgeprune-error.log"
RESUMABLE = ("prune", "build")  # the commands that take --resume


def _out_of(args) -> Path | None:
    out = getattr(args, "out", None)
    return Path(out).absolute() if out else None


def resumable(cmd: str, args) -> bool:
    """True when `--out` holds an interrupted run that `--resume` continues."""
    from ..io.outdir import INCOMPLETE

    out = _out_of(args)
    return cmd in RESUMABLE and out is not None and (out / INCOMPLETE).is_file()


def resume_hint(cmd: str, args) -> str:
    if resumable(cmd, args):
        return f"{_out_of(args)} is kept: run the same command with --resume to continue"
    if cmd in RESUMABLE:
        return "nothing resumable was left at --out: run the command again"
    return "nothing was left at --out (export has no --resume): run the command again" if cmd == "export" \
        else "run the command again"


def save_traceback(exc: BaseException, cmd: str, args) -> Path:
    """The traceback into `<out>/edgeprune-error.log` when --out is a directory edgeprune
    wrote (it stays with the run it explains), else into a new temporary file."""
    from ..io.outdir import written_by_edgeprune

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    out = _out_of(args)
    from .. import dist

    if out is not None and dist.is_writer() and out.is_dir() and written_by_edgeprune(out):  # rank 0 owns --out
        path = out / ERROR_LOG
        try:
            path.write_text(text)
            return path
        except OSError:
            pass
    fd, name = tempfile.mkstemp(prefix=f"edgeprune-{cmd}-error-", suffix=".log")
    with open(fd, "w") as f:
        f.write(text)
    return Path(name)


def unexpected(exc: BaseException, cmd: str, args) -> str:
    """The one line for an exception edgeprune did not foresee."""
    from ..io.guard import current_stage

    stage = current_stage() or cmd
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    log = save_traceback(exc, cmd, args)
    return (f"edgeprune: error: {stage} failed unexpectedly with {type(exc).__name__}"
            + (f": {first}" if first else "") + f"; traceback saved to {log}; {resume_hint(cmd, args)}")


def interrupted(cmd: str, args) -> str:
    return f"edgeprune: interrupted; {resume_hint(cmd, args)}"

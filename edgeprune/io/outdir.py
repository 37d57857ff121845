"""Where edgeprune may write: the markers of what it wrote, and the checks every command runs
on its --out before any work (never replace what edgeprune did not write; finished results
need --force; an interrupted one needs --resume or --force)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import OutputError
from .outlock import LOCK, OutLock, refuse_locked, refuse_mount_point

MANIFEST = "edgeprune.json"
INCOMPLETE = ".edgeprune-incomplete"
OWNER = ".edgeprune"  # marks every other directory edgeprune writes (ONNX folders)
# Any of these in a directory means edgeprune wrote it, so --force may replace it.
OWNED_MARKERS = (MANIFEST, INCOMPLETE, OWNER, "build_state.json", LOCK)


def partial(parent: Path, stem: str, suffix: str = "") -> Path:
    """The hidden name an output `stem` + `suffix` is staged under in `parent` by this process
    (`.STEM.partial-PID SUFFIX`): the process id is what `remove_orphans` reads to tell a dead
    run's leftovers from a live one's."""
    return parent / f".{stem}.partial-{os.getpid()}{suffix}"


def remove_orphans(parent: Path, stem: str) -> None:
    """Partial outputs of `stem` (ours, by `partial`'s name) left by a process that no longer
    runs (a SIGKILL): removed, so that they neither pile up nor confuse the next run."""
    prefix = f".{stem}.partial-"
    for p in parent.glob(prefix + "*"):
        pid = p.name[len(prefix):].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def written_by_edgeprune(directory: Path, held: bool = False) -> bool:
    """True when a marker edgeprune writes is there (with `held`, not counting the lock this
    run has just taken: that one proves nothing about what was there before)."""
    return any((directory / m).exists() for m in OWNED_MARKERS if not (held and m == LOCK))


def _entries(out: Path, held: bool) -> list[Path]:
    return [p for p in out.iterdir() if not (held and p.name == LOCK)]


def refuse_foreign(out: Path, held: bool = False) -> None:
    """A non-empty directory edgeprune did not write is never replaced, --force or not."""
    if out.is_dir() and _entries(out, held) and not written_by_edgeprune(out, held):
        example = sorted(p.name for p in _entries(out, held))[0]
        raise OutputError(f"{out} holds files edgeprune did not write (e.g. {example}); choose a new or empty --out "
                          "(nothing there was touched)")


def check_output_dir(out: Path, force: bool, resume: bool = False, held: bool = False) -> None:
    """Refuse finished results (without --force) and stale half-written ones (without --resume).
    `held`: checked again by a run that has just taken the lock of `out` (see `claim`)."""
    if not out.parent.exists():
        raise OutputError(f"output parent directory {out.parent} does not exist; create it first")
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"output directory {out.parent} is not writable; choose another --out")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"--out {out} exists and is a file; choose a directory path")
    refuse_foreign(out, held)
    refuse_mount_point(out)
    refuse_locked(out)
    if (out / INCOMPLETE).exists():
        if resume or force:
            return
        raise OutputError(f"{out} holds an interrupted run; add --resume to continue it or --force to start over")
    if _entries(out, held):
        if force:
            return
        raise OutputError(f"{out} already holds a result; pass --force to overwrite it or choose another --out")


def claim(out: Path, force: bool, resume: bool, resuming: bool) -> tuple[OutLock, bool]:
    """Create `out` if needed, take its lock, and only then decide from what it holds.

    The checks before any work ran without the lock: between them and now another run may
    have finished into `out` (its lock already released) or started there. Under the lock
    the same checks are repeated, so a second run never writes into a finished result nor
    removes another's (`force` and `resume` are the user's flags). Unless `resuming` (an
    interrupted run continues), `force` then empties `out`, keeping the lock.
    Returns the lock and whether this run made the directory (or emptied it), which a
    failure before any work may then remove.
    """
    made = not out.exists()
    out.mkdir(exist_ok=True)
    lock = OutLock(out).acquire()
    try:
        check_output_dir(out, force=force, resume=resume, held=True)
        if force and not resuming and _entries(out, True):
            for p in _entries(out, True):  # check_output_dir made sure edgeprune wrote them
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            made = True
    except BaseException:
        lock.release()
        if made and not any(out.iterdir()):  # the empty directory this run made, nobody else's
            out.rmdir()
        raise
    return lock, made

"""Where edgeprune may write: the markers of what it wrote, and the checks every command runs
on its --out before any work (never replace what edgeprune did not write; finished results
need --force; an interrupted one needs --resume or --force)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import OutputError

MANIFEST = "edgeprune.json"
INCOMPLETE = ".edgeprune-incomplete"
OWNER = ".edgeprune"  # marks every other directory edgeprune writes (ONNX folders)
# Any of these in a directory means edgeprune wrote it, so --force may replace it.
OWNED_MARKERS = (MANIFEST, INCOMPLETE, OWNER, "build_state.json", ".edgeprune-lock")


def remove_orphans(parent: Path, prefix: str) -> None:
    """Partial outputs (ours, by name) of a process that no longer runs (a SIGKILL): removed,
    so that they neither pile up nor confuse the next run."""
    for p in parent.glob(prefix + "*"):
        pid = p.name[len(prefix):].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def written_by_edgeprune(directory: Path) -> bool:
    return any((directory / m).exists() for m in OWNED_MARKERS)


def refuse_foreign(out: Path) -> None:
    """A non-empty directory edgeprune did not write is never replaced, --force or not."""
    if out.is_dir() and any(out.iterdir()) and not written_by_edgeprune(out):
        example = sorted(p.name for p in out.iterdir())[0]
        raise OutputError(f"{out} holds files edgeprune did not write (e.g. {example}); choose a new or empty --out "
                          "(nothing there was touched)")


def check_output_dir(out: Path, force: bool, resume: bool = False) -> None:
    """Refuse finished results (without --force) and stale half-written ones (without --resume)."""
    if not out.parent.exists():
        raise OutputError(f"output parent directory {out.parent} does not exist; create it first")
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"output directory {out.parent} is not writable; choose another --out")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"--out {out} exists and is a file; choose a directory path")
    refuse_foreign(out)
    from .guard import refuse_locked, refuse_mount_point

    refuse_mount_point(out)
    refuse_locked(out)
    if (out / INCOMPLETE).exists():
        if resume or force:
            return
        raise OutputError(f"{out} holds an interrupted run; add --resume to continue it or --force to start over")
    if any(out.iterdir()):
        if force:
            return
        raise OutputError(f"{out} already holds a result; pass --force to overwrite it or choose another --out")

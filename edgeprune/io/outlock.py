"""One run per `--out`, and an `--out` a run can finish: a pid lock file that two runs racing
for the same directory settle atomically (`O_EXCL`), and the mount-point check (results are
staged beside `--out` and renamed into place, which a mount point refuses only after all the
work). It needs nothing of edgeprune but its errors, so every writer (prune, build, sweep,
export) can take it without pulling in the rest.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import OutputError

LOCK = ".edgeprune-lock"


def refuse_mount_point(out: Path) -> None:
    """An existing `--out` on another file system than its parent cannot be replaced by a
    rename from beside it: refuse before any work, naming a path that works."""
    if out.exists() and os.path.ismount(out):
        raise OutputError(f"--out {out} is a mount point, which edgeprune cannot replace (it writes beside --out and "
                          f"renames into place); choose a path inside it, e.g. {out / 'out'}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_paths(out: Path) -> tuple[Path, Path]:
    """Where a run writing `out` keeps its lock: inside `out` for the directories prune and
    build fill in place, beside it (`.NAME.edgeprune-lock`) for an export, whose artifact
    (a GGUF file, an ONNX folder) is renamed into place and so cannot hold its own lock."""
    out = Path(out)
    return out / LOCK, out.parent / f".{out.name}{LOCK}"


def lock_holder(out: Path) -> int | None:
    """The pid of another live run holding `out`, else None (a dead one's lock is stale)."""
    for path in lock_paths(out):
        try:
            pid = int(json.loads(path.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid != os.getpid() and _alive(pid):
            return pid
    return None


def refuse_locked(out: Path) -> None:
    """Checked before any work: another live run writing `out` is refused with its pid."""
    pid = lock_holder(out)
    if pid is not None:
        raise OutputError(f"{out} is being written by another edgeprune run (pid {pid}); wait for it to finish, "
                          "stop it, or choose another --out")


class OutLock:
    """Holds the lock of `out` (created atomically) for the life of a run: inside `out`
    (prune, build) or, with `beside`, next to it (export). A lock whose pid is dead is taken
    over. Released (only if still ours) when the block ends."""

    def __init__(self, out: Path, beside: bool = False):
        self.out = Path(out)
        self.path = lock_paths(self.out)[1 if beside else 0]

    def acquire(self) -> "OutLock":
        for _ in range(30):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                refuse_locked(self.out)
                if self._being_written():
                    time.sleep(0.1)  # another run has just created it and not yet written its pid
                    continue
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"pid": os.getpid()}, f)
            except OSError:  # a full disk: no lock file left behind to confuse the next run
                self.path.unlink(missing_ok=True)
                raise
            try:
                refuse_locked(self.out)  # the other place: a prune or build writing this directory
            except OutputError:
                self.release()
                raise
            return self
        refuse_locked(self.out)
        raise OutputError(f"could not take the lock {self.path}; remove it if no edgeprune run is writing there")

    def _being_written(self) -> bool:
        try:
            return not self.path.read_text().strip() and time.time() - self.path.stat().st_mtime < 2
        except OSError:
            return False

    def release(self) -> None:
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError, AttributeError):
            pass

    def __enter__(self) -> "OutLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

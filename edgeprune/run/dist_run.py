"""What a distributed prune does differently on each rank (see `dist` for the collectives).

Rank 0 alone owns `--out`: its checks, lock, work directory, resume state, checkpoint. The
other ranks never touch it (on another node it may not even exist): they take rank 0's view
of it by broadcast (whether this run resumes, the calibration windows, each finished layer's
decision) and keep what they compute in a private temporary directory. Resuming therefore
works with any world size: the resume state holds per-layer decisions, not per-rank data.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .. import dist


class SharedState:
    """A resume state every rank reads alike: rank 0's `ResumeState` (None elsewhere) answers
    `get`, its answer is broadcast; only rank 0 `put`s. `dir` is rank 0's state directory or
    the follower's private one (a method keeps its own work beside it)."""

    def __init__(self, inner, directory: Path):
        self.inner = inner
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, i: int):
        return dist.broadcast_object(self.inner.get(i) if self.inner is not None else None)

    def put(self, i: int, lp, tensors: dict) -> None:
        if self.inner is not None:
            self.inner.put(i, lp, tensors)


class Follower:
    """A non-writing rank's private work directory (re-fitted tensors, a method's own files),
    removed when the prune ends."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix=f"edgeprune-rank{dist.rank()}-"))

    def attach(self, req) -> None:
        from ..io.tensorfiles import DiskTensors

        req.state = SharedState(None, self.root / "layers")
        req.tensors = DiskTensors(self.root / "tensors")

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def on_writer(fn: Callable[[], Any]) -> Any:
    """`fn()` on rank 0 alone (its checks of --out, its reading of the inputs); None on the
    other ranks. One process: simply `fn()`."""
    return fn() if dist.is_writer() else None


def from_writer(fn: Callable[[], Any]) -> Any:
    """`fn()` on rank 0, its result broadcast: every rank takes rank 0's view (whether the run
    resumes, the measured latency budget), so no rank decides from files it may not see."""
    return dist.broadcast_object(on_writer(fn))


def open_out(out_path: Path | None, req, prepare: Callable[[], tuple]) -> tuple[Path | None, Any, Follower | None]:
    """(work directory, lock, follower): rank 0 (or the only process) runs `prepare()` to
    create --out and its work directory and shares its resume state; any other rank of a run
    that writes --out gets a private follower directory instead and never touches --out."""
    if out_path is not None and not dist.is_writer():
        follower = Follower()
        follower.attach(req)
        return None, None, follower
    work, lock = prepare()
    share_state(req)
    return work, lock, None


def share_state(req) -> None:
    """On rank 0 of a distributed run, wrap its resume state so the followers read it too."""
    if dist.active() and req.state is not None and not isinstance(req.state, SharedState):
        req.state = SharedState(req.state, req.state.dir)


def peaks(own: dict) -> list[dict]:
    """Each rank's peak memory (what `PeakMemory` measured there), in rank order."""
    return dist.gather_object(own)

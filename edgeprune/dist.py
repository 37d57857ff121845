"""Data-parallel pruning on torch.distributed: the few collectives the driver needs.

`torchrun --nproc-per-node N -m edgeprune prune ...` sets WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT (single- or multi-node, through torchrun's own rendezvous);
`init` reads them and joins the group (gloo on the CPU, NCCL on CUDA, where LOCAL_RANK picks
the device). Without them (`python -m edgeprune`) nothing here does anything: every call is
the identity of one process, so the methods need no second code path.

Why data-parallel: every method's statistics are sums over calibration tokens (input Grams,
activation norms, cosine terms, KL terms, gradients). Each rank takes a contiguous slice of
the windows (`shard`), and the driver sums each statistic across ranks (`all_reduce_sum`), so
every rank sees exactly the whole set's statistics and takes the same decisions; rank 0
alone writes (`is_writer`). Only torch.distributed collectives carry data between ranks.
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

# torch is imported only where a collective runs: `edgeprune bench` imports this module (the CLI's
# error handling asks `is_writer`) on devices that have no torch.


class _Lazy:
    """`torch` and `torch.distributed`, imported on first use."""

    def __getattr__(self, name: str):
        import torch as _torch
        import torch.distributed as _tdist

        return getattr(_tdist if self is tdist else _torch, name)


torch, tdist = _Lazy(), _Lazy()

# How long a collective waits for a rank that neither answers nor exits (a hung rank). A rank
# that exits is noticed at once: its peers' sockets close.
TIMEOUT_S = int(os.environ.get("EDGEPRUNE_DIST_TIMEOUT", "1800"))


def requested() -> bool:
    """True when the environment asks for more than one process (torchrun, or the same env)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init(device: str = "cpu") -> str:
    """Join the process group torchrun's environment describes; returns this rank's device
    (cuda:LOCAL_RANK on CUDA). A no-op returning `device` in a single process."""
    if not requested() or active():
        return _local_device(device) if active() else device
    cuda = str(device).startswith("cuda")
    device = _local_device(device)
    if cuda:
        torch.cuda.set_device(torch.device(device))
    tdist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=TIMEOUT_S),
                             **({"device_id": torch.device(device)} if cuda else {}))
    return device


def _local_device(device: str) -> str:
    if str(device).startswith("cuda") and requested():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def active() -> bool:
    if "torch" not in sys.modules:  # no process group exists without torch imported
        return False
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if active() else 0


def world() -> int:
    return tdist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Rank 0 writes the checkpoint, the plan, the work directory, progress and logs."""
    return rank() == 0


def shard(n: int) -> slice:
    """This rank's contiguous, deterministic slice of n calibration windows (ranks past n get
    an empty slice: their sums are zero, which is exact)."""
    r, w = rank(), world()
    return slice(n * r // w, n * (r + 1) // w)


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over every rank, in place (and returned); the identity in one process."""
    if not active():
        return t
    dev = _comm_device()
    if t.device == dev and t.is_contiguous():
        tdist.all_reduce(t)
        return t
    tmp = t.to(dev).contiguous()
    tdist.all_reduce(tmp)
    t.copy_(tmp)
    return t


def sum_floats(*values: float) -> list[float]:
    """Scalar sums over ranks (token counts, KL and cosine totals), in float64."""
    if not active():
        return [float(v) for v in values]
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank (its view of the work directory, the windows)."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    tdist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def solve_once(fn: Callable[[], Any], owner: int = 0) -> Any:
    """`fn()`, a dense solve every rank would otherwise repeat on the same summed statistics
    (SlimGPT's OBS), run on rank `owner` alone with the intra-op threads of the ranks on its
    node (`LOCAL_WORLD_SIZE`: they only wait for the answer, so their cores are free), and its
    result broadcast to every rank. A factorisation does not split across processes without a
    distributed Cholesky; its BLAS threads do split across cores. One process: `fn()`."""
    if not active():
        return fn()
    out = None
    if rank() == owner:
        own = torch.get_num_threads()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        torch.set_num_threads(max(1, min(own * local, os.cpu_count() or own)))
        try:
            out = fn()
        finally:
            torch.set_num_threads(own)
    return broadcast_object(out, src=owner)


def gather_object(obj: Any) -> list[Any]:
    """Every rank's object, in rank order, on every rank (peak memory per rank)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world()
    tdist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """A stage boundary: a rank that failed before it ends the others here (its socket closed)."""
    if active():
        tdist.barrier()


def close() -> None:
    """Leave the group (no barrier: the writer may go on alone, e.g. build's export stages)."""
    if active():
        tdist.destroy_process_group()


def tag() -> str:
    """'rank R of W: ' in a distributed run (the one error line names its rank), else ''."""
    return f"rank {rank()} of {world()}: " if active() else ""


def peer_lost(exc: BaseException) -> bool:
    """A collective failed because another rank stopped: that rank printed the line."""
    if not active():
        return False
    if isinstance(exc, tdist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo", "NCCL"))

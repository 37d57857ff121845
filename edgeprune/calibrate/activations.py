"""What flows between layers in the driver: hidden states of the calibration windows
(`Activations`, in memory or on disk), and the input statistics a method reads from a linear
map (`GramCollector`: X^T X or its diagonal, per-channel sums, token count)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..errors import DataError


class Activations:
    """Hidden states [n, t, d] of the calibration windows, in batches; memory or disk."""

    def __init__(self, batches: list[torch.Tensor] | None = None, on_disk: bool = False, workdir: Path | None = None):
        self.on_disk = on_disk
        self._items: list = []
        self._dir = Path(tempfile.mkdtemp(prefix="edgeprune-act-", dir=workdir)) if on_disk else None
        for b in batches or []:
            self.append(b)

    def append(self, x: torch.Tensor) -> None:
        if self.on_disk:
            p = self._dir / f"{len(self._items)}.pt"
            torch.save(x.cpu(), p)
            self._items.append(p)
        else:
            self._items.append(x)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for it in self._items:
            yield torch.load(it) if self.on_disk else it

    def empty_like(self) -> "Activations":
        return Activations(on_disk=self.on_disk, workdir=self._dir.parent if self._dir else None)

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._items = []


class GramCollector:
    """Accumulates X^T X, sum(X) and the token count of a Linear's input (float64).

    With `full=False` only the diagonal of X^T X is kept (what Wanda-sp and FLAP read):
    at 8B width the full Gram of `down_proj`'s input is 14336^2 float64 = 1.6 GB.
    """

    def __init__(self, module: nn.Linear, device: torch.device | None = None, full: bool = True):
        n = module.in_features
        dev = device or module.weight.device
        self.full = full
        self.gram = torch.zeros((n, n) if full else (n,), dtype=torch.float64, device=dev)
        self.sum = torch.zeros(n, dtype=torch.float64, device=dev)
        self.count = 0
        self._h = module.register_forward_pre_hook(self._hook)

    def _hook(self, _mod, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).to(self.gram.device, torch.float64)
        if not torch.isfinite(x).all():
            raise DataError("NaN or Inf in calibration activations; check the model weights and the calibration text")
        if self.full:
            self.gram.addmm_(x.T, x)
        else:
            self.gram += (x * x).sum(0)
        self.sum += x.sum(0)
        self.count += x.shape[0]

    def remove(self) -> None:
        self._h.remove()

    def take(self) -> torch.Tensor:
        """The Gram, handed over: the collector lets go of it, so that a solve which consumes it
        (`obs.hessian(..., consume=True)`, then the in-place inverse) frees or reuses its memory."""
        gram, self.gram = self.gram, None
        return gram

    def reduce(self) -> None:
        """Sum the Gram, the channel sums and the token count over every rank (a no-op in one
        process): each rank saw its slice of the windows, the methods read the whole set."""
        from .. import dist

        if not dist.active():
            return
        dist.all_reduce_sum(self.gram)
        dist.all_reduce_sum(self.sum)
        self.count = int(dist.sum_floats(self.count)[0])

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    @property
    def sq_norm(self) -> torch.Tensor:
        """||X[j, :]||^2 per input channel."""
        return torch.diagonal(self.gram).clone() if self.full else self.gram.clone()

"""Peak-memory measurement: RSS high-water mark on CPU, `max_memory_allocated` on CUDA.

On Linux the kernel keeps the RSS high-water mark (VmHWM); writing 5 to
/proc/self/clear_refs resets it, so the peak of one stage can be read exactly. Where that
is not allowed, a sampling thread polls RSS every 5 ms instead.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _hwm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


_SEEN_PEAK = 0  # the largest high-water mark read before any reset: the process's real peak


def _fold_hwm() -> None:
    global _SEEN_PEAK
    _SEEN_PEAK = max(_SEEN_PEAK, _hwm_bytes() or 0, rss_bytes())


def note_peak(nbytes: int) -> None:
    """Fold in a peak measured elsewhere (a child process that ran while this one waited)."""
    global _SEEN_PEAK
    _SEEN_PEAK = max(_SEEN_PEAK, int(nbytes))


def process_peak_bytes() -> int:
    """The process's peak RSS since it started, across every stage (resets included)."""
    _fold_hwm()
    return _SEEN_PEAK


def _reset_hwm() -> bool:
    _fold_hwm()  # never lose the peak of what ran before this stage
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: `.peak_bytes` (absolute), `.baseline_bytes` and `.above_baseline_bytes`."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self.kind = "cuda_max_memory_allocated" if self.device.type == "cuda" else "rss"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
            return self
        self.baseline_bytes = rss_bytes()
        self._hwm = _reset_hwm() and _hwm_bytes() is not None
        self._stop = threading.Event()
        self._sampled = self.baseline_bytes
        if not self._hwm:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled = max(self._sampled, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        if self._hwm:
            self.peak_bytes = max(_hwm_bytes() or 0, rss_bytes())
            _fold_hwm()
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._sampled, rss_bytes())
            global _SEEN_PEAK
            _SEEN_PEAK = max(_SEEN_PEAK, self.peak_bytes)

    @property
    def above_baseline_bytes(self) -> int:
        return max(0, self.peak_bytes - self.baseline_bytes)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "peak_bytes": self.peak_bytes, "baseline_bytes": self.baseline_bytes,
                "above_baseline_bytes": self.above_baseline_bytes, "pid": os.getpid()}


def stage_report(stages: dict[str, "PeakMemory"], device: str | torch.device = "cpu") -> dict:
    """One memory figure for a command: the process's real peak over every stage, and each
    stage's own peak (plan, apply_save, export, verify...)."""
    first = next(iter(stages.values()))
    peak = process_peak_bytes() if first.kind == "rss" else max(m.peak_bytes for m in stages.values())
    return {"kind": first.kind, "peak_bytes": peak, "baseline_bytes": first.baseline_bytes,
            "above_baseline_bytes": max(0, peak - first.baseline_bytes), "pid": os.getpid(),
            "stages": {name: m.as_dict() for name, m in stages.items()}}

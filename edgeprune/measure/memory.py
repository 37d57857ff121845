"""Peak-memory measurement: RSS high-water mark on CPU, `max_memory_allocated` on CUDA.

On Linux the kernel keeps the RSS high-water mark (VmHWM): the whole command's peak is read
from it exactly. Per-stage peaks are exact for the stage that set the record, sampled every
5 ms for the others (the mark is never reset, so outside tools still see the true peak).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch


def proc_bytes(key: str, path: str = "/proc/self/status") -> int | None:
    """A `Key:   N kB` line of a /proc file in bytes (VmRSS, VmHWM, MemAvailable), or None
    where the file or the line is not there (not Linux)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int:
    rss = proc_bytes("VmRSS")
    if rss is not None:
        return rss
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fast_rss():
    """A cheap RSS reader for the 5 ms sampler: /proc/self/statm read through one open file
    (parsing /proc/self/status 200 times a second took 6% of a core in py-spy, beside a
    one-thread prune); `rss_bytes` where there is no statm."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
    except OSError:
        return rss_bytes
    page = os.sysconf("SC_PAGE_SIZE")

    class Reader:
        def __call__(self) -> int:
            return int(os.pread(fd, 128, 0).split()[1]) * page

        def close(self) -> None:
            os.close(fd)

    return Reader()


def _hwm_bytes() -> int | None:
    return proc_bytes("VmHWM")


_CHILD_PEAK = 0  # peaks of helper processes that ran while this one waited (ONNX export)


def note_peak(nbytes: int) -> None:
    """Fold in a peak measured elsewhere (a child process that ran while this one waited)."""
    global _CHILD_PEAK
    _CHILD_PEAK = max(_CHILD_PEAK, int(nbytes))


def process_peak_bytes() -> int:
    """The process's peak RSS since it started (the kernel's VmHWM, never reset), or a
    helper process's when that was higher."""
    return max(_hwm_bytes() or 0, rss_bytes(), _CHILD_PEAK)


class PeakMemory:
    """Context manager: `.peak_bytes` (absolute), `.baseline_bytes` and `.above_baseline_bytes`.

    The kernel's high-water mark is never reset (that would also hide the peak from
    /usr/bin/time and every other outside measurement). A stage that raises the process's
    high-water mark gets it exactly; any other stage's peak is sampled every 5 ms.
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self.kind = "cuda_max_memory_allocated" if self.device.type == "cuda" else "rss"
        self._floor = 0  # a concurrent helper process's share (see include)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
            return self
        self.baseline_bytes = rss_bytes()
        self._hwm0 = _hwm_bytes()
        self._stop = threading.Event()
        self._sampled = self.baseline_bytes
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        read = _fast_rss()
        try:
            while not self._stop.is_set():
                self._sampled = max(self._sampled, read())
                time.sleep(0.005)
        finally:
            getattr(read, "close", lambda: None)()

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()
        hwm1 = _hwm_bytes()
        self.peak_bytes = max(self._sampled, rss_bytes())
        if hwm1 is not None and self._hwm0 is not None and hwm1 > self._hwm0:
            self.peak_bytes = max(self.peak_bytes, hwm1)  # this stage set the process's record
        self.peak_bytes = max(self.peak_bytes, self._floor)

    def include(self, nbytes: int) -> None:
        """Count a peak this stage caused elsewhere (a child process resident while this one
        waited: their sum); it also becomes part of the command's overall peak."""
        self._floor = max(self._floor, int(nbytes))
        note_peak(self._floor)

    @property
    def above_baseline_bytes(self) -> int:
        return max(0, self.peak_bytes - self.baseline_bytes)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "peak_bytes": self.peak_bytes, "baseline_bytes": self.baseline_bytes,
                "above_baseline_bytes": self.above_baseline_bytes, "pid": os.getpid()}


def stage_report(stages: dict[str, "PeakMemory | dict"], device: str | torch.device = "cpu") -> dict:
    """One memory figure for a command: the process's real peak over every stage, and each
    stage's own peak (plan, apply_save, export, verify...). A stage may be given as a finished
    `PeakMemory` or as its `as_dict()` from an earlier report."""
    figures = {name: m if isinstance(m, dict) else m.as_dict() for name, m in stages.items()}
    first = next(iter(figures.values()))
    peaks = [f["peak_bytes"] for f in figures.values()]
    peak = max(process_peak_bytes(), *peaks) if first["kind"] == "rss" else max(peaks)
    return {"kind": first["kind"], "peak_bytes": peak, "baseline_bytes": first["baseline_bytes"],
            "above_baseline_bytes": max(0, peak - first["baseline_bytes"]), "pid": os.getpid(), "stages": figures}

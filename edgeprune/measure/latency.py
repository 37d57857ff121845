"""Latency of an artifact in its own runtime (ONNX Runtime or llama.cpp). No torch.

Prefill: one forward over `context` tokens from an empty cache -> tokens/s. Decode:
`new_tokens` single-token steps through the runtime's KV cache -> ms/token (the median step of a
repetition, `exporters.runtimes.decode_step`: robust to a pre-empted step). Repetitions
of a dense/pruned pair are interleaved (the VM is noisy), and min and median reported.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from ..defaults import model_context

DEFAULT_CONTEXT = 128
DEFAULT_NEW_TOKENS = 32
DEFAULT_REPS = 5
DEFAULT_RUNTIME = "gguf:f32"  # FORMAT:DTYPE a prune's speed budget is predicted in when no target names one


def measure_context(tgt, cfg) -> int:
    """The prompt length the build's latency measurement uses (the target's, within the model's window)."""
    return max(8, min(tgt.context, model_context(cfg) - tgt.new_tokens - 8))


def free_cores(samples: int = 5) -> int:
    """Cores not taken by other runnable processes right now (Linux /proc/loadavg's
    running-task count, the busiest of a few samples): the runtime gets that many threads,
    since llama.cpp's spinning threads collapse when a core is taken."""
    cores = os.cpu_count() or 1
    busy = 0
    for _ in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return cores
        busy = max(busy, running - 1)  # this process is one of them
        time.sleep(0.05)
    return max(1, cores - busy)


def _session(path: Path, context: int, new_tokens: int, threads: int | None):
    """The runtime's own settings and loop (`Format.session`, purpose "latency")."""
    from exporters.runtimes import open_artifact

    return open_artifact(path, "latency", n_ctx=context + new_tokens + 8, threads=threads)


def _one_run(sess, ids: np.ndarray, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds per token) for one repetition, in the session's own loop."""
    return sess.timed_run(ids, new_tokens)


def _summary(runs: list[tuple[float, float]], context: int) -> dict:
    prefill = [context / p for p, _ in runs]
    decode = [d * 1000 for _, d in runs]
    return {
        "decode_ms_per_token_min": min(decode),
        "decode_ms_per_token_median": statistics.median(decode),
        "prefill_tokens_per_s_max": max(prefill),
        "prefill_tokens_per_s_median": statistics.median(prefill),
        "decode_ms_per_token_runs": decode,  # per repetition, in order: paired across artifacts
        "runs": len(runs),
    }


def _stable(runs: dict[str, list]) -> bool:
    """Two artifacts: is the paired speedup's interval already narrow enough?"""
    from .speedup import MAX_REL_WIDTH, interval, paired_ratios

    if len(runs) != 2:
        return True
    a, b = ([d for _, d in v] for v in runs.values())
    med, lo, hi = interval(paired_ratios(a, b))
    return hi - lo <= MAX_REL_WIDTH * med / 2


def measure(paths: dict[str, Path], context: int = DEFAULT_CONTEXT, new_tokens: int = DEFAULT_NEW_TOKENS,
            reps: int = DEFAULT_REPS, threads: int | None = None, vocab: int | None = None,
            max_reps: int | None = None) -> dict[str, dict]:
    """Latency of several artifacts (e.g. dense and pruned), repetitions interleaved.

    Threads default to the cores no other process is using now (`free_cores`). Each round starts
    one artifact later than the last, so a position effect (the first run after a switch, a
    scheduler tick) falls on every artifact alike instead of always on the same one.
    With two artifacts, repetitions continue past `reps` (up to `max_reps`, default 3 x reps)
    until the paired speedup's interval is narrow, so a noisy machine gets more samples.
    """

    threads = threads or free_cores()
    sessions = {k: _session(Path(p), context, new_tokens, threads) for k, p in paths.items()}
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab or 256, size=context)
    for s in sessions.values():  # warm-up
        _one_run(s, ids[: min(16, context)], 2)
    runs: dict[str, list] = {k: [] for k in sessions}
    limit = max_reps or 3 * reps
    order = list(sessions)
    while True:
        done = len(runs[order[0]])
        for k in order[done % len(order):] + order[: done % len(order)]:  # rotated: no artifact always runs first
            runs[k].append(_one_run(sessions[k], ids, new_tokens))
        done += 1
        if done >= limit or (done >= reps and _stable(runs)):
            break
    protocol = {"context": context, "new_tokens": new_tokens, "reps": done, "threads": threads,
                "interleaved": True, "batch": 1}
    return {k: {**_summary(v, context), "protocol": {**protocol, "runtime": sessions[k].runtime}}
            for k, v in runs.items()}


def host_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import subprocess

        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=5)
        gpu = r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "machine": platform.machine(), "system": platform.system()}

"""Latency of an artifact in its own runtime (ONNX Runtime or llama.cpp). No torch.

Prefill: one forward over `context` tokens from an empty cache -> tokens/s. Decode:
`new_tokens` single-token steps through the runtime's KV cache -> ms/token. Repetitions
of a dense/pruned pair are interleaved (the VM is noisy), and min and median reported.
"""
from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import numpy as np

DEFAULT_CONTEXT = 128
DEFAULT_NEW_TOKENS = 32
DEFAULT_REPS = 5


def _session(path: Path, context: int, new_tokens: int, threads: int | None):
    from exporters.runtimes import GGUFSession, OnnxSession, open_artifact

    if not (path.is_dir() or path.suffix in (".gguf", ".onnx")):
        open_artifact(path)  # raises: neither ONNX nor GGUF
    if str(path).endswith(".gguf"):
        # realistic settings: default f16 KV cache and attention path
        return GGUFSession(path, n_ctx=context + new_tokens + 8, threads=threads, exact=False)
    from exporters.genai import CONFIG, GenAISession, available

    folder = path if path.is_dir() else path.parent
    if (folder / CONFIG).is_file() and available():
        return GenAISession(folder, threads=threads)  # the generator loop an ORT GenAI user runs
    return OnnxSession(path, threads=threads)


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

    Threads default to the cores no other process is using now (`speedup.free_cores`).
    With two artifacts, repetitions continue past `reps` (up to `max_reps`, default 3 x reps)
    until the paired speedup's interval is narrow, so a noisy machine gets more samples.
    """
    from .speedup import free_cores

    threads = threads or free_cores()
    sessions = {k: _session(Path(p), context, new_tokens, threads) for k, p in paths.items()}
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab or 256, size=context)
    for s in sessions.values():  # warm-up
        _one_run(s, ids[: min(16, context)], 2)
    runs: dict[str, list] = {k: [] for k in sessions}
    limit = max_reps or 3 * reps
    while True:
        for k, s in sessions.items():
            runs[k].append(_one_run(s, ids, new_tokens))
        done = len(next(iter(runs.values())))
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

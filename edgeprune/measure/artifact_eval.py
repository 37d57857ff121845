"""Measuring an artifact pair on the build host, through the artifacts' own runtimes:
perplexity on the evaluation portion of the calibration source, interleaved dense/pruned
latency, and the host's bandwidth and clock for the device estimate. `report.profile`
assembles what these measure; a sweep reuses a linked dense reference's perplexity.
"""
from __future__ import annotations

from pathlib import Path

from ..defaults import model_context

PPL_SEQ_LEN = 256
PPL_MAX_WINDOWS = 8


def runtime_perplexity(artifact: Path, windows) -> float:
    return runtime_perplexity_windows(artifact, windows)["perplexity"]


def runtime_perplexity_windows(artifact: Path, windows) -> dict:
    """Perplexity through the artifact's runtime, with each window's mean NLL (for the interval)."""
    import torch

    from exporters.runtimes import open_artifact

    from .evaluate import perplexity_from

    sess = open_artifact(artifact, "eval", n_ctx=windows.shape[1] + 8)
    return perplexity_from(lambda ids: torch.from_numpy(sess.logits(ids[0].tolist()))[None], windows, progress=False)


def evaluation(model_dir: Path, cfg, calib: str, data_dir) -> tuple:
    """(windows, protocol): the evaluation portion of the calibration source."""
    from ..calibrate import data

    seq = min(PPL_SEQ_LEN, model_context(cfg))
    windows = data.evaluation_set(data.tokenizer_for(model_dir), calib, seq, PPL_MAX_WINDOWS, data_dir)
    return windows, {"data": calib, "portion": "eval", "seq_len": seq, "windows": int(windows.shape[0]),
                     "tokens": int(windows.shape[0] * (seq - 1)), "through": "the artifact's runtime"}


def windows_digest(windows) -> str:
    import hashlib

    return hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16]


def measure_pair(dense: Path, pruned: Path, windows, tgt, cfg, vocab: int, dense_known: dict | None = None,
                 threads: int | None = None) -> dict:
    """Perplexity of both through their runtime, and their interleaved latency. `dense_known`:
    the dense perplexity already measured through this very artifact on these very windows
    (a sweep's linked reference), reused; the latency is always measured again, interleaved."""
    from .latency import DEFAULT_REPS, measure, measure_context

    context = measure_context(tgt, cfg)
    ppl = [dense_known or runtime_perplexity_windows(dense, windows), runtime_perplexity_windows(pruned, windows)]
    lat = measure({"dense": dense, "pruned": pruned}, context, tgt.new_tokens, DEFAULT_REPS, threads, vocab=vocab)
    return {"ppl": [p["perplexity"] for p in ppl], "ppl_window_nll": [p["window_nll"] for p in ppl], "latency": lat,
            "windows_sha": windows_digest(windows)}


def host_probe(threads: int) -> dict:
    """The build host's read bandwidth and clock, for the device estimate's overhead fit."""
    from .estimate import host_bandwidth, host_clock_ghz

    return {"bandwidth": host_bandwidth(threads), "clock_ghz": host_clock_ghz(), "threads": threads}

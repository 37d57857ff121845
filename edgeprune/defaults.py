"""Defaults shared by several entry points, each in one place: the calibration windows (every
entry point that calibrates: `prune`, `build`, `build --dry-run`, `sweep`, the Python API and
their flags, so that a prune and a build calibrate alike unless told otherwise), the importance
matrix's windows, and the context window assumed for a model whose config gives none.
Torch-free (the CLI's help reads it)."""
from __future__ import annotations

from typing import Any

NSAMPLES = 32  # calibration windows (COMP's statistics get noisy below ~1024 tokens: run.request_checks.MIN_CALIB_TOKENS)
SEQ_LEN = 128  # tokens per calibration window
SEED = 0  # which windows are drawn
BATCH_SIZE = 8  # calibration windows per forward pass
ALIGN = 1  # kept widths rounded to a multiple of this (1: not rounded)
# `export --imatrix`'s windows and their length (the CLI's defaults and the Python API's)
IMATRIX_NSAMPLES = 32
IMATRIX_SEQ_LEN = 256
CALIB = "wikitext2"  # the named calibration set when none is given for a model of the user's
DEMO_CALIB = "demo"  # ... and for the embedded demo model: the text it was trained on
# The context window of a model whose config gives no max_position_embeddings (transformers' LlamaConfig default)
MODEL_CONTEXT = 2048


def model_context(cfg: Any) -> int:
    """A model config's context window (`max_position_embeddings`), else `MODEL_CONTEXT`."""
    return int(getattr(cfg, "max_position_embeddings", None) or MODEL_CONTEXT)


def calib_for(demo: bool, given: str | None = None) -> str:
    """The calibration set: the one given, else the default for the demo model or any other."""
    return given or (DEMO_CALIB if demo else CALIB)

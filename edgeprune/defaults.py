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
# `export --imatrix`'s windows and their length (the CLI's defaults and the Python API's)
IMATRIX_NSAMPLES = 32
IMATRIX_SEQ_LEN = 256
# The context window of a model whose config gives no max_position_embeddings (transformers' LlamaConfig default)
MODEL_CONTEXT = 2048


def model_context(cfg: Any) -> int:
    """A model config's context window (`max_position_embeddings`), else `MODEL_CONTEXT`."""
    return int(getattr(cfg, "max_position_embeddings", None) or MODEL_CONTEXT)

"""Importing a runtime or writer package: a missing extra is one line naming it, and the
runtime's own logs stay quiet unless -v. A leaf: the format registry and every exporter
import it, and it imports nothing of theirs.
"""
from __future__ import annotations

import os

from edgeprune.errors import MissingExtraError


def require(module: str, extra: str, purpose: str):
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(module.split(".")[0].replace("_", "-"), extra, purpose) from None
    quiet_runtime_logs(module)
    return mod


def verbose() -> bool:
    """The CLI ran with -v: third-party runtimes may speak (cli._third_party_logs sets it)."""
    return bool(os.environ.get("EDGEPRUNE_VERBOSE"))


# ggml's log levels as this llama.cpp defines them (include/ggml.h): llama-cpp-python's own
# callback still maps them one step off (WARN -> ERROR), which is why "padding V cache" leaked.
GGML_ERROR, GGML_CONT = 4, 5
_LLAMA_LOG = {"callback": None, "last": 0}


def _install_llama_log(lc) -> None:
    """Replace llama-cpp-python's log callback (once) by one that prints llama.cpp's and ggml's
    errors only, or every line under -v; it reads the flag per line, so -v applies however the
    library was imported first."""
    import ctypes
    import sys

    if _LLAMA_LOG["callback"] is not None:
        return

    @lc.llama_log_callback
    def _callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        level = _LLAMA_LOG["last"] if level == GGML_CONT else level
        _LLAMA_LOG["last"] = level
        if level >= GGML_ERROR or verbose():
            print(text.decode("utf-8", "replace"), end="", flush=True, file=sys.stderr)

    _LLAMA_LOG["callback"] = _callback  # kept alive: the C side holds only the pointer
    lc.llama_log_set(_callback, ctypes.c_void_p(0))


def quiet_runtime_logs(module: str) -> None:
    """The one place every llama.cpp / onnxruntime / onnxruntime-genai session's logging is set:
    info and warning lines (llama.cpp's "padding V cache", llama_context ..., onnxruntime's
    default logger, its quantizer's per-MatMul INFO lines) are off unless the CLI ran with -v;
    errors still show. Called by `require` on import, and by every place that opens a session."""
    import logging

    if module == "llama_cpp":
        import llama_cpp

        _install_llama_log(llama_cpp)
        from llama_cpp import _logger

        _logger.logger.setLevel(logging.DEBUG if verbose() else logging.ERROR)
    elif module == "onnxruntime":
        import onnxruntime

        onnxruntime.set_default_logger_severity(2 if verbose() else 3)  # 2: its default
    elif module == "onnxruntime.quantization":
        for name in ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization"):
            logging.getLogger(name).setLevel(logging.INFO if verbose() else logging.WARNING)
    elif module == "torch.onnx":  # its exporter logs "torchvision is not installed. Skipping ..." per op
        import torch.onnx._internal.exporter._registration  # noqa: F401  (its logger sets its own level)

        for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.onnx")] + ["torch.onnx"]:
            logging.getLogger(name).setLevel(logging.INFO if verbose() else logging.ERROR)
    elif module == "onnxruntime_genai":
        import onnxruntime_genai as og

        og.set_log_options(enabled=verbose())

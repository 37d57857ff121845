"""What both exporters share: dtype names, atomic artifact writes, runtime imports."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from edgeprune.errors import ExportError, MissingExtraError, OutputError

from .dtypes import DTYPES, ONNX_DTYPES, allowed, canonical  # noqa: F401  (re-exported)


def check_dtype(fmt: str, dtype: str) -> str:
    """The canonical dtype name (q4_k -> q4_k_m), or a one-line error."""
    from .formats import get as get_format

    get_format(fmt)  # an unknown format is one line naming the registered ones
    if dtype not in allowed(fmt):
        raise ExportError(f"unknown {fmt} dtype '{dtype}'; choose one of: {', '.join(allowed(fmt))}")
    return canonical(dtype)


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


def check_out_path(out: Path, force: bool) -> None:
    parent = out.parent
    if not parent.exists():
        raise OutputError(f"output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory {parent} is not writable; choose another --out")
    from edgeprune.io.outlock import refuse_locked, refuse_mount_point

    refuse_mount_point(out)
    if out.is_dir():
        from edgeprune.io.outdir import refuse_foreign

        refuse_foreign(out)
        refuse_locked(out)
    elif out.exists():
        from .formats import of_path

        form = of_path(out)
        if form is None or not form.single_file:
            raise OutputError(f"{out} exists and is not an edgeprune artifact; choose another --out")
        form.refuse_foreign(out)
    if out.exists() and not force:
        raise OutputError(f"{out} already exists; pass --force to overwrite it")


@contextmanager
def staged(out: Path, force: bool, companions: list[tuple[Path, Path]] | None = None):
    """Yield a temporary path beside `out` (so on its file system); renamed into place only
    if the block succeeds. `companions`: (temporary, final) pairs the block adds (a verify
    report), renamed just before the artifact, so an artifact never stands under its final
    name without them; on failure their temporaries go too."""
    check_out_path(out, force)
    tmp = out.parent / f".{out.stem}.partial-{os.getpid()}{out.suffix}"
    from edgeprune.io.outdir import remove_orphans

    remove_orphans(out.parent, f".{out.stem}.partial-")
    _remove(tmp)
    extra = companions if companions is not None else []
    try:
        yield tmp
        for t, final in extra:
            os.replace(t, final)
        if out.exists():
            _remove(out)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        for t, _ in extra:
            _remove(t)
        raise


def needed_bytes(view, fmt: str, dtype: str) -> int:
    """What an export writes at most on its file system (intermediate files included), with
    a margin: checked before writing, so a full disk refuses before the work."""
    from .dtypes import get

    d = get(dtype)
    n = view.total_elements()
    stored = view.dtype.itemsize if hasattr(view.dtype, "itemsize") else 4
    need = n * max(d.bytes_per_weight, 1.0 if d.bytes_per_weight < 4 else 4.0)  # quantised mixes keep some rows wider
    from .formats import get as get_format

    need += get_format(fmt).intermediate_bytes(n, stored, dtype)  # the writer's scratch files
    return int(need * 1.1) + 16 * 2**20


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


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
    if fmt not in ("onnx", "gguf"):
        raise ExportError(f"unknown format '{fmt}'; choose onnx or gguf")
    if dtype not in allowed(fmt):
        raise ExportError(f"unknown {fmt} dtype '{dtype}'; choose one of: {', '.join(allowed(fmt))}")
    return canonical(dtype)


def require(module: str, extra: str, purpose: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(module.split(".")[0].replace("_", "-"), extra, purpose) from None


def check_out_path(out: Path, force: bool) -> None:
    parent = out.parent
    if not parent.exists():
        raise OutputError(f"output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory {parent} is not writable; choose another --out")
    if out.is_dir():
        from edgeprune.checkpoint import refuse_foreign

        refuse_foreign(out)
    elif out.is_file() and out.suffix == ".gguf" and out.stat().st_size >= 4:
        with open(out, "rb") as f:
            if f.read(4) != b"GGUF":
                raise OutputError(f"{out} exists and is not a GGUF file; edgeprune will not overwrite it, choose another --out")
    elif out.exists() and out.suffix != ".gguf" and not out.is_dir():
        raise OutputError(f"{out} exists and is not an edgeprune artifact; choose another --out")
    if out.exists() and not force:
        raise OutputError(f"{out} already exists; pass --force to overwrite it")


@contextmanager
def staged(out: Path, force: bool):
    """Yield a temporary path beside `out`; renamed into place only if the block succeeds."""
    check_out_path(out, force)
    tmp = out.parent / f".{out.stem}.partial-{os.getpid()}{out.suffix}"
    from edgeprune.checkpoint import remove_orphans

    remove_orphans(out.parent, f".{out.stem}.partial-")
    _remove(tmp)
    try:
        yield tmp
        if out.exists():
            _remove(out)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


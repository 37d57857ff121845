"""One way to write a file so that a reader never sees half of it: into a temporary file beside
it (same file system), flushed to disk, then renamed over the final name. An interrupted run
leaves the old file or the new one, never a truncated one, which is what `--resume` and the
schema checks rely on. Whole directories are staged the same way by `checkpoint.staged_dir`
and `exporters.common.staged`. Torch-free (`bench` writes the profile with it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def temporary(path: Path) -> Path:
    """The temporary name beside `path`: hidden, ending in `.tmp` (the schema checks skip it)."""
    return path.with_name(f".{path.name}.tmp")


def replace(tmp: Path, path: Path) -> None:
    """Flush `tmp` to disk, then rename it over `path` (atomic on one file system)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_with(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(temporary path)` (e.g. safetensors' `save_file`), then put it in place."""
    path = Path(path)
    tmp = temporary(path)
    try:
        write(tmp)
        replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    write_with(path, lambda tmp: tmp.write_text(text))

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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flush_tree(path: Path) -> None:
    """Every file under `path` (or the file itself), then each directory, to disk: what a
    staged artifact or checkpoint needs before its rename, so a power cut after the rename
    finds whole files under the final name, not empty ones."""
    path = Path(path)
    if path.is_dir():
        for p in sorted(path.rglob("*"), key=lambda q: -len(q.parts)):  # files and inner directories first
            _fsync(p)
    _fsync(path)


def replace(tmp: Path, path: Path) -> None:
    """Flush `tmp` to disk, then rename it over `path` (atomic on one file system)."""
    _fsync(tmp)
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

"""What every exporter shares: dtype checks, the output path's checks and atomic artifact writes
(runtime imports: `runtime_imports.py`)."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from edgeprune.errors import ExportError, OutputError

from .dtypes import DTYPES, ONNX_DTYPES, allowed, canonical  # noqa: F401  (re-exported)


def check_dtype(fmt: str, dtype: str) -> str:
    """The canonical dtype name (q4_k -> q4_k_m), or a one-line error."""
    from .formats import get as get_format

    get_format(fmt)  # an unknown format is one line naming the registered ones
    if dtype not in allowed(fmt):
        raise ExportError(f"unknown {fmt} dtype '{dtype}'; choose one of: {', '.join(allowed(fmt))}")
    return canonical(dtype)


def check_imatrix(fmt: str, dtype: str) -> None:
    """Refuse an importance matrix for a dtype llama.cpp's quantizer does not make (one line
    naming the ones it does), before the calibration pass that builds it."""
    from .dtypes import get
    from .formats import names

    if get(dtype).llama_quantizer:
        return
    mixes = [f"{f} {d}" for f in names() for d in allowed(f) if d == canonical(d) and get(d).llama_quantizer]
    raise ExportError(f"--imatrix (an importance matrix) weighs llama.cpp's k-quants only, not {fmt} {dtype}; "
                      f"drop it or export {' or '.join(mixes)}")


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
    from edgeprune.io.atomic import flush_tree
    from edgeprune.io.outdir import partial, remove_orphans

    tmp = partial(out.parent, out.stem, out.suffix)
    remove_orphans(out.parent, out.stem)
    _remove(tmp)
    extra = companions if companions is not None else []
    try:
        yield tmp
        for t, _ in extra:
            flush_tree(t)
        flush_tree(tmp)
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


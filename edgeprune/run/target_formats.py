"""A target's artifact list against the format registry: each `artifacts.formats` entry (a
format, its dtype and the dtypes it may fall back to) and `--formats FORMAT:DTYPE,...`, which
replaces the list. The formats and their dtypes are the registry's (`exporters/formats.py`,
`exporters/dtypes.py`), so a new format needs nothing here."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .target_keys import Target, TargetError

ENTRY_KEYS = {"format", "dtype"}
# An entry may list the dtypes the build falls back to, in order, when its dtype does not fit
# the pruned model (edgeprune/measure/dtype_fit.py): e.g. fallback = ["q8_0", "f16"].
ENTRY_OPTIONAL = {"fallback"}


def format_names() -> tuple[str, ...]:
    from exporters.formats import names

    return names()


def _check_dtype(path: Path, f: dict) -> None:
    from exporters.dtypes import allowed

    if f["dtype"] not in allowed(f["format"]):
        raise TargetError(f"{path}: artifacts.formats dtype {f['dtype']!r} is not a {f['format']} dtype; "
                          f"choose one of: {', '.join(allowed(f['format']))}")


def check_formats(path: Path, formats: list) -> None:
    """At least one entry, each a registered format with one of its dtypes (and fallbacks)."""
    if not formats:
        raise TargetError(f"{path}: artifacts.formats is empty, so a build would export nothing; list at least one, "
                          "e.g. formats = [{ format = \"gguf\", dtype = \"q8_0\" }]")
    for f in formats:
        if not isinstance(f, dict) or not ENTRY_KEYS <= set(f) <= ENTRY_KEYS | ENTRY_OPTIONAL:
            raise TargetError(f"{path}: each artifacts.formats entry needs the keys format and dtype (and may have "
                              f"fallback), got {f!r}")
        if f["format"] not in format_names():
            raise TargetError(f"{path}: artifacts.formats format must be {' or '.join(format_names())}, got {f['format']!r}")
        _check_dtype(path, f)
        fb = f.get("fallback", [])
        if not isinstance(fb, list) or not all(isinstance(x, str) for x in fb):
            raise TargetError(f"{path}: artifacts.formats fallback must be a list of dtype names, got {fb!r}")
        for x in fb:
            _check_dtype(path, {**f, "dtype": x})


def with_formats(tgt: Target, spec: str) -> Target:
    """The target with its artifact list replaced by `--formats gguf:q8_0,onnx:f32` (each
    format:dtype checked against the dtype table; no fallback: the dtypes asked for)."""
    from exporters.dtypes import allowed

    formats = []
    for item in (x.strip() for x in spec.split(",")):
        fmt, _, dtype = item.partition(":")
        if fmt not in format_names() or not dtype:
            raise TargetError(f"--formats: {item!r} is not FORMAT:DTYPE with FORMAT {' or '.join(format_names())}; "
                              "e.g. --formats gguf:q8_0,onnx:f32")
        if dtype not in allowed(fmt):
            raise TargetError(f"--formats: {dtype!r} is not a {fmt} dtype; choose one of: {', '.join(allowed(fmt))}")
        if {"format": fmt, "dtype": dtype} not in formats:
            formats.append({"format": fmt, "dtype": dtype})
    return dataclasses.replace(tgt, data={**tgt.data, "artifacts": {**tgt.data["artifacts"], "formats": formats}})

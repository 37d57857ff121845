"""Which export dtypes the formats carry. The dtypes' own facts (the table) are
`edgeprune.dtypes`; they are re-exported here for the exporters and the Python API.
"""
from __future__ import annotations

from edgeprune.dtypes import ALIASES, TABLE, DType, canonical, failure_hint, get, torch_dtype

__all__ = ["ALIASES", "TABLE", "DType", "allowed", "canonical", "exported", "failure_hint", "get", "torch_dtype"]


def allowed(fmt: str) -> tuple[str, ...]:
    """The dtype names (aliases last) a format carries, as it declares them."""
    from .formats import get as format_facts

    carried = format_facts(fmt).dtypes
    return tuple(n for n in TABLE if n in carried) + tuple(a for a, n in ALIASES.items() if n in carried)


def exported() -> tuple[str, ...]:
    """Every dtype some format carries (aliases last)."""
    from .formats import names

    carried = {n for f in names() for n in allowed(f)}
    return tuple(n for n in TABLE if n in carried) + tuple(a for a in ALIASES if a in carried)


def __getattr__(name: str):
    """`DTYPES` (every exported dtype name) and `ONNX_DTYPES`, kept for the Python API; computed
    on first use because the formats register themselves."""
    if name == "DTYPES":
        return exported()
    if name == "ONNX_DTYPES":
        return tuple(n for n in allowed("onnx") if n not in ALIASES)
    raise AttributeError(name)

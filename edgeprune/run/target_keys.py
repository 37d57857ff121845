"""Every key a target TOML may hold, declared once in `KEYS`: its path, TOML type, whether it
may be left out, its range and what leaving it out means.

The schema check (unknown, missing and mistyped keys), the range checks and `Target.get` are
generated from the table, as `methods/options.py` generates a method option's flag and check
from its declaration: a new target key is one `Key(...)` line here plus the code that reads
it (a `Target` property or `Target.get`). A typo is an error naming the file and the key
rather than a silently ignored setting. The entries of `artifacts.formats` are checked
against the format registry in `target_formats.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgePruneError, PlanError
from ..methods import BUILD_OPTIONS  # torch-free: the registry and the options it declares
from ..methods.options import Option

# The verdict's quality bar when a target declares none: pruned/dense perplexity above 1.5x is
# where small models start to write visibly worse text (edgeprune/report/verdict.py raises the alarm).
DEFAULT_MAX_PPL_RATIO = 1.5
# The default budget: exactly one of these `[pruning]` keys (edgeprune/measure/budget.py),
# checked in `targets._check_budget`.
BUDGET_KEYS = ("ratio", "speedup")


class TargetError(EdgePruneError):
    """A target that cannot be used; a message without its own fix gets the general one."""

    FIX = "edit that key in the TOML (the shipped targets, listed by `edgeprune targets`, are complete examples)"

    def __init__(self, message: str):
        super().__init__(message if ";" in message else f"{message}; {self.FIX}")


@dataclass(frozen=True)
class Key:
    """One target key. `above`: the value must be a finite number > it (a bandwidth of 0 would
    divide by zero only after the whole build; a negative one gives negative latencies);
    `minimum`: a finite number >= it; `option`: a method option's key, checked by its own
    declaration (the CLI's words)."""

    path: str  # "section.name", or "name" at the top level
    kind: type | tuple[type, ...]  # the TOML type (an int is accepted for float)
    optional: bool = False
    default: Any = None  # what a left-out optional key means
    above: float | None = None
    minimum: float | None = None
    why: str = ""  # what the number means, said in its range error
    option: Option | None = None

    @property
    def section(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]


KEYS: tuple[Key, ...] = (
    Key("name", str), Key("aliases", list), Key("description", str),
    Key("memory.budget_bytes", int, above=0),
    Key("hardware.bandwidth_gb_s", float, above=0), Key("hardware.peak_tflops", float, above=0),
    Key("hardware.compute_note", str),
    # left out, the device estimate leaves its overhead term unscaled (measure/estimate.py)
    Key("hardware.cpu_cores", int, optional=True, above=0), Key("hardware.cpu_clock_ghz", float, optional=True, above=0),
    Key("artifacts.runtimes", list), Key("artifacts.formats", list),
    Key("pruning.method", str),
    Key("pruning.ratio", (float, str), optional=True), Key("pruning.speedup", float, optional=True),  # BUDGET_KEYS
    Key("pruning.align", int, above=0),
    *(Key(f"pruning.{n}", o.kind, optional=True, default=o.default, option=o) for n, o in BUILD_OPTIONS.items()),
    Key("latency.context", int, above=0), Key("latency.new_tokens", int, above=0),
    Key("quality.max_ppl_ratio", float, optional=True, default=DEFAULT_MAX_PPL_RATIO, minimum=1,
        why="pruned/dense perplexity allowed"),
)
BY_PATH: dict[str, Key] = {k.path: k for k in KEYS}


def _schema() -> dict[str, Any]:
    """The keys as nested tables ({name: Key or {name: Key}}), in declaration order."""
    out: dict[str, Any] = {}
    for k in KEYS:
        (out.setdefault(k.section, {}) if k.section else out)[k.name] = k
    return out


SCHEMA = _schema()
# Every key a target may leave out, and every table all of whose keys it may leave out.
OPTIONAL = {k.path for k in KEYS if k.optional} | {
    s for s, t in SCHEMA.items() if isinstance(t, dict) and all(k.optional for k in t.values())}


def check_keys(d: dict, path: Path, schema: dict | None = None, prefix: str = "") -> None:
    """No unknown key, every required one present, each of its TOML type."""
    schema = SCHEMA if schema is None else schema
    for key in d:
        if key not in schema:
            raise TargetError(f"{path}: unknown key '{prefix}{key}'; allowed: {', '.join(prefix + k for k in schema)}")
    for key, typ in schema.items():
        if key not in d:
            if prefix + key in OPTIONAL:
                continue
            raise TargetError(f"{path}: missing key '{prefix}{key}'")
        v = d[key]
        if isinstance(typ, dict):
            if not isinstance(v, dict):
                raise TargetError(f"{path}: '{prefix}{key}' must be a table")
            check_keys(v, path, typ, f"{prefix}{key}.")
            continue
        types = typ.kind if isinstance(typ.kind, tuple) else (typ.kind,)
        if float in types and isinstance(v, int) and not isinstance(v, bool):
            continue
        if not isinstance(v, types):
            raise TargetError(f"{path}: '{prefix}{key}' must be {' or '.join(t.__name__ for t in types)}, got {v!r}")


def _in_range(k: Key, v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) < float("inf"):
        return False  # NaN fails the comparison too
    return (k.above is None or v > k.above) and (k.minimum is None or v >= k.minimum)


def check_ranges(data: dict, path: Path) -> None:
    """Every given number within its declared range, every method option by its declaration
    (run after `check_keys`: the tables and types are right)."""
    for k in KEYS:
        table = data.get(k.section, {}) if k.section else data
        if k.name not in table:
            continue
        v = table[k.name]
        if k.option is not None:
            try:
                k.option.check(v, k.path)
            except PlanError as e:
                raise TargetError(f"{path}: {e}") from None
        elif (k.above is not None or k.minimum is not None) and not _in_range(k, v):
            bound = f"> {k.above:g}" if k.above is not None else f">= {k.minimum:g}"
            raise TargetError(f"{path}: {k.path} must be a number {bound}{f' ({k.why})' if k.why else ''}, got {v!r}"
                              + (f"; e.g. {k.name} = {k.default!r}" if k.default is not None else ""))


def value(data: dict, path: str) -> Any:
    """A checked target's value at `path` in the key's type (an int read as a float where the
    key is a float), or the key's default when it is left out."""
    k = BY_PATH[path]
    table = data.get(k.section, {}) if k.section else data
    v = table.get(k.name, k.default)
    return k.kind(v) if v is not None and k.kind in (int, float) else v


@dataclass(frozen=True)
class Target:
    """A loaded, checked target: its values read through the key table (`get`)."""

    name: str
    path: Path
    data: dict

    def get(self, path: str) -> Any:
        """The value at `path` ("latency.context"), in its key's type, or its default."""
        return value(self.data, path)

    @property
    def formats(self) -> list[dict]:
        return list(self.get("artifacts.formats"))

    @property
    def ratio(self) -> float | str | None:
        """The default parameter ratio (a number or "auto"), or None when the target sets a speedup."""
        return self.get("pruning.ratio")

    @property
    def speedup(self) -> float | None:
        """The default decode speedup over dense in the first artifact's runtime, or None."""
        return self.get("pruning.speedup")

    @property
    def method(self) -> str:
        return self.get("pruning.method")

    @property
    def align(self) -> int:
        return self.get("pruning.align")

    @property
    def context(self) -> int:
        return self.get("latency.context")

    @property
    def new_tokens(self) -> int:
        return self.get("latency.new_tokens")

    @property
    def budget_bytes(self) -> int:
        return self.get("memory.budget_bytes")

    @property
    def max_ppl_ratio(self) -> float:
        """The quality bar of the verdict: pruned/dense perplexity above it is a NO-GO."""
        return self.get("quality.max_ppl_ratio")

    @property
    def bandwidth(self) -> float:
        """Bytes per second (the TOML gives GB/s)."""
        return self.get("hardware.bandwidth_gb_s") * 1e9

    @property
    def peak_flops(self) -> float:
        """FLOP per second (the TOML gives TFLOPS)."""
        return self.get("hardware.peak_tflops") * 1e12

"""The shape of every file edgeprune writes and later reads back, and the one reader that
checks it (torch-free: `bench` uses it on a device).

A file edgeprune wrote can still be truncated by a full disk, edited by hand, or come from
another version: read back unchecked it fails far from the cause (`KeyError: 'target'`
inside bench, a `TypeError` in the middle of a resume). `read` refuses it in one line that
names the file, the first field that is wrong, and the fix (rebuild, `--force`, delete).

A spec is a Python type (`str`, `bool`, `dict`, `list`, `object` for anything), `Whole` /
`Number` (with a lower bound), `OneOf(values)`, `Opt(spec)` (None allowed), `[spec]` (a
list of them), `(a, b)` (a list of exactly those), `Map(spec)` (any keys) or a dict
`{"key": spec, "key?": spec}` (a trailing `?` marks an optional key; other keys pass).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgePruneError


class SchemaError(EdgePruneError):
    """A file edgeprune reads back is unreadable or not of the shape it wrote."""


@dataclass(frozen=True)
class Whole:
    min: int = 0


@dataclass(frozen=True)
class Number:
    min: float | None = None
    finite: bool = False


@dataclass(frozen=True)
class OneOf:
    values: tuple


@dataclass(frozen=True)
class Opt:
    spec: Any


@dataclass(frozen=True)
class Map:
    spec: Any
    digit_keys: bool = False  # the keys are layer indices written as strings


def _name(spec) -> str:
    if isinstance(spec, Whole):
        return f"a whole number >= {spec.min}"
    if isinstance(spec, Number):
        return "a number" + (f" >= {spec.min}" if spec.min is not None else "")
    if isinstance(spec, OneOf):
        return " or ".join(repr(v) for v in spec.values)
    if isinstance(spec, (dict, Map)):
        return "an object"
    if isinstance(spec, (list, tuple)):
        return "a list" + (f" of {len(spec)}" if isinstance(spec, tuple) else "")
    if isinstance(spec, Opt):
        return _name(spec.spec) + " or null"
    names = {str: "a string", bool: "true or false", dict: "an object", list: "a list"}
    return names.get(spec, "a value") if isinstance(spec, type) else "a value"


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad(value, spec, where: str) -> str:
    shown = repr(value) if not isinstance(value, (list, dict)) else type(value).__name__
    return f"{where or 'it'} must be {_name(spec)}, got {shown[:60]}"


def _scalar_ok(value, spec) -> bool:
    if isinstance(spec, Whole):
        return isinstance(value, int) and not isinstance(value, bool) and value >= spec.min
    if isinstance(spec, Number):
        return _is_num(value) and (spec.min is None or value >= spec.min) and (not spec.finite or math.isfinite(value))
    if isinstance(spec, OneOf):
        return value in spec.values
    return isinstance(value, spec) and not (spec is int and isinstance(value, bool))


def problem(value, spec, where: str = "") -> str | None:
    """The first place `value` departs from `spec` ("artifacts[0].path is missing"), or None."""
    if spec is object or (isinstance(spec, Opt) and value is None):
        return None
    if isinstance(spec, Opt):
        return problem(value, spec.spec, where)
    if isinstance(spec, (Whole, Number, OneOf, type)):
        return None if _scalar_ok(value, spec) else _bad(value, spec, where)
    if isinstance(spec, (tuple, list)):
        if not isinstance(value, list) or (isinstance(spec, tuple) and len(value) != len(spec)):
            return _bad(value, spec, where)
        subs = spec if isinstance(spec, tuple) else [spec[0]] * len(value)
        return next((p for i, (v, s) in enumerate(zip(value, subs)) if (p := problem(v, s, f"{where}[{i}]"))), None)
    if not isinstance(value, dict):
        return _bad(value, spec, where)
    return _map_problem(value, spec, where) if isinstance(spec, Map) else _fields_problem(value, spec, where)


def _map_problem(value: dict, spec: Map, where: str) -> str | None:
    for k, v in value.items():
        if spec.digit_keys and not str(k).isdigit():
            return f"{where + '.' if where else ''}{k!r} is not a layer index"
        if p := problem(v, spec.spec, f"{where}.{k}" if where else str(k)):
            return p
    return None


def _fields_problem(value: dict, spec: dict, where: str) -> str | None:
    for key, sub in spec.items():
        name = key.rstrip("?")
        at = f"{where}.{name}" if where else name
        if name not in value:
            if key.endswith("?"):
                continue
            return f"{at} is missing"
        if p := problem(value[name], sub, at):
            return p
    return None


def read(path: Path, spec, what: str, fix: str) -> Any:
    """The JSON at `path`, checked against `spec`; else one line: `{path} is not a valid {what}
    (<the problem>); {fix}`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SchemaError(f"{path} is missing; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        why = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise SchemaError(f"{path} is not a valid {what} (not readable JSON: {why}; truncated or edited?); {fix}") from None
    check(data, spec, path, what, fix)
    return data


def check(data, spec, path: Path | str, what: str, fix: str) -> None:
    """`read`'s check, for data already parsed (a plan handed over in memory)."""
    p = problem(data, spec)
    if p:
        raise SchemaError(f"{path} is not a valid {what} ({p}); {fix}")


SAFETENSORS_HEADER = Map({"dtype": str, "shape": [Whole(0)], "data_offsets": (Whole(0), Whole(0))})


def safetensors_header(path: Path, fix: str) -> tuple[int, dict]:
    """(header length, {tensor: {dtype, shape, data_offsets}}) of a safetensors file, by the
    format's own layout (u64 length, JSON), checked to hold every byte the header promises."""
    bad = f"{path} is not a readable safetensors file"
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= 100_000_000:
                raise SchemaError(f"{bad} (header length {n}); {fix}")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise SchemaError(f"{bad} ({type(e).__name__}; truncated?); {fix}") from None
    if isinstance(header, dict):
        header.pop("__metadata__", None)
    check(header, SAFETENSORS_HEADER, path, "safetensors header", fix)
    size = Path(path).stat().st_size
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + end > size:
        raise SchemaError(f"{path} is truncated ({size} bytes, its header needs {8 + n + end}); {fix}")
    return n, header


# ---- the files ------------------------------------------------------------------------------
IDS = Opt([Whole(0)])
STAT = Opt(Number())  # the per-layer figures `inspect` prints
LAYER_PLAN = {"ffn_keep?": IDS, "heads_keep?": IDS, "kv_keep?": IDS,
              "stats?": {"importance?": STAT, "target_ratio?": STAT, "achieved_ratio?": STAT, "tau?": STAT}}
PLAN = {"format": OneOf(("edgeprune-plan",)), "method": str, "model_type": str, "num_layers": Whole(1),
        "removed_layers": [Whole(0)], "ratio_requested?": Opt(Number(0)), "options?": {"protect?": Opt([int])},
        "stats?": {"layer_importance?": Map(STAT)}, "layers": Map(LAYER_PLAN, digit_keys=True), "tensors?": [str]}

SHARD_INDEX = {"weight_map": Map(str)}  # a sharded checkpoint's *.index.json (tensor -> shard file)
MANIFEST = {"format": OneOf(("edgeprune-checkpoint",)), "files": Map(Whole(0))}

PROFILE = {"target": {"name": str, "latency": {"context": Whole(1)}},
           "artifacts": [{"path": str, "format": str, "dtype": str, "reference_dense": {"path": str},
                          "speedup": {"decode_ideal": Number(0)}}],
           "provenance": dict, "measured_on_device?": list, "plots?": [str]}

VERIFY = {"dtype": str, "passed": bool, "all_finite?": bool, "max_abs_logit_diff": Opt(Number(0)),
          "top1_agreement": Number(0), "greedy_tokens_match": bool, "perplexity": {"relative_delta": Opt(Number(0))}}

EXPORT_RESULT = {"format": str, "dtype": str, "path": str, "bytes": Whole(0), "verify": dict}
BUILD_STATE = {"args": dict, "inputs?": Map(str), "complete?": bool, "runtime_threads?": Whole(1),
               "done": {"prune?": dict, "dtypes?": Map({"chosen": str}), "export?": Map(EXPORT_RESULT),
                        "profile?": Map(dict), "host?": dict}}

RUNG = {"removed": Whole(0), "error": Number(), "keep": [Whole(0)], "kv_keep?": IDS, "moves?": [str], "aligned?": bool}
LADDER = {"attn": [RUNG], "ffn": [RUNG], "attn_params": Whole(0), "drop": {"removed": Whole(0), "error": Number()},
          "importance": Number()}
SEARCH_LOG = {"evaluated": [([(Whole(-1), Whole(-1))], Number())]}  # a choice per layer; DROP is (-1, -1)

RESUME_ARGS = dict
RESUME_INPUTS = Map(str)
LADDER_VERSION = 3  # a ladder record written by another version is built again, never misread (3: seed_stats)

# What an interrupted prune leaves in `--out/.work` and a resume reads back (search's ladders
# and log included): checked together before a resume changes anything.
WORK_FILES = (("args.json", RESUME_ARGS, "resume record"), ("inputs.json", RESUME_INPUTS, "resume record"),
              ("layers/layer*.json", LAYER_PLAN, "resume record"), ("search.json", SEARCH_LOG, "search log"),
              ("ladder/L*.json", LADDER, "ladder record"))

GENAI_CONFIG = {"model": {"context_length": Whole(1)}}

# The fix for a file inside an interrupted run's work directory.
RESTART = "pass --force to start over"


def check_work_files(work: Path) -> None:
    """Every JSON and safetensors file of an interrupted run's work directory, or one line
    naming the first bad one: a resume refused here has changed nothing."""
    for pattern, spec, what in WORK_FILES:
        for p in sorted(Path(work).glob(pattern)):
            if p.name.endswith(".tmp"):
                continue
            d = read(p, dict if what == "ladder record" else spec, what, RESTART)
            if what == "ladder record" and d.get("version") == LADDER_VERSION:
                check(d, spec, p, what, RESTART)
    for p in sorted(Path(work).rglob("*.safetensors")):
        safetensors_header(p, RESTART)

"""Device targets: `targets/*.toml`, validated on load.

Every key is required and no other key is allowed, so a typo is an error naming the file
and the key rather than a silently ignored setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..errors import EdgePruneError
from ..methods import BUILD_OPTIONS  # torch-free: the registry and the options it declares
from ..methods.options import toml_keys

def _targets_dir() -> Path:
    """The built-in target TOMLs: the checkout's top-level targets/ folder when this package
    is imported from a checkout (an editable install of another checkout must not shadow the
    TOMLs beside this code), else the installed package data (edgeprune.targets_data)."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and any((checkout / "targets").glob("*.toml")):
        return checkout / "targets"
    try:
        from importlib.resources import files

        d = Path(str(files("edgeprune.targets_data")))
        if any(d.glob("*.toml")):
            return d
    except (ModuleNotFoundError, TypeError):
        pass
    return checkout / "targets"


TARGETS_DIR = _targets_dir()

SCHEMA: dict[str, object] = {
    "name": str, "aliases": list, "description": str,
    "memory": {"budget_bytes": int},
    "hardware": {"bandwidth_gb_s": float, "peak_tflops": float, "compute_note": str, "cpu_cores": int,
                 "cpu_clock_ghz": float},
    "artifacts": {"runtimes": list, "formats": list},
    "pruning": {"method": str, "ratio": (float, str), "speedup": float, "align": int, **toml_keys(BUILD_OPTIONS)},
    "latency": {"context": int, "new_tokens": int},
    "quality": {"max_ppl_ratio": float},
}
FORMAT_KEYS = {"format", "dtype"}
# A format entry may list the dtypes the build falls back to, in order, when its dtype does
# not fit the pruned model (edgeprune/measure/dtype_fit.py): e.g. fallback = ["q8_0", "f16"].
FORMAT_OPTIONAL = {"fallback"}
# Keys a target may leave out (the device estimate then leaves its overhead term unscaled; the
# verdict's quality bar is then `DEFAULT_MAX_PPL_RATIO`).
OPTIONAL = {"hardware.cpu_cores", "hardware.cpu_clock_ghz", "pruning.ratio", "pruning.speedup",
            "quality", "quality.max_ppl_ratio", *(f"pruning.{n}" for n in BUILD_OPTIONS)}
# The default budget: exactly one of these (edgeprune/measure/budget.py), checked in `_check_budget`.
BUDGET_KEYS = ("ratio", "speedup")
# The verdict's quality bar when a target declares none: pruned/dense perplexity above 1.5x is
# where small models start to write visibly worse text (edgeprune/report/verdict.py raises the alarm).
DEFAULT_MAX_PPL_RATIO = 1.5


class TargetError(EdgePruneError):
    """A target that cannot be used; a message without its own fix gets the general one."""

    FIX = "edit that key in the TOML (the shipped targets, listed by `edgeprune targets`, are complete examples)"

    def __init__(self, message: str):
        super().__init__(message if ";" in message else f"{message}; {self.FIX}")


@dataclass(frozen=True)
class Target:
    name: str
    path: Path
    data: dict

    @property
    def formats(self) -> list[dict]:
        return list(self.data["artifacts"]["formats"])

    @property
    def ratio(self) -> float | str | None:
        """The default parameter ratio (a number or "auto"), or None when the target sets a speedup."""
        return self.data["pruning"].get("ratio")

    @property
    def speedup(self) -> float | None:
        """The default decode speedup over dense in the first artifact's runtime, or None."""
        v = self.data["pruning"].get("speedup")
        return None if v is None else float(v)

    @property
    def method(self) -> str:
        return self.data["pruning"]["method"]

    @property
    def align(self) -> int:
        return int(self.data["pruning"]["align"])

    @property
    def context(self) -> int:
        return int(self.data["latency"]["context"])

    @property
    def new_tokens(self) -> int:
        return int(self.data["latency"]["new_tokens"])

    @property
    def budget_bytes(self) -> int:
        return int(self.data["memory"]["budget_bytes"])

    @property
    def max_ppl_ratio(self) -> float:
        """The quality bar of the verdict: pruned/dense perplexity above it is a NO-GO."""
        return float(self.data.get("quality", {}).get("max_ppl_ratio", DEFAULT_MAX_PPL_RATIO))

    @property
    def bandwidth(self) -> float:
        return float(self.data["hardware"]["bandwidth_gb_s"]) * 1e9

    @property
    def peak_flops(self) -> float:
        return float(self.data["hardware"]["peak_tflops"]) * 1e12


def _check(d: dict, schema: dict, path: Path, prefix: str = "") -> None:
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
            _check(v, typ, path, f"{prefix}{key}.")
        else:
            types = typ if isinstance(typ, tuple) else (typ,)
            if float in types and isinstance(v, int) and not isinstance(v, bool):
                continue
            if not isinstance(v, types):
                raise TargetError(f"{path}: '{prefix}{key}' must be {' or '.join(t.__name__ for t in types)}, got {v!r}")


def load_target_file(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"{path}: not valid TOML ({e})") from None
    _check(data, SCHEMA, path)
    if not data["artifacts"]["formats"]:
        raise TargetError(f"{path}: artifacts.formats is empty, so a build would export nothing; list at least one, "
                          "e.g. formats = [{ format = \"gguf\", dtype = \"q8_0\" }]")
    for f in data["artifacts"]["formats"]:
        if not isinstance(f, dict) or not FORMAT_KEYS <= set(f) <= FORMAT_KEYS | FORMAT_OPTIONAL:
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
    _check_budget(path, data["pruning"])
    for key, lo in POSITIVE.items():
        section, name = key.split(".")
        if key in OPTIONAL and name not in data.get(section, {}):
            continue
        v = data[section][name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > lo or v != v:
            raise TargetError(f"{path}: {key} must be a number > {lo}, got {v!r}")
    q = data.get("quality", {}).get("max_ppl_ratio", DEFAULT_MAX_PPL_RATIO)
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 1 <= q < float("inf"):
        raise TargetError(f"{path}: quality.max_ppl_ratio must be a number >= 1 (pruned/dense perplexity allowed), "
                          f"got {q!r}; e.g. max_ppl_ratio = 1.5")
    _check_method(path, data["pruning"]["method"])
    _check_options(path, data["pruning"])
    return Target(data["name"], path, data)


# Numbers a target must give as strictly positive (a bandwidth of 0 would divide by zero
# only after the whole build; a negative one gives negative latencies).
POSITIVE = {"hardware.bandwidth_gb_s": 0, "hardware.peak_tflops": 0, "memory.budget_bytes": 0, "pruning.align": 0,
            "latency.context": 0, "latency.new_tokens": 0, "hardware.cpu_cores": 0, "hardware.cpu_clock_ghz": 0}


def _check_budget(path: Path, pruning: dict) -> None:
    """Exactly one default budget: `ratio` (a number in (0, 1) or "auto") or `speedup` (above 1)."""
    given = [k for k in BUDGET_KEYS if k in pruning]
    if len(given) != 1:
        raise TargetError(f"{path}: [pruning] must set exactly one of ratio and speedup (got "
                          f"{' and '.join(given) or 'neither'}); e.g. ratio = 0.2 or speedup = 1.3")
    r = pruning.get("ratio")
    if "ratio" in pruning and r != "auto":
        from ..measure.budget import check_ratio
        from ..errors import PlanError

        try:
            check_ratio(r, "pruning.ratio")
        except PlanError as e:
            raise TargetError(f"{path}: {e} (or \"auto\")") from None
    v = pruning.get("speedup")
    if "speedup" in pruning and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1 and v == v
                                     and v != float("inf")):
        raise TargetError(f"{path}: pruning.speedup must be a number above 1 (decode speedup over dense), got {v!r}")


def format_names() -> tuple[str, ...]:
    from exporters.formats import names

    return names()


def _check_dtype(path: Path, f: dict) -> None:
    from exporters.dtypes import allowed

    if f["dtype"] not in allowed(f["format"]):
        raise TargetError(f"{path}: artifacts.formats dtype {f['dtype']!r} is not a {f['format']} dtype; "
                          f"choose one of: {', '.join(allowed(f['format']))}")


def _check_options(path: Path, pruning: dict) -> None:
    """The method options a target sets, checked by their own declarations (the CLI's words)."""
    from ..errors import PlanError

    for n, o in BUILD_OPTIONS.items():
        if n in pruning:
            try:
                o.check(pruning[n], f"pruning.{n}")
            except PlanError as e:
                raise TargetError(f"{path}: {e}") from None


def _check_method(path: Path, method: str) -> None:
    from ..methods import REGISTRY as METHODS

    if method not in METHODS:
        raise TargetError(f"{path}: pruning.method {method!r} is unknown; choose one of: {', '.join(METHODS)}")


def _builtin() -> list[Path]:
    return sorted(TARGETS_DIR.glob("*.toml"))


def load_target(name_or_path: str) -> Target:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise TargetError(f"target file {p} does not exist; pass an existing TOML or a name from `edgeprune targets`")
        return load_target_file(p)
    for f in _builtin():
        t = load_target_file(f)
        if name_or_path == t.name or name_or_path in t.data["aliases"]:
            return t
    names = [load_target_file(f).name for f in _builtin()]
    raise TargetError(f"unknown target '{name_or_path}'; choose one of: {', '.join(names)} (or a TOML path)")


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
    data = {**tgt.data, "artifacts": {**tgt.data["artifacts"], "formats": formats}}
    return Target(tgt.name, tgt.path, data)


def describe(t: Target) -> dict:
    """What `targets --json` prints for one target: its name, file and every setting."""
    return {"name": t.name, "aliases": t.data["aliases"], "description": t.data["description"], "path": str(t.path),
            **{k: v for k, v in t.data.items() if k not in ("name", "aliases", "description")}}


def list_targets() -> list[dict]:
    out = []
    for f in _builtin():
        t = load_target_file(f)
        out.append({"name": t.name, "aliases": t.data["aliases"], "description": t.data["description"], "path": str(f)})
    return out

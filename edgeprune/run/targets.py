"""Device targets: `targets/*.toml`, found by name or path and validated on load.

The keys, which of them are optional and their ranges are one table (`target_keys.KEYS`);
no other key is allowed, so a typo is an error naming the file and the key rather than a
silently ignored setting. The artifact list is checked against the format registry
(`target_formats.py`); here are the checks across keys (exactly one budget, a registered method).
"""
from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .target_formats import check_formats
from .target_keys import BUDGET_KEYS, DEFAULT_MAX_PPL_RATIO, Target, TargetError, check_keys, check_ranges  # noqa: F401


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


def load_target_file(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"{path}: not valid TOML ({e})") from None
    check_keys(data, path)
    check_formats(path, data["artifacts"]["formats"])
    _check_budget(path, data["pruning"])
    check_ranges(data, path)
    _check_method(path, data["pruning"]["method"])
    return Target(data["name"], path, data)


def _check_budget(path: Path, pruning: dict) -> None:
    """Exactly one default budget: `ratio` (a number in (0, 1) or "auto") or `speedup` (above 1)."""
    given = [k for k in BUDGET_KEYS if k in pruning]
    if len(given) != 1:
        raise TargetError(f"{path}: [pruning] must set exactly one of ratio and speedup (got "
                          f"{' and '.join(given) or 'neither'}); e.g. ratio = 0.2 or speedup = 1.3")
    from ..errors import PlanError
    from ..measure.budget import check_ratio, check_speedup

    try:
        if "ratio" in pruning and pruning["ratio"] != "auto":
            check_ratio(pruning["ratio"], "pruning.ratio", "ratio = 0.2 in [pruning]")
        if "speedup" in pruning:
            check_speedup(pruning["speedup"], "pruning.speedup", "speedup = 1.3 in [pruning]")
    except PlanError as e:
        tail = ' (or "auto")' if "ratio" in pruning else ""
        raise TargetError(f"{path}: {e}{tail}") from None


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

"""A method's own options, declared once beside its registry entry (`methods/registry.py`).

Each `Option` says its name, type, default, help, the values it takes and whether it changes
the plan; everything else is generated from it: the `prune` flags (and, for `build=True`, the
`build`/`sweep` flags and the target TOML's `[pruning]` key), the values a `PruneRequest`
carries, the arguments a `--resume` compares and the plan's record. LLM-Compressor's modifiers
declare their options once the same way. Torch-free: the CLI's help is built from it.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Iterable

from ..errors import PlanError


@dataclass(frozen=True)
class Option:
    name: str  # the attribute a method reads (`req.<name>`), the TOML key and the recorded name
    default: Any
    help: str
    kind: type = int  # int, float, str or bool
    choices: tuple = ()
    minimum: float | None = None  # the smallest value taken (inclusive)
    flag: str | None = ""  # "": --<name with dashes>; a bool's flag flips its default; None: Python API only
    changes_plan: bool = True  # recorded in the plan and compared on --resume
    build: bool = False  # also a `build` / `sweep` flag and a target `[pruning]` key

    @property
    def switch(self) -> str | None:
        """The command-line flag, or None for an option set only through the Python API."""
        return None if self.flag is None else (self.flag or "--" + self.name.replace("_", "-"))

    def check(self, value: Any, where: str) -> Any:
        """The value, or the one refusal (the same words from the CLI, the TOML and the API)."""
        ok = isinstance(value, self.kind) and not isinstance(value, bool) or self.kind is bool and isinstance(value, bool)
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if ok and self.kind is float and not math.isfinite(value):
            ok = False
        if ok and self.choices and value not in self.choices:
            ok = False
        if ok and self.minimum is not None and value < self.minimum:
            ok = False
        if not ok:
            raise PlanError(f"{where} must be {self.takes()}, got {value!r}; e.g. {self.default!r}")
        return value

    def takes(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        names = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}
        return names[self.kind] + (f" >= {self.minimum:g}" if self.minimum is not None else "")

    def parse(self, s: str) -> Any:
        """argparse's `type`: a refusal argparse prints as its one line."""
        try:
            return self.check(self.kind(s), self.switch or self.name)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{s}' is not {self.takes()}") from None
        except PlanError as e:
            raise argparse.ArgumentTypeError(str(e)) from None


def unique(options: Iterable[Option]) -> dict[str, Option]:
    """Every option once, in declaration order (several methods share one declaration)."""
    out: dict[str, Option] = {}
    for o in options:
        if out.setdefault(o.name, o) is not o:
            raise ValueError(f"two declarations of the method option {o.name!r}")
    return out


def add_flags(sp: argparse.ArgumentParser, options: dict[str, Option], readers: dict[str, list[str]],
              build: bool) -> None:
    """The command-line flags of `options` (for `build`: only those marked so, defaulting to the
    target's value), each help naming the methods that read it."""
    for o in options.values():
        if o.switch is None or (build and not o.build):
            continue
        who = f"[{', '.join(readers[o.name])}] "
        if o.kind is bool:
            sp.add_argument(o.switch, dest=o.name, action="store_false" if o.default else "store_true",
                            default=None if build else o.default, help=f"{who}{o.help}; default: off")
            continue
        shown = f" (default: the target's value, else {o.default})" if build else f" (default {o.default})"
        sp.add_argument(o.switch, dest=o.name, type=o.parse, default=None if build else o.default,
                        metavar="N" if not o.choices else None, choices=o.choices or None,
                        help=who + o.help + shown)


def given(args: argparse.Namespace, options: dict[str, Option]) -> dict[str, Any]:
    """The options a parsed command line set (those its subcommand has and did not leave unset)."""
    return {n: getattr(args, n) for n in options if getattr(args, n, None) is not None}


def resolve(options: dict[str, Option], values: dict[str, Any], where: str = "option") -> dict[str, Any]:
    """Every option's value: the given ones checked, the rest at their defaults."""
    unknown = sorted(set(values) - set(options))
    if unknown:
        raise TypeError(f"unknown method option(s) {', '.join(unknown)}; declared: {', '.join(options)}")
    return {n: o.check(values[n], f"{where} {n}") if n in values else o.default for n, o in options.items()}


def for_target(pruning: dict[str, Any], given_values: dict[str, Any], options: dict[str, Option]) -> dict[str, Any]:
    """A build's values of `options`: given on the command line, else the target's `[pruning]`
    key (checked when the target was read), else the default."""
    return {n: given_values[n] if n in given_values else pruning.get(n, o.default) for n, o in options.items()}


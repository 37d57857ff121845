"""The command line's value types: each turns one option's text into its value or refuses it
in one line (argparse names the flag). Torch-free, like the parser."""
from __future__ import annotations

import argparse
import math


def ratio(s: str) -> float:
    from ..measure.budget import check_ratio
    from ..errors import PlanError

    try:
        return check_ratio(float(s), None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a number; pass a fraction such as 0.2") from None
    except PlanError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def number(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a number") from None
    if math.isnan(v) or math.isinf(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"{s} must be a positive number")
    return v


def layers(s: str) -> int | str:
    if s == "auto":
        return s
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a whole number or 'auto'") from None
    if n < 0:
        raise argparse.ArgumentTypeError("--layers must be >= 0")
    return n


def positive(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a whole number") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{s} must be a positive whole number")
    return n


def int_list(s: str) -> tuple[int, ...]:
    """A comma-separated list of layer indices such as 0,1,-1 (the flag is named by argparse)."""
    parts = [x.strip() for x in s.split(",")]
    try:
        out = tuple(int(x) for x in parts if x)
    except ValueError:
        bad = next(x for x in parts if x and not x.lstrip("-").isdigit())
        raise argparse.ArgumentTypeError(f"'{bad}' is not a layer index; give whole numbers separated by commas, "
                                         "e.g. 0,1,-1") from None
    if not out:
        raise argparse.ArgumentTypeError("no layer index given; e.g. 0,1,-1")
    return out


def floats(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a comma-separated list of numbers, e.g. 1.1,1.2,1.3") from None

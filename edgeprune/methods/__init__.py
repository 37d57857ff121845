"""Pruning methods: each turns (layer source, calibration windows, request) into a Plan."""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import PlanError
from ..plan import Plan
from ..streaming import LayerSource
from .base import PruneRequest
from .comp import plan_comp
from .flap import plan_flap
from .magnitude import plan_magnitude
from .shortgpt import plan_shortgpt
from .slimgpt import plan_slimgpt
from .taylor import plan_taylor
from .wanda import plan_wanda_sp

MethodFn = Callable[[LayerSource, "torch.Tensor | None", PruneRequest], Plan]

METHODS: dict[str, MethodFn] = {
    "comp": plan_comp,
    "shortgpt": plan_shortgpt,
    "magnitude": plan_magnitude,
    "slimgpt": plan_slimgpt,
    "wanda-sp": plan_wanda_sp,
    "taylor": plan_taylor,
    "flap": plan_flap,
}
# Named in the CLI contract, not implemented yet: refused with a clear message.
PLANNED: tuple[str, ...] = ()
NEEDS_CALIBRATION = {"comp": True, "shortgpt": True, "magnitude": False, "slimgpt": True, "wanda-sp": True,
                     "taylor": True, "flap": True}


def get_method(name: str) -> MethodFn:
    if name in METHODS:
        return METHODS[name]
    if name in PLANNED:
        raise PlanError(f"method '{name}' is not implemented yet; available: {', '.join(METHODS)}")
    raise PlanError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")


__all__ = ["METHODS", "NEEDS_CALIBRATION", "PruneRequest", "get_method"]

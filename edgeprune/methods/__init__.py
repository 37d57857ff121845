"""Pruning methods, registered with their capabilities, the way llama.cpp's converter
registers one class per architecture. Each method turns (layer source, calibration windows,
request) into a Plan; what makes a method special lives in its `Method` entry, nowhere else
(the CLI, the pipeline, the build and the targets read it). Adding a method is one module
plus one `Method(...)` line below.
"""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Method:
    name: str
    plan: MethodFn
    summary: str
    needs_calibration: bool = True
    takes_layers: bool = False  # reads --layers (whole layers to remove, or "auto")
    ratio_optional: bool = False  # --layers alone is a complete request
    exact_ratio: bool = False  # reaches the requested ratio within RATIO_TOLERANCE (checked after planning)
    resumable: bool = False  # its plan stage resumes per layer after an interruption
    cuda: bool = True  # runs on --device cuda through the shared layer driver
    build_layers: str | None = None  # what `build` passes as --layers


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("comp", plan_comp, "hybrid: layers then neurons, least-squares re-fit (COMP)",
           takes_layers=True, exact_ratio=True, resumable=True, build_layers="auto"),
    Method("slimgpt", plan_slimgpt, "group OBS on heads and channels with compensation (SlimGPT)"),
    Method("shortgpt", plan_shortgpt, "whole-layer removal by block influence (ShortGPT)",
           takes_layers=True, ratio_optional=True),
    Method("wanda-sp", plan_wanda_sp, "structured Wanda: |W| x ||X|| per group, uniform"),
    Method("flap", plan_flap, "fluctuation metric, global structure, bias compensation (FLAP)"),
    Method("taylor", plan_taylor, "first-order Taylor importance per group, uniform"),
    Method("magnitude", plan_magnitude, "weight magnitude per group, uniform (no data)", needs_calibration=False),
)}
DEFAULT = "comp"  # what `prune` uses without --method (targets name their own)
# Kept for callers that only need the names or the calibration flag.
METHODS: dict[str, MethodFn] = {n: m.plan for n, m in REGISTRY.items()}
NEEDS_CALIBRATION = {n: m.needs_calibration for n, m in REGISTRY.items()}


def get(name: str) -> Method:
    """The registered method, or a one-line error listing the choices."""
    if name in REGISTRY:
        return REGISTRY[name]
    raise PlanError(f"unknown method '{name}'; choose one of: {', '.join(REGISTRY)}")


def get_method(name: str) -> MethodFn:
    return get(name).plan


def help_text() -> str:
    return "; ".join(f"{n}{' (default)' if n == DEFAULT else ''}: {m.summary}" for n, m in REGISTRY.items())


__all__ = ["DEFAULT", "METHODS", "Method", "NEEDS_CALIBRATION", "PruneRequest", "REGISTRY", "get", "get_method", "help_text"]

"""Pruning methods, registered with their capabilities, the way llama.cpp's converter
registers one class per architecture. Each method turns (layer source, calibration windows,
request) into a Plan; what makes a method special lives in its `Method` entry, nowhere else
(the CLI, the pipeline, the build and the targets read it). Adding a method is one module
plus one `Method(...)` line in `registry.py`.
"""
from __future__ import annotations

from .options import Option
from .registry import (BUILD_OPTIONS, DEFAULT, METHODS, NEEDS_CALIBRATION, OPTIONS, READERS, REGISTRY, Method, get,
                       get_method, help_text)


def __getattr__(name: str):
    if name == "PruneRequest":  # torch: imported only when asked for
        from .base import PruneRequest

        return PruneRequest
    raise AttributeError(name)


__all__ = ["BUILD_OPTIONS", "DEFAULT", "METHODS", "Method", "OPTIONS", "Option", "READERS", "NEEDS_CALIBRATION", "PruneRequest",
           "REGISTRY", "get", "get_method", "help_text"]

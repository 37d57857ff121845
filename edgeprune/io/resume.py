"""A prune's per-layer resume records: each finished layer's decision (and its re-fitted
tensors) in the work directory, so an interrupted prune continued with `--resume` reproduces
the uninterrupted plan. The one resume mechanism of the prune stage; a build's
`build_state.json` (build.py) records which *stages* finished and hands the prune stage its
`--out/model` directory, whose work directory holds these records. A module of its own so
that `methods/` reads it without importing the pipeline (no import cycle).
"""
from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_text, write_with
from ..plan import LayerPlan


class ResumeState:
    """Per-layer decisions on disk, so an interrupted prune continues where it stopped."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, i: int):
        from safetensors.torch import load_file

        from . import schema

        j = self.dir / f"layer{i}.json"
        if not j.is_file():
            return None
        d = schema.read(j, schema.LAYER_PLAN, "resume record", schema.RESTART)
        t = self.dir / f"layer{i}.safetensors"
        try:
            tensors = load_file(str(t)) if t.is_file() else {}
            return LayerPlan(**d), tensors
        except Exception as e:  # a truncated tensor file, or a field LayerPlan does not take
            raise schema.SchemaError(f"{t if t.is_file() else j} is not a valid resume record ({type(e).__name__}); "
                                     f"{schema.RESTART}") from None

    def put(self, i: int, lp: LayerPlan, tensors: dict) -> None:
        from dataclasses import asdict

        from safetensors.torch import save_file

        if tensors:
            write_with(self.dir / f"layer{i}.safetensors",
                       lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))
        write_text(self.dir / f"layer{i}.json", json.dumps(asdict(lp)))

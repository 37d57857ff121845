"""The pruning plan: what a method decided, as data.

A method never edits a model. It returns a `Plan`: which layers go, which FFN channels,
query heads and KV groups each kept layer keeps (original indices), and any re-fitted
weights. `surgery.apply_plan` is the only code that turns a plan into smaller matrices.

Re-fitted tensors are keyed `L{layer}.{role}.{kind}` with the layer's ORIGINAL index and
shapes AFTER slicing:
  - `col_scale` (in_features,): multiply the kept columns (COMP's fitted mask);
  - `weight`   (out, in):       replace the sliced weight (OBS compensation);
  - `bias`     (out,):          the output bias, final value (FLAP's bias compensation; a
                                 Linear without one gains it, recorded as `added_bias`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import MutableMapping
from typing import Any

import torch

from .errors import PlanError
from .models import DecoderAdapter, LayerShape
from .models.base import ADDABLE_BIAS_ROLES

PLAN_JSON = "edgeprune_plan.json"
PLAN_TENSORS = "edgeprune_plan.safetensors"


@dataclass
class LayerPlan:
    """Kept units of one layer, by original index. `None` keeps everything."""

    ffn_keep: list[int] | None = None
    heads_keep: list[int] | None = None
    kv_keep: list[int] | None = None
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    method: str
    model_type: str
    num_layers: int
    removed_layers: list[int] = field(default_factory=list)
    layers: dict[int, LayerPlan] = field(default_factory=dict)
    ratio_requested: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    # A dict, or a disk-backed mapping (tensorfiles.DiskTensors / FileTensors) at real size.
    tensors: MutableMapping[str, torch.Tensor] = field(default_factory=dict, repr=False)

    # ---- derived geometry -----------------------------------------------------------
    def kept_layers(self) -> list[int]:
        removed = set(self.removed_layers)
        return [i for i in range(self.num_layers) if i not in removed]

    def layer(self, i: int) -> LayerPlan:
        return self.layers.get(i) or LayerPlan()

    def ordered_heads(self, i: int, shape: LayerShape) -> tuple[list[int], list[int]]:
        """Kept KV groups and kept query heads, query heads ordered group by group.

        Under grouped-query attention query head h reads KV group h // n_rep, and after
        slicing transformers maps new head i to new group i // n_rep'. Ordering the kept
        heads by their group keeps every head attached to its own keys and values.
        """
        lp = self.layer(i)
        n_rep = shape.num_heads // shape.num_kv_heads
        kv = sorted(lp.kv_keep) if lp.kv_keep is not None else list(range(shape.num_kv_heads))
        if lp.heads_keep is None:
            heads = [h for g in kv for h in range(g * n_rep, (g + 1) * n_rep)]
        else:
            hs = set(lp.heads_keep)
            heads = [h for g in kv for h in range(g * n_rep, (g + 1) * n_rep) if h in hs]
        return kv, heads

    def result_shape(self, i: int, adapter: DecoderAdapter) -> LayerShape:
        """The widths (and added biases) layer `i` will have after surgery."""
        lp, s = self.layer(i), adapter.layer_shapes()[i]
        kv, heads = self.ordered_heads(i, s)
        f = len(lp.ffn_keep) if lp.ffn_keep is not None else s.intermediate_size
        native = adapter.native_bias_roles()
        added = tuple(r for r in ADDABLE_BIAS_ROLES
                      if r in s.added_bias or (r not in native and f"L{i}.{r}.bias" in self.tensors))
        return LayerShape(f, len(heads), len(kv), added)

    def result_shapes(self, adapter: DecoderAdapter) -> list[LayerShape]:
        return [self.result_shape(i, adapter) for i in self.kept_layers()]

    # ---- validation -----------------------------------------------------------------
    def validate(self, adapter: DecoderAdapter) -> None:
        """Refuse plans that surgery cannot express as a valid model, with the reason."""
        base = adapter.layer_shapes()
        if self.num_layers != len(base):
            raise PlanError(f"plan is for a {self.num_layers}-layer model but the model has {len(base)} layers")
        bad = [i for i in self.removed_layers if not 0 <= i < self.num_layers]
        if bad:
            raise PlanError(f"plan removes layers {bad} that do not exist (model has {self.num_layers})")
        if len(set(self.removed_layers)) >= self.num_layers:
            raise PlanError("plan removes every layer; keep at least one (lower --layers or --ratio)")
        for i, lp in self.layers.items():
            if i in self.removed_layers:
                continue
            s = base[i]
            n_rep = s.num_heads // s.num_kv_heads
            if lp.ffn_keep is not None:
                if not lp.ffn_keep:
                    raise PlanError(f"layer {i}: plan keeps no FFN channel; remove the layer instead")
                if min(lp.ffn_keep) < 0 or max(lp.ffn_keep) >= s.intermediate_size or len(set(lp.ffn_keep)) != len(lp.ffn_keep):
                    raise PlanError(f"layer {i}: FFN channel indices out of range or repeated")
            kv, heads = self.ordered_heads(i, s)
            if not kv or not heads:
                raise PlanError(f"layer {i}: plan keeps no attention head; remove the layer instead")
            if any(not 0 <= g < s.num_kv_heads for g in kv):
                raise PlanError(f"layer {i}: KV group index out of range")
            if lp.heads_keep is not None:
                orphans = [h for h in lp.heads_keep if h // n_rep not in set(kv)]
                if orphans:
                    raise PlanError(f"layer {i}: query heads {orphans} keep no KV group; not GQA-valid")
            per_group = [sum(1 for h in heads if h // n_rep == g) for g in kv]
            if len(set(per_group)) != 1:
                raise PlanError(
                    f"layer {i}: kept query heads per KV group differ {per_group}; grouped-query "
                    "attention needs the same number in every kept group"
                )

    # ---- serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "edgeprune-plan",
            "version": 1,
            "method": self.method,
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "removed_layers": sorted(self.removed_layers),
            "ratio_requested": self.ratio_requested,
            "options": self.options,
            "stats": self.stats,
            "layers": {str(i): asdict(lp) for i, lp in sorted(self.layers.items())},
            "tensors": sorted(self.tensors),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], tensors=None) -> "Plan":
        if d.get("format") != "edgeprune-plan":
            raise PlanError("not an edgeprune plan (missing format: edgeprune-plan)")
        return cls(
            method=d["method"],
            model_type=d["model_type"],
            num_layers=d["num_layers"],
            removed_layers=list(d["removed_layers"]),
            layers={int(i): LayerPlan(**lp) for i, lp in d["layers"].items()},
            ratio_requested=d.get("ratio_requested"),
            options=d.get("options", {}),
            stats=d.get("stats", {}),
            tensors=tensors or {},
        )

    def save(self, directory: str | Path) -> None:
        from .io.tensorfiles import write_tensors

        directory = Path(directory)
        (directory / PLAN_JSON).write_text(json.dumps(self.to_dict(), indent=1))
        if self.tensors:  # streamed: the tensors may live on disk (DiskTensors), never all in RAM
            write_tensors(directory / PLAN_TENSORS, self.tensors)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        from .io.tensorfiles import FileTensors

        path = Path(path)
        json_path = path / PLAN_JSON if path.is_dir() else path
        if not json_path.is_file():
            raise PlanError(f"no plan at {path}; expected {PLAN_JSON} (written by edgeprune prune)")
        from .io import schema

        fix = "re-run the prune that wrote it"
        d = schema.read(json_path, schema.PLAN, "edgeprune plan", fix)
        n = d["num_layers"]
        outside = [i for i in [*d["removed_layers"], *map(int, d["layers"])] if i >= n]
        if outside:
            raise PlanError(f"{json_path} is not a valid edgeprune plan (layer {outside[0]} of a {n}-layer model); {fix}")
        tensor_path = json_path.parent / PLAN_TENSORS
        tensors = FileTensors(tensor_path) if d.get("tensors") and tensor_path.is_file() else {}
        try:
            return cls.from_dict(d, tensors)
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a field the schema lets through
            raise PlanError(f"{json_path} is not a valid edgeprune plan (field {e} is malformed); {fix}") from None


def identity_plan(adapter: DecoderAdapter, method: str = "identity") -> Plan:
    """A plan that keeps everything (surgery must then change no logit)."""
    return Plan(method=method, model_type=adapter.family, num_layers=adapter.num_layers)

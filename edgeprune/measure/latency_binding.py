"""A speed budget held in every artifact runtime of the target at once, not only the first.

The build's check is a speedup per artifact (llama.cpp f32, llama.cpp q8_0, ORT...), and the
runtimes do not spend their time alike: q8_0 reads a quarter of f32's weight bytes, so an FFN
cut buys it less; ORT's per-token overhead is larger, so a dropped layer buys it a smaller
fraction. A plan priced in the first runtime alone can meet S there and miss it in another.

`Binding` holds one latency model per artifact (runtime, dtype) and presents the interface a
budget and the search use (`model_ms`, `layer_ms`, `saving`), in milliseconds of the first
runtime so every message keeps its unit:
  - `model_ms(plan)` = D_first x max over runtimes r of model_ms_r(plan) / D_r: the plan's time
    in the runtime it speeds up least (the binding constraint), so a target of D_first / S is
    reached exactly when every runtime reaches S;
  - `saving(dense, shape)` = D_first x min over r of (layer_ms_r(dense) - layer_ms_r(shape)) / D_r:
    what a choice is sure to save in every runtime. A sum of minima is at most the minimum of
    the sums, so an allocation whose savings reach 1 - 1/S of D_first meets S in every runtime
    (conservative by the runtimes' disagreement on each choice, which is small per choice).
Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field

BINDING_VERSION = 1


@dataclass
class Binding:
    models: list  # LatencyModel (or anything with model_ms / layer_ms), first artifact first
    dense_shapes: list  # the dense model's layer shapes (the speedup's reference)
    dense: list[float] = field(default_factory=list)  # each runtime's predicted dense ms/token

    def __post_init__(self) -> None:
        self.dense = [float(m.model_ms(self.dense_shapes)) for m in self.models]

    # what budget.py, budget_stages.py and the profile read of a latency model
    @property
    def first(self):
        return self.models[0]

    @property
    def runtime(self) -> str:
        return "every artifact runtime (" + ", ".join(f"{m.runtime} {m.dtype}" for m in self.models) + ")"

    fmt = property(lambda self: self.first.fmt)
    dtype = property(lambda self: "")
    context = property(lambda self: self.first.context)
    threads = property(lambda self: self.first.threads)
    key = property(lambda self: [getattr(m, "key", None) for m in self.models])

    @property
    def source(self) -> str:
        kinds = {getattr(m, "source", "host") for m in self.models}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def relative_error(self) -> float:
        """The worst runtime's held-out error (the budget is only as sure as its least sure model)."""
        return max(float(getattr(m, "relative_error", float("nan"))) for m in self.models)

    @property
    def max_relative_error(self) -> float:
        """The largest held-out error of any runtime's model."""
        return max(float(getattr(m, "max_relative_error", float("nan"))) for m in self.models)

    def model_ms(self, shapes: list) -> float:
        return self.dense[0] * max(m.model_ms(shapes) / d for m, d in zip(self.models, self.dense))

    def layer_ms(self, heads: int, kv_heads: int, ffn: int) -> float:
        """One layer in the runtime where it weighs most, in first-runtime ms (for display; the
        search prices choices with `saving`)."""
        return self.dense[0] * max(m.layer_ms(heads, kv_heads, ffn) / d for m, d in zip(self.models, self.dense))

    def saving(self, dense: tuple[int, int, int], shape: tuple[int, int, int] | None) -> float:
        """First-runtime ms a layer of shape `dense` is sure to save in every runtime when cut
        to `shape` (None: dropped)."""
        out = []
        for m, d in zip(self.models, self.dense):
            full = m.layer_ms(*dense)
            out.append((full - (m.layer_ms(*shape) if shape is not None else 0.0)) / d)
        return self.dense[0] * min(out)

    def per_runtime(self, plan_shapes: list) -> dict[str, dict]:
        """Each runtime's own predicted dense and pruned ms/token and speedup, keyed FORMAT-DTYPE."""
        out = {}
        for m, d in zip(self.models, self.dense):
            p = float(m.model_ms(plan_shapes))
            out[f"{m.fmt}-{m.dtype}"] = {"dense_ms_per_token": d, "pruned_ms_per_token": p,
                                         "speedup": d / p if p > 0 else None}
        return out

    def to_json(self) -> dict:
        return {"edgeprune_latency_binding": BINDING_VERSION, "models": [m.to_json() for m in self.models],
                "dense_shapes": [s.as_dict() for s in self.dense_shapes]}

    @classmethod
    def from_json(cls, d: dict) -> "Binding":
        from .latency_model import LatencyModel
        from ..models import LayerShape

        return cls([LatencyModel.from_json(m) for m in d["models"]], [LayerShape.from_dict(s) for s in d["dense_shapes"]])


def load(saved: dict):
    """A latency model or a Binding from the build state (--resume)."""
    from .latency_model import LatencyModel

    return Binding.from_json(saved) if "edgeprune_latency_binding" in saved else LatencyModel.from_json(saved)


def combine(models: list, dense_shapes: list):
    """One model as itself; several as their Binding (duplicates of one runtime and dtype once)."""
    seen, uniq = set(), []
    for m in models:
        k = (getattr(m, "fmt", None), getattr(m, "dtype", None))
        if k not in seen:
            seen.add(k)
            uniq.append(m)
    return uniq[0] if len(uniq) == 1 else Binding(uniq, list(dense_shapes))

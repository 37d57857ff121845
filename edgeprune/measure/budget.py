"""A pruning budget in the user's terms: a parameter ratio, a decode speedup, or decode ms/token.

Edge engineers budget milliseconds per token on their device; a parameter ratio says nothing
about that on an overhead-bound model. A `Budget` is one of the three (exactly one: asking
for two would leave the tool to pick which to honour). A speed budget is turned into a decode
time to reach through a `LatencyModel` (`edgeprune/measure/latency_model.py`: measured per runtime and
dtype), checked against what any plan could reach before any work, and handed to the method:
`search` allocates under the predicted time itself; a method that cannot (its registry entry
says so) gets the parameter ratio whose uniform widths the model predicts reach it.
Torch-free: the CLI and the target validation read it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..errors import PlanError

if TYPE_CHECKING:
    from ..models import DecoderAdapter, LayerShape

KINDS = ("ratio", "speedup", "latency_ms")
FLAGS = {"ratio": "--ratio", "speedup": "--speedup", "latency_ms": "--latency-ms"}
TRANSLATE_STEP = 0.005  # ratio grid on which a speed budget is translated for the other methods


class Predictor(Protocol):
    """What a budget needs of a latency model (`latency_model.LatencyModel`)."""

    def model_ms(self, shapes: list) -> float: ...
    def layer_ms(self, heads: int, kv_heads: int, ffn: int) -> float: ...


@dataclass(frozen=True)
class Budget:
    kind: str  # one of KINDS
    requested: float

    @property
    def flag(self) -> str:
        return FLAGS[self.kind]

    @property
    def is_speed(self) -> bool:
        return self.kind != "ratio"

    def words(self) -> str:
        return f"{self.flag} {self.requested:g}"

    def target_ms(self, dense_ms: float) -> float:
        """The decode ms/token a plan must reach (a speed budget only)."""
        return dense_ms / self.requested if self.kind == "speedup" else float(self.requested)

    def to_json(self) -> dict:
        return {"kind": self.kind, "requested": self.requested}


def check_ratio(v, flag: str | None = "--ratio", example: str | None = None) -> float:
    """The one check of a parameter ratio, wherever it comes from (the command line, a target's
    `pruning.ratio`, the Python API), with one message; `flag` names it (None: argparse does),
    `example` is a valid setting as the user writes it there."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or not 0 < v < 1:
        raise PlanError(f"{flag + ' ' if flag else ''}{v} is outside (0, 1): a ratio is a number strictly between 0 and 1, "
                        f"the fraction of non-embedding parameters removed; e.g. {example or (flag or '--ratio') + ' 0.2'}")
    return float(v)


def check_speedup(v, flag: str = "--speedup", example: str | None = None) -> float:
    """The one check of a decode-speedup budget (the command line, a target's `pruning.speedup`,
    the Python API), with one message: a finite number above 1; `example` as for `check_ratio`."""
    example = example or f"{flag} 1.3"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
        raise PlanError(f"{flag} must be a number (got {v!r}); e.g. {example}")
    if not v > 1:
        raise PlanError(f"{flag} {v:g} asks for no speedup over the dense model; pass a number above 1 "
                        f"(decode speedup over dense), e.g. {example}")
    return float(v)


def parse(ratio: float | None = None, speedup: float | None = None, latency_ms: float | None = None) -> Budget | None:
    """Exactly one of the three, validated; None when none is given (the caller's default)."""
    given = {k: v for k, v in (("ratio", ratio), ("speedup", speedup), ("latency_ms", latency_ms)) if v is not None}
    if len(given) > 1:
        raise PlanError(f"{' and '.join(FLAGS[k] for k in given)} were both given; a budget is one of --ratio, "
                        "--speedup or --latency-ms: pass exactly one")
    if not given:
        return None
    kind, v = next(iter(given.items()))
    if kind == "ratio":
        return Budget(kind, check_ratio(v))
    if kind == "speedup":
        return Budget(kind, check_speedup(v))
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
        raise PlanError(f"{FLAGS[kind]} must be a number (got {v!r}); e.g. {FLAGS[kind]} {_example(kind)}")
    if kind == "latency_ms" and not v > 0:
        raise PlanError(f"--latency-ms must be a positive number of milliseconds per token (got {v}); e.g. --latency-ms 5")
    return Budget(kind, float(v))


def _example(kind: str) -> str:
    return {"ratio": "0.2", "speedup": "1.3", "latency_ms": "5"}[kind]


def full_shapes(ad: "DecoderAdapter") -> list:
    return list(ad.layer_shapes())


def deepest_shape(s: "LayerShape") -> "LayerShape":
    """A layer cut as far as any method cuts a kept one: 1/8 of the FFN, one KV group at 1/8
    of its query heads (at least one)."""
    from ..methods.widths import MAX_MODULE_CUT
    from ..models import LayerShape

    n_rep = s.num_heads // s.num_kv_heads
    keep = 1 - MAX_MODULE_CUT  # the narrowest a kept module gets (search's ladders)
    return LayerShape(max(1, math.ceil(s.intermediate_size * keep)), max(1, math.ceil(n_rep * keep)), 1,
                      s.added_bias)


def fastest_shapes(ad: "DecoderAdapter", protected: set[int]) -> list:
    """The fastest plan the budget could ask for: protected layers dense, every other layer
    dropped but (when nothing is protected) one, cut to its deepest."""
    shapes = full_shapes(ad)
    out: list = [shapes[i] if i in protected else None for i in range(len(shapes))]
    if not protected:
        out[0] = deepest_shape(shapes[0])
    return out


def check_reachable(b: Budget, lm: Predictor, ad: "DecoderAdapter", protected: set[int] = frozenset(),
                    where: str = "") -> tuple[float, float]:
    """Refuse a speed budget no plan can reach, naming the reachable range; returns (dense ms,
    target ms). Called once the latency model exists and before calibration or ladders."""
    dense = lm.model_ms(full_shapes(ad))
    fast = lm.model_ms(fastest_shapes(ad, protected))
    target = b.target_ms(dense)
    how = (f"with layers {sorted(protected)} protected and every other layer dropped" if protected else
           "dropping all but one layer and cutting that one to 1/8 of its width")
    if target < fast:
        if b.kind == "speedup":
            raise PlanError(f"--speedup {b.requested:g} is out of reach{where}: {how} gives at most {dense / fast:.2f}x; "
                            f"use --speedup <= {math.floor(dense / fast * 100) / 100:.2f}")
        raise PlanError(f"--latency-ms {b.requested:g} is out of reach{where}: {how} still takes {fast:.3f} ms/token "
                        f"(dense {dense:.3f}); use --latency-ms >= {math.ceil(fast * 1000) / 1000:.3f}")
    if b.kind == "latency_ms" and target >= dense:
        raise PlanError(f"--latency-ms {b.requested:g} is already met by the dense model ({dense:.3f} ms/token predicted"
                        f"{where}), so there is nothing to prune for; use --latency-ms between {math.ceil(fast * 1000) / 1000:.3f} "
                        f"and {dense:.3f}")
    return dense, target


def uniform_shapes(ad: "DecoderAdapter", ratio: float, align: int) -> list:
    """Every layer at `ratio` the way the uniform methods cut it (methods.widths.uniform_split)."""
    from ..methods.widths import uniform_split
    from ..models import LayerShape

    out = []
    for s in full_shapes(ad):
        g, c = uniform_split(ad, s, ratio * ad.layer_param_count(s), align)
        n_rep = s.num_heads // s.num_kv_heads
        out.append(LayerShape(s.intermediate_size - c, s.num_heads - g * n_rep, s.num_kv_heads - g, s.added_bias))
    return out


def translate_to_ratio(target_ms: float, lm: Predictor, ad: "DecoderAdapter", align: int) -> float:
    """The smallest parameter ratio whose uniform widths the latency model predicts at or under
    `target_ms` (for a method that allocates by parameters only); refused when none does."""
    steps = int(round(0.95 / TRANSLATE_STEP))
    for k in range(1, steps + 1):
        r = round(k * TRANSLATE_STEP, 6)
        if lm.model_ms(uniform_shapes(ad, r, align)) <= target_ms:
            return r
    raise PlanError(f"no uniform parameter ratio up to 0.95 is predicted to reach {target_ms:.3f} ms/token; use --method "
                    "search (it allocates by predicted time, dropping layers too) or a smaller speed budget")


def predicted(lm: Predictor, dense_shapes: list, plan_shapes: list) -> dict:
    """The plan's predicted decode time against the dense model's, for the plan and profile."""
    d, p = lm.model_ms(dense_shapes), lm.model_ms(plan_shapes)
    return {"dense_ms_per_token": d, "pruned_ms_per_token": p, "speedup": d / p if p > 0 else None}


@dataclass
class Resolved:
    """A budget made concrete for one model: what the method is asked for, and why."""

    budget: Budget
    latency: object = None  # the LatencyModel (speed budgets)
    ratio: float | None = None  # the ratio the method gets: requested, or translated from the speed budget
    dense_ms: float | None = None
    target_ms: float | None = None
    translated: bool = False  # a speed budget handed to a parameter-only method as `ratio`

    def record(self) -> dict:
        """The plan's and profile's `budget` entry (the achieved ratio is added by the caller)."""
        out = self.budget.to_json()
        if self.budget.is_speed:
            out.update(target_ms_per_token=self.target_ms, dense_ms_per_token_predicted=self.dense_ms)
        if self.translated:
            out.update(translated_ratio=self.ratio, translation=(
                "this method allocates by parameters only: it was given the smallest ratio whose uniform widths the "
                "latency model predicts at or under the target"))
        return out


def parse_runtime(spec: str) -> tuple[str, str]:
    """--latency-runtime FORMAT:DTYPE (e.g. gguf:f32, gguf:q8_0, onnx:f32), validated against the dtype table."""
    from exporters.dtypes import allowed
    from exporters.formats import get, names

    fmt, _, dtype = str(spec).partition(":")
    if fmt not in names() or dtype not in allowed(fmt):
        choices = " or ".join(f"{f}:DTYPE ({get(f).runtime}: {', '.join(allowed(f))})" for f in names())
        raise PlanError(f"--latency-runtime {spec!r} is not FORMAT:DTYPE; use {choices}, e.g. gguf:f32")
    return fmt, dtype


def build_model(ad: "DecoderAdapter", fmt: str, dtype: str, context: int, table=None, progress: bool = True,
                threads: int | None = None):
    """The latency model of `fmt`/`dtype` at `context` with the threads the speedup check uses
    (a build passes its one thread count; alone, the cores free now): measured on this host
    (cached), or read from a table measured on the device."""
    from .latency_model import latency_model
    from .latency import free_cores

    return latency_model(ad, fmt, dtype, context, threads or free_cores(), table=table, progress=progress)


def resolve(b: Budget, ad: "DecoderAdapter", cost_budget: bool, lm=None, protected: set[int] = frozenset(),
            align: int = 1, where: str = "") -> Resolved:
    """Check a budget against the model before any work: a ratio passes through; a speed
    budget must be reachable (refused naming the range) and, for a method that cannot allocate
    by cost, becomes the ratio the latency model predicts reaches it."""
    if not b.is_speed:
        return Resolved(b, lm, b.requested)
    dense, target = check_reachable(b, lm, ad, protected, where)
    if cost_budget:
        return Resolved(b, lm, None, dense, target)
    return Resolved(b, lm, translate_to_ratio(target, lm, ad, align), dense, target, translated=True)

"""The method registry (re-exported by `edgeprune.methods`): each method with its capabilities
and options, the way llama.cpp's converter registers one class per architecture. What makes a
method special lives in its `Method` entry, nowhere else (the CLI, the pipeline, the build and
the targets read it). Adding a method is one module plus one `Method(...)` line below. Imports
no method module and nothing that imports one, so `base` reads the options from here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import PlanError
from .options import Option, unique

# Torch-free on purpose: the CLI builds its help from this table, and `edgeprune bench` runs on
# devices without torch. Each method's module is imported when its plan is first asked for.


@dataclass(frozen=True)
class Method:
    name: str
    entry: str  # "module:function" inside edgeprune.methods, imported on first use
    summary: str
    needs_calibration: bool = True
    takes_layers: bool = False  # reads --layers (whole layers to remove, or "auto")
    ratio_optional: bool = False  # --layers alone is a complete request
    exact_ratio: bool = False  # reaches the requested ratio within RATIO_TOLERANCE (checked after planning)
    resumable: bool = False  # its plan stage resumes per layer after an interruption
    cuda: bool = True  # runs on --device cuda through the shared layer driver
    build_layers: str | None = None  # what `build` passes as --layers
    evaluates_candidates: bool = False  # costs one streamed pass per --search-evals candidate
    seed: str | None = None  # the allocation rule it gives `search` as a seed (a key of methods/seeds.py RULES)
    # allocates under a cost per layer and choice, so a --speedup / --latency-ms budget is its own
    # (predicted decode time); the others get the parameter ratio the latency model predicts reaches it
    cost_budget: bool = False
    options: tuple[Option, ...] = ()  # the options it reads beyond PruneRequest's shared ones
    # its arithmetic's revision, recorded with a prune's resume arguments: bumped whenever a
    # change makes its per-layer records differ, so `--resume` never joins layers of two
    # revisions into one plan (io/guard.refuse_other_run refuses naming both)
    revision: int = 1

    @property
    def plan(self):
        """The planning function: (layer source, calibration windows, PruneRequest) -> Plan."""
        module, fn = self.entry.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), fn)


# The methods' own options, each declared once (a shared one is named by every method reading it);
# methods/options.py turns them into flags, target keys, resume arguments and the plan's record.
DAMP = Option("damp", 0.01, "Hessian damping, a fraction of its mean diagonal", float, minimum=0.0, flag=None)
MAX_LAYER_RATIO = Option("max_layer_ratio", 0.85, "the most of one layer's parameters removed", float, minimum=0.0,
                         flag=None)
ITERATIVE_LAYERS = Option("iterative_layers", True, "score layers once instead of iteratively (ablation)", bool,
                          flag="--one-shot-layers")
SEARCH_EVALS = Option("search_evals", 128, "candidate allocations evaluated (each is one streamed pass over the "
                      "held-back windows)", int, minimum=1, build=True)
SEARCH_KL_VOCAB = Option("search_kl_vocab", 4096, "vocabulary rows the fitness's KL is estimated on, beside each "
                         "token's 64 most likely (methods/fitness_vocab.py); 0: the whole vocabulary, which a "
                         "vocabulary under 4x the rows always is", int, minimum=0, build=True)
IPR = Option("ipr", "log", "Incremental Pruning Ratio schedule of the layers' ratios (methods/slimgpt.py: SCHEDULES)",
             str, choices=("log", "linear", "uniform"), flag=None)
COMP = (Option("importance", "diag", "COMP neuron importance reading (diag: see docs/METHODS.md)", str, choices=("obs", "diag")),
        Option("identical_inputs", True, "prune each layer on the pruned model's inputs (ablation)", bool,
               flag="--pruned-inputs"),
        ITERATIVE_LAYERS,
        Option("mask_tuning", True, "skip the least-squares mask re-fit (ablation)", bool, flag="--no-mask-tuning"),
        Option("solver", "cholesky", "mask solver (lsmr: CuPy on CUDA)", str, choices=("cholesky", "lsmr")),
        DAMP, MAX_LAYER_RATIO)

REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("comp", "comp:plan_comp", "hybrid: layers then neurons, least-squares re-fit (COMP)",
           takes_layers=True, exact_ratio=True, resumable=True, build_layers="auto", seed="comp", options=COMP),
    Method("search", "search:plan_search", "global search of each layer's and module's width over OBS candidate "
           "ladders (heads, KV groups, FFN channels, whole layers), KL fitness (Týr/DarwinLM style)",
           exact_ratio=True, resumable=True, evaluates_candidates=True, cost_budget=True,
           revision=2,  # 2: the re-fit starts from the ladder's channels (search_refit.jump_start)
           options=(SEARCH_EVALS, SEARCH_KL_VOCAB, DAMP, MAX_LAYER_RATIO)),
    Method("slimgpt", "slimgpt:plan_slimgpt", "group OBS on heads and channels with compensation (SlimGPT)", seed="log-ipr",
           options=(IPR, DAMP, MAX_LAYER_RATIO)),
    Method("comp-slimgpt", "hybrid:plan_comp_slimgpt", "COMP's layer removal, then SlimGPT's OBS on the kept layers",
           takes_layers=True, build_layers="auto", seed="comp-slimgpt", options=(ITERATIVE_LAYERS, IPR, DAMP, MAX_LAYER_RATIO)),
    Method("shortgpt", "shortgpt:plan_shortgpt", "whole-layer removal by block influence (ShortGPT)",
           takes_layers=True, ratio_optional=True, seed="layers"),
    Method("wanda-sp", "wanda:plan_wanda_sp", "structured Wanda: |W| x ||X|| per group, uniform", seed="uniform"),
    Method("flap", "flap:plan_flap", "fluctuation metric, global structure, bias compensation (FLAP)", seed="flap",
           options=(MAX_LAYER_RATIO,)),
    Method("taylor", "taylor:plan_taylor", "first-order Taylor importance per group, uniform", seed="uniform"),
    Method("magnitude", "magnitude:plan_magnitude", "weight magnitude per group, uniform (no data)", needs_calibration=False,
           seed="uniform"),
)}
# What `prune` uses without --method, and what the targets name: the best measured method
# (docs/METHODS.md: "Why `search` is the default"; benchmarks/quality_table.py).
DEFAULT = "search"
# Kept for callers that only need the names or the calibration flag.
METHODS: dict[str, Method] = dict(REGISTRY)
NEEDS_CALIBRATION = {n: m.needs_calibration for n, m in REGISTRY.items()}
# Every method option once, and which methods read each (the flags' help names them).
OPTIONS = unique(o for m in REGISTRY.values() for o in m.options)
READERS = {n: [m.name for m in REGISTRY.values() if any(o.name == n for o in m.options)] for n in OPTIONS}
BUILD_OPTIONS = {n: o for n, o in OPTIONS.items() if o.build}


def get(name: str) -> Method:
    """The registered method, or a one-line error listing the choices."""
    if name in REGISTRY:
        return REGISTRY[name]
    raise PlanError(f"unknown method '{name}'; choose one of: {', '.join(REGISTRY)}")


def get_method(name: str):
    return get(name).plan


def help_text() -> str:
    return "; ".join(f"{n}{' (default)' if n == DEFAULT else ''}: {m.summary}" for n, m in REGISTRY.items())

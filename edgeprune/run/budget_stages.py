"""Where the prune and the build meet a budget: the latency model built (or reloaded) and the
budget checked against it before any work; what the plan records (budget, predicted decode time);
a build's budget (the command line's, else the target's default); and what the profile records
(budget, latency model, predicted against measured decode time per artifact).

A speed budget (--speedup / --latency-ms, or `speedup = S` in the target) is predicted in
every artifact of the target: each runtime and the dtype the dense widths leave it, at the
context the build's own speedup check measures, by latency models measured on this host
(cached) or read from --latency-table (measured on the device), held together so the runtime
that speeds up least binds (`latency_binding.py`). It is refused before the build directory exists
when no plan can reach it.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

from ..measure.budget import Budget, Resolved, build_model, parse, predicted, resolve
from ..io.guard import set_stage


# ---- prune -----------------------------------------------------------------------------------------
def prune_budget(model_dir, method: str, req, lm, runtime: str, table) -> None:
    """The latency model (given, from a device table, or measured on this host for `runtime`),
    then the budget checked against it before any work; a method that cannot allocate by cost
    gets the ratio the model predicts reaches the budget (said in a warning)."""
    from ..measure.budget import parse_runtime
    from ..io.checkpoint import load_config
    from ..measure.latency import DEFAULT_CONTEXT
    from ..methods import get
    from ..models import get_adapter

    ad = get_adapter(load_config(model_dir) if isinstance(model_dir, (str, Path)) else model_dir.config)
    if lm is None:
        fmt, dtype = parse_runtime(runtime)
        set_stage("prune latency model")
        lm = build_model(ad, fmt, dtype, DEFAULT_CONTEXT, table, req.progress)
    m = get(method)
    res = resolve(req.budget, ad, m.cost_budget, lm, req.protected(ad.num_layers), req.align, f" in {_where(lm, runtime)}")
    req.latency, req.ratio, req.extra["budget"] = lm, res.ratio, res
    err, worst = getattr(lm, "relative_error", None), getattr(lm, "max_relative_error", None)
    print(f"edgeprune: {req.budget.words()}: dense {res.dense_ms:.3f} -> at most {res.target_ms:.3f} ms/token, predicted in "
          f"{_where(lm, runtime)}, {getattr(lm, 'threads', '?')} threads"
          + (f" ({err:.1%} error on held-out shapes" + (f", at most {worst:.1%})" if isinstance(worst, float) else ")")
             if isinstance(err, (int, float)) else ""), file=sys.stderr)
    if res.translated:
        warnings.warn(f"{m.name} allocates by parameters only: {req.budget.words()} is given to it as --ratio {res.ratio} "
                      f"(uniform widths predicted at {res.target_ms:.3f} ms/token or less); --method search allocates "
                      "by predicted time itself", stacklevel=3)


def _where(lm, runtime: str = "") -> str:
    src = "a latency table measured on the device" if getattr(lm, "source", "host") == "table" else "this build host"
    what = " ".join(x for x in (str(getattr(lm, "runtime", runtime)), str(getattr(lm, "dtype", "") or "")) if x)
    return f"{what} at {getattr(lm, 'context', '?')} tokens of context on {src}"


def record_budget(plan, report: dict, req, adapter, ratio: float) -> None:
    """The budget and the plan's predicted decode time (dense and pruned ms/token, speedup), in
    the plan and the prune report."""
    res = req.extra.get("budget") or Resolved(req.budget or Budget("ratio", float(req.ratio)), req.latency, req.ratio)
    removed = set(plan.removed_layers)
    shapes = [None if i in removed else plan.result_shape(i, adapter) for i in range(plan.num_layers)]
    pred = predicted(req.latency, list(adapter.layer_shapes()), shapes)
    if hasattr(req.latency, "per_runtime"):  # held in every artifact runtime: each one's own prediction
        pred["per_runtime"] = req.latency.per_runtime(shapes)
    pred["model"] = {k: getattr(req.latency, k, None) for k in ("runtime", "fmt", "dtype", "context", "threads", "source",
                                                                 "relative_error")}
    plan.options["budget"] = report["budget"] = {**res.record(), "ratio": ratio}
    plan.stats["latency_predicted"] = report["latency_predicted"] = pred


# ---- build -----------------------------------------------------------------------------------------


def choose(tgt, ratio: float | None, speedup: float | None, latency_ms: float | None) -> tuple[Budget | None, str]:
    """(the budget, why): the command line's, else the target's speedup; None means the target's
    ratio (`build.choose_ratio` decides it, "auto" included)."""
    given = parse(ratio, speedup, latency_ms)
    if given is not None:
        return given, f"from {given.flag}"
    if tgt.speedup is not None:
        return parse(speedup=tgt.speedup), f"the {tgt.name} target's default"
    return None, ""


def latency_for(tgt, ad, cfg, dtypes: list[tuple[str, str]], table=None, saved: dict | None = None,
                progress: bool = True, threads: int | None = None):
    """The latency model of every artifact (format, dtype the dense widths leave it), held
    together (`latency_binding`: the budget must hold in each runtime): reloaded from the build
    state on --resume, else from `table` or measured on this host (cached per runtime and dtype;
    a bar unless `progress` is off)."""
    from ..measure.latency import measure_context
    from ..measure.latency_binding import combine, load

    if saved:
        return load(saved)
    ctx = measure_context(tgt, cfg)
    return combine([build_model(ad, fmt, dtype, ctx, table, progress, threads) for fmt, dtype in dtypes],
                   list(ad.layer_shapes()))


def artifact_dtypes(tgt, dense_fit: dict) -> list[tuple[str, str]]:
    """(format, dtype) of each artifact as the dense widths leave it, first artifact first."""
    return [(f["format"], dense_fit[f"{f['format']}-{f['dtype']}"]["chosen"]) for f in tgt.formats]


def resolve_for_build(b: Budget, tgt, ad, cost_budget: bool, lm, align: int) -> Resolved:
    runs = getattr(lm, "models", [lm])
    what = ", ".join(f"{m.fmt} {m.dtype}" for m in runs)
    src = "the device table" if getattr(lm, "source", "host") == "table" else "measured on this build host"
    where = (f" in {tgt.name}'s artifacts ({what}, {src}; the slowest to speed up binds)" if len(runs) > 1 else
             f" in {tgt.name}'s artifacts ({what}, {src})")
    return resolve(b, ad, cost_budget, lm, set(), align, where)


def build_budget(b, ad, dense_fit: dict) -> None:
    """Every artifact's latency model (kept in the build state for --resume) and the budget
    checked against them; a parameter-only method's translated ratio becomes the build's ratio."""
    from ..io.checkpoint import load_config
    from ..methods import get

    set_stage("build latency model")
    from .build_context import QUIET

    b.latency = latency_for(b.tgt, ad, load_config(b.model_dir), artifact_dtypes(b.tgt, dense_fit),
                            b.opts.get("latency_table"), b.state.get("latency_model"), progress=not QUIET["on"],
                            threads=b.state.get("runtime_threads"))
    res = resolve_for_build(b.budget, b.tgt, ad, get(b.method).cost_budget, b.latency, b.align)
    b.state["latency_model"] = b.latency.to_json()
    b.ratio = res.ratio


def budget_words(b) -> str:
    """The build's budget for its log and summary lines."""
    if b.budget is None:
        return f"ratio {b.ratio} ({b.why})"
    return f"{b.budget.words().lstrip('-')} ({b.why})" + (f", as ratio {b.ratio}" if b.ratio is not None else "")


# ---- the profile's records ------------------------------------------------------------------------
def budget_record(budget: Budget | None, ratio: float | None, achieved: float, prune_report: dict) -> dict:
    """profile.json `budget`: kind, requested, and the ratio it became."""
    rec = dict(prune_report.get("budget") or (budget or Budget("ratio", float(ratio))).to_json())
    rec["ratio"] = achieved
    return rec


def latency_model_record(lm) -> dict | None:
    if lm is None:
        return None
    keys = ("source", "relative_error", "max_relative_error", "runtime", "fmt", "dtype", "context", "threads", "key")
    rec = {k: getattr(lm, k, None) for k in keys}
    if hasattr(lm, "models"):  # a Binding: each runtime's own model and its held-out error
        rec["per_runtime"] = [{k: getattr(m, k, None) for k in keys} for m in lm.models]
        rec["binding"] = "the plan's time in the runtime it speeds up least; relative_error is the worst runtime's"
    return rec


def _prediction_for(entry: dict, lm, pred: dict) -> dict | None:
    """The prune report's prediction for this artifact's (format, dtype), or None."""
    own = (pred.get("per_runtime") or {}).get(f"{entry['format']}-{entry['dtype']}")
    if own is not None:
        return own
    if (entry["format"], entry["dtype"]) == (getattr(lm, "fmt", None), getattr(lm, "dtype", None)):
        return pred
    return None


def artifact_prediction(entry: dict, lm, prune_report: dict) -> dict | None:
    """Predicted against measured decode ms/token and speedup, for each artifact a latency
    model describes (its format and dtype); None for the others."""
    pred = prune_report.get("latency_predicted")
    pred = _prediction_for(entry, lm, pred) if lm is not None and pred is not None else None
    if pred is None:
        return None
    lat, sp = entry["latency"], entry["speedup"]
    d, p = lat["dense"]["decode_ms_per_token_median"], lat["pruned"]["decode_ms_per_token_median"]
    return {"dense_ms_per_token": {"predicted": pred["dense_ms_per_token"], "measured": d},
            "pruned_ms_per_token": {"predicted": pred["pruned_ms_per_token"], "measured": p},
            "speedup": {"predicted": pred["speedup"], "measured": sp["decode_measured"], "interval": sp["decode_interval"]},
            "measured_is": "median over the build's interleaved repetitions"}

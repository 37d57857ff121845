"""A build's budget: the one given on the command line, else the target's default, made concrete
before any work; and what the profile records of it (budget, latency model, predicted against
measured decode time per artifact).

A speed budget (--speedup / --latency-ms, or `speedup = S` in the target) is predicted in the
target's first artifact: its runtime and the dtype the dense widths leave it, at the context the
build's own speedup check measures, by a latency model measured on this host (cached) or read
from --latency-table (measured on the device). It is refused before the build directory exists
when no plan can reach it.
"""
from __future__ import annotations

from .budget import Budget, Resolved, build_model, parse, resolve


def choose(tgt, ratio: float | None, speedup: float | None, latency_ms: float | None) -> tuple[Budget | None, str]:
    """(the budget, why): the command line's, else the target's speedup; None means the target's
    ratio (`build.choose_ratio` decides it, "auto" included)."""
    given = parse(ratio, speedup, latency_ms)
    if given is not None:
        return given, f"from {given.flag}"
    if tgt.speedup is not None:
        return parse(speedup=tgt.speedup), f"the {tgt.name} target's default"
    return None, ""


def measure_context(tgt, cfg) -> int:
    """The prompt length the build's latency measurement uses (the target's, within the model's window)."""
    return max(8, min(tgt.context, int(getattr(cfg, "max_position_embeddings", 2048)) - tgt.new_tokens - 8))


def latency_for(tgt, ad, cfg, first_dtype: str, table=None, saved: dict | None = None):
    """The latency model of the target's first artifact: reloaded from the build state on
    --resume, else from `table` or measured on this host."""
    if saved:
        from .latency_model import LatencyModel

        return LatencyModel.from_json(saved)
    fmt = tgt.formats[0]["format"]
    return build_model(ad, fmt, first_dtype, measure_context(tgt, cfg), table)


def resolve_for_build(b: Budget, tgt, ad, cost_budget: bool, lm, align: int) -> Resolved:
    f = tgt.formats[0]
    where = (f" in {tgt.name}'s first artifact ({f['format']} {getattr(lm, 'dtype', f['dtype'])}, "
             f"{'the device table' if getattr(lm, 'source', 'host') == 'table' else 'measured on this build host'})")
    return resolve(b, ad, cost_budget, lm, set(), align, where)


# ---- the profile's records ------------------------------------------------------------------------
def budget_record(budget: Budget | None, ratio: float | None, achieved: float, prune_report: dict) -> dict:
    """profile.json `budget`: kind, requested, and the ratio it became."""
    rec = dict(prune_report.get("budget") or (budget or Budget("ratio", float(ratio))).to_json())
    rec["ratio"] = achieved
    return rec


def latency_model_record(lm) -> dict | None:
    if lm is None:
        return None
    return {k: getattr(lm, k, None) for k in ("source", "relative_error", "runtime", "fmt", "dtype", "context", "threads", "key")}


def artifact_prediction(entry: dict, lm, prune_report: dict) -> dict | None:
    """Predicted against measured decode ms/token and speedup, for the artifact the latency
    model describes (its format and dtype); None for the others."""
    pred = prune_report.get("latency_predicted")
    if lm is None or pred is None or (entry["format"], entry["dtype"]) != (getattr(lm, "fmt", None), getattr(lm, "dtype", None)):
        return None
    lat, sp = entry["latency"], entry["speedup"]
    d, p = lat["dense"]["decode_ms_per_token_median"], lat["pruned"]["decode_ms_per_token_median"]
    return {"dense_ms_per_token": {"predicted": pred["dense_ms_per_token"], "measured": d},
            "pruned_ms_per_token": {"predicted": pred["pruned_ms_per_token"], "measured": p},
            "speedup": {"predicted": pred["speedup"], "measured": sp["decode_measured"], "interval": sp["decode_interval"]},
            "measured_is": "median over the build's interleaved repetitions"}

"""The speedup check: pass, miss or inconclusive, from paired, interleaved repetitions.

One minimum over five runs on a shared machine once passed a 47x "speedup". Here every
repetition times dense and pruned back to back (so both see the same background load),
the speedup is the median of the per-repetition ratios, and a seeded bootstrap of that
median gives a 95% interval. The verdict:
  - miss, whatever was measured, when the ideal is below 1 (the pruned artifact is bigger);
  - inconclusive: the measurement is implausible (above 1.5x the ideal, or below 1/ideal),
    the interval is wider than `MAX_REL_WIDTH` of the estimate, or it straddles the
    threshold;
  - pass: the whole interval is at or above `PASS_FRACTION` x ideal;
  - miss: the whole interval is below it.
No torch: it also runs in `edgeprune bench` on the device.
"""
from __future__ import annotations

import statistics

import numpy as np

PASS_FRACTION = 0.9
IMPLAUSIBLE_ABOVE = 1.5  # x ideal: a pruned model cannot be much faster than its bytes allow
MAX_REL_WIDTH = 0.25
BOOTSTRAP = 2000


def paired_ratios(dense_ms: list[float], pruned_ms: list[float]) -> list[float]:
    return [d / p for d, p in zip(dense_ms, pruned_ms) if p > 0]


def interval(ratios: list[float], seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high) of the paired ratios; the interval is a percentile bootstrap."""
    r = np.asarray(ratios, dtype=float)
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(r, size=(BOOTSTRAP, r.size), replace=True), axis=1)
    a = (1 - level) / 2
    return float(np.median(r)), float(np.quantile(meds, a)), float(np.quantile(meds, 1 - a))


def verdict(measured: float, lo: float, hi: float, ideal: float, ceiling: float | None = None,
            one_sided: bool = False) -> tuple[str, str]:
    """(status, reason) for a measured speedup with its interval against the ideal (or, under
    a speed budget, the speedup asked for); `ceiling` is the bytes ideal that bounds what is
    plausible when the two differ. `one_sided` (a speed budget): a whole interval at or above
    the threshold passes however wide it is, since the question is only whether the speed asked
    for was reached; a wide interval still cannot pass the bytes-ideal check, which also claims
    how close the estimate is to the ideal."""
    threshold = PASS_FRACTION * ideal
    top = max(ideal, ceiling or 0.0)
    if ideal < 1:
        return "miss", (f"ideal {ideal:.2f}x is below 1: the pruned artifact reads more bytes per token than the dense "
                        "one (its dtype falls back on the pruned widths); nothing to gain, whatever was measured")
    if measured > IMPLAUSIBLE_ABOVE * top or measured < 1 / ideal:
        return "inconclusive", (f"implausible: {measured:.2f}x against an ideal of {top:.2f}x "
                                f"(plausible range {1 / ideal:.2f}x to {IMPLAUSIBLE_ABOVE * top:.2f}x); the machine was busy")
    if one_sided and lo >= threshold:  # "did it reach what was asked?": the lower bound answers it
        return "pass", f"interval [{lo:.2f}, {hi:.2f}]x at or above {PASS_FRACTION} x ideal = {threshold:.2f}x"
    if (hi - lo) > MAX_REL_WIDTH * measured:
        return "inconclusive", f"too noisy: 95% interval [{lo:.2f}, {hi:.2f}]x is wider than {MAX_REL_WIDTH:.0%} of {measured:.2f}x"
    if lo >= threshold:
        return "pass", f"interval [{lo:.2f}, {hi:.2f}]x at or above {PASS_FRACTION} x ideal = {threshold:.2f}x"
    if hi < threshold:
        return "miss", f"interval [{lo:.2f}, {hi:.2f}]x below {PASS_FRACTION} x ideal = {threshold:.2f}x"
    return "inconclusive", f"interval [{lo:.2f}, {hi:.2f}]x straddles {PASS_FRACTION} x ideal = {threshold:.2f}x"


def check(dense_ms: list[float], pruned_ms: list[float], ideal: float, requested: float | None = None) -> dict:
    """The profile's `speedup` fields from per-repetition decode ms/token of both sides. Under a
    speed budget (`requested`, the speedup the user asked for) that is what the check holds the
    measurement to, since the plan was made to reach it, not the bytes ideal; the bytes ideal is
    still recorded (`bytes_ideal`) and bounds what is plausible."""
    ratios = paired_ratios(dense_ms, pruned_ms)
    med, lo, hi = interval(ratios)
    ref = ideal if requested is None else requested
    status, reason = verdict(med, lo, hi, ref, ceiling=None if requested is None else ideal, one_sided=requested is not None)
    if requested is not None:
        reason = f"against the requested speedup {requested:.2f}x: {reason}".replace("x ideal", "x requested")
    return {"status": status, "reason": reason, "decode_measured": med, "decode_interval": [lo, hi],
            "decode_ideal": ref, "bytes_ideal": ideal, "reference": "bytes ideal" if requested is None else "requested speedup",
            "passed": status == "pass", "threshold": PASS_FRACTION,
            "method": "median of paired dense/pruned ratios over interleaved repetitions; 95% bootstrap interval",
            "repetitions": len(ratios),
            "spread": {"dense_ms": [min(dense_ms), statistics.median(dense_ms), max(dense_ms)],
                       "pruned_ms": [min(pruned_ms), statistics.median(pruned_ms), max(pruned_ms)]}}


def decode_bars(dense_ms: list[float], sp: dict) -> dict:
    """The decode ms/token a plot or a table shows for one dense/pruned pair, derived from the
    check so that no bar contradicts its verdict. The median of each side's runs and the
    median of the paired ratios are different statistics: on a noisy run the pruned median can
    sit above the dense one while the paired speedup says 1.13x faster. So: dense = the median
    of the dense runs (whiskers: the bootstrap 95% interval of that median); pruned = dense /
    the check's speedup (whiskers: dense / the check's 95% interval); ideal = dense / ideal."""
    med, lo, hi = interval(dense_ms) if len(dense_ms) > 1 else (dense_ms[0], dense_ms[0], dense_ms[0])
    s, (s_lo, s_hi) = sp["decode_measured"], sp.get("decode_interval") or [sp["decode_measured"]] * 2
    return {"dense": med, "dense_interval": [lo, hi], "pruned": med / s, "pruned_interval": [med / s_hi, med / s_lo],
            "ideal_pruned": med / sp["decode_ideal"], "speedup": s, "speedup_interval": [s_lo, s_hi],
            "ideal": sp["decode_ideal"], "status": sp.get("status")}

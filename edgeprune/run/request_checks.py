"""The checks every prune request passes, whatever the method: the request against the
method's capabilities before any work (`check_request`), and the achieved ratio against the
requested one after planning (`ratio_note`). Methods read a validated ratio and never check it.
"""
from __future__ import annotations

from ..errors import PlanError
from ..methods import DEFAULT, REGISTRY, PruneRequest
from ..methods.base import RATIO_TOLERANCE
from ..measure.budget import check_ratio
from ..plan import Plan

# Below this many calibration tokens COMP's statistics get noisy (the paper used 10 x 128).
MIN_CALIB_TOKENS = 1024



def check_request(m, ratio, layers, budget=None) -> None:
    """The one place a ratio / --layers request is validated, against the method's capabilities
    (a speed budget takes the ratio's place: a method that allocates by cost reads it, the others
    get the ratio it is translated to)."""
    if layers is not None and not m.takes_layers:
        takers = ", ".join(n for n, x in REGISTRY.items() if x.takes_layers)
        raise PlanError(f"--layers is read by {takers} only, not {m.name}; drop --layers or choose one of those")
    if budget is not None and budget.is_speed and layers not in (None, "auto") and m.ratio_optional:
        raise PlanError(f"--layers {layers} and {budget.flag} both set how much {m.name} removes; pass one of them")
    if budget is not None and budget.is_speed and ratio is None:
        return
    if ratio is None and m.ratio_optional and layers not in (None, "auto"):
        return
    if ratio is None:
        raise PlanError(f"--method {m.name} needs --ratio R (fraction of non-embedding parameters)"
                        + (" or --layers N" if m.ratio_optional else ""))
    check_ratio(ratio)  # budget.check_ratio: the one message


def ratio_note(m, req: PruneRequest, ratio: float, plan: Plan) -> str | None:
    """The one tolerance check, for every method: a plan more than RATIO_TOLERANCE from the
    requested ratio is kept (it is the nearest its aligned widths reach: say so), except from
    a method that promises to land and did not say it could not (a bug, not bad input)."""
    if not req.ratio or abs(ratio - req.ratio) <= RATIO_TOLERANCE:
        return None
    if m.exact_ratio and not plan.stats.get("nearest_reachable"):
        raise RuntimeError(f"{m.name} reached ratio {ratio:.4f}, more than {RATIO_TOLERANCE} from the requested "
                           f"{req.ratio}; this is a bug, please report it with the command")
    why = (f"where its per-layer widths rounded to --align {req.align} land (a smaller --align gives finer steps"
           + ("" if m.name == DEFAULT else f"; {DEFAULT} lands as near as the aligned widths allow") + ")"
           if req.align > 1 else "where its per-layer rounding lands")
    return (f"{m.name} reached ratio {ratio:.4f}, {abs(ratio - req.ratio):.4f} from the requested {req.ratio} "
            f"(tolerance {RATIO_TOLERANCE}): {why}")

"""COMP: hybrid-granularity post-training pruning (arXiv 2501.15255), layer-streamed.

1. Layer stage: remove `--layers` layers of lowest importance 1 - cos(in, out),
   iteratively (after each removal the layers behind it are re-scored).
2. Per-layer ratios: the remaining budget spread in inverse proportion to importance
   (paper Eq. 10, harmonic-mean normalised), clipped, excess redistributed; protected
   layers (first two and last by default) are not neuron-pruned.
3. Neuron stage, layer by layer on the dense model's inputs ("identical inputs"): input
   neurons of `down_proj` (FFN channels) and of `o_proj` (whole KV groups, so GQA stays
   valid) are pruned in ascending importance with the mask re-fitted by least squares
   after each step; a variance threshold τ on the kept masks decides how far each dense
   goes, raised until the layer meets its ratio. The fitted mask is folded into the
   weights as a per-column scale.

Choices the paper (arXiv 2501.15255) leaves open and what we do (docs/METHODS.md):
  - importance reading: `diag` (default) or `obs`: on the gutenberg benchmark model they tie
    within 0.3% perplexity at 20/30/50% and diag is ~30% faster (docs/METHODS.md, benchmarks/results);
  - heads are removed as whole KV groups (k/v rows go too, and the KV cache shrinks);
  - τ is chosen exactly from each dense's variance trajectory (computed once, in steps
    of ~1/32 of the width) as the smallest τ meeting the layer's ratio; removal then
    stops at that τ's first crossing, and the last step is trimmed to hit the ratio;
  - the mask fit is damped towards 1 (see linalg), damp = 0.01 · mean(diag A).
"""
from __future__ import annotations

import torch

from ..errors import PlanError
from ..models import LayerShape
from .. import dist
from ..plan import LayerPlan, Plan
from ..calibrate.streaming import Activations, LayerSource, done, run_collecting, walk
from .base import (
    PruneRequest, bar, check_layer_count, dense_params, group_layer_plan,
    remove_layers, units_of_groups,
)
from .widths import aligned_keep
from .linalg import damping, fit_mask, mask_system, mask_trajectory, removed_at


def layer_ratios(imp: dict[int, float], params: dict[int, int], budget: float, r_max: float) -> dict[int, float]:
    """Paper Eq. 10: r_l ∝ H / I_l, scaled so Σ r_l P_l = budget, clipped at r_max with
    the excess handed to the unclipped layers."""
    if budget <= 0 or not imp:
        return {i: 0.0 for i in imp}
    cap = sum(params.values()) * r_max
    if budget > cap + 1e-6:
        raise PlanError("budget exceeds the prunable layers' capacity")
    eps = 1e-8
    fixed: dict[int, float] = {}
    free = set(imp)
    while True:
        rest = budget - sum(fixed[i] * params[i] for i in fixed)
        inv = {i: 1.0 / max(imp[i], eps) for i in free}
        denom = sum(inv[i] * params[i] for i in free)
        r = {i: rest * inv[i] / denom for i in free}
        over = [i for i in free if r[i] > r_max]
        if not over:
            return {**fixed, **r}
        for i in over:
            fixed[i] = r_max
            free.discard(i)
        if not free:
            return fixed


def _select_counts(
    steps_o, steps_f, cost_o: int, cost_f: int, target: float, max_f: int
) -> tuple[int, int, float]:
    """Smallest τ meeting `target` removed params; returns (groups, channels, τ), trimmed."""
    taus = sorted({0.0} | {v for _, v in steps_o} | {v for _, v in steps_f})
    chosen = taus[-1]
    for tau in taus:
        if removed_at(steps_o, tau) * cost_o + removed_at(steps_f, tau) * cost_f >= target:
            chosen = tau
            break
    k_o, k_f = removed_at(steps_o, chosen), removed_at(steps_f, chosen)
    # Trim (or top up) the FFN, channel granularity, to land on the target.
    k_f = int(round((target - k_o * cost_o) / cost_f))
    while k_f < 0 and k_o > 0:
        k_o -= 1
        k_f = int(round((target - k_o * cost_o) / cost_f))
    return k_o, max(0, min(k_f, max_f)), chosen


def prune_layer(
    layer_index: int, layer, source: LayerSource, acts: Activations, target_ratio: float, req: PruneRequest
) -> tuple[LayerPlan, dict[str, torch.Tensor], Activations]:
    """Neuron stage for one layer; returns its plan, re-fitted tensors and the dense output."""
    ad = source.adapter
    shape: LayerShape = ad.shape_of(layer)
    hd = ad.head_dim
    out, cols = run_collecting(source, layer, acts, ("o", "down"))
    col_o, col_f = cols["o"], cols["down"]
    n_rep = shape.num_heads // shape.num_kv_heads
    cost_o = ad.head_group_param_count(n_rep)
    cost_f = ad.ffn_channel_param_count()
    target = target_ratio * ad.layer_param_count(shape)

    W_o, W_f = ad.module(layer, "o").weight.detach(), ad.module(layer, "down").weight.detach()
    grams = [col_o.gram, col_f.gram]
    del col_o, col_f, cols

    def solve() -> tuple[LayerPlan, dict[str, torch.Tensor]]:
        """The mask trajectories and re-fits on the summed Grams (one rank runs it: `dist.solve_once`)."""
        A_o, A_f = mask_system(W_o, grams[0]), mask_system(W_f, grams[1])
        grams.clear()  # the Gram matrices are folded into A; free them before the solves
        f = shape.intermediate_size
        min_keep_f = max(1, req.align if req.align > 1 and f >= 2 * req.align else 1)
        groups = units_of_groups(shape, hd, A_o.device)
        channels = torch.arange(f, device=A_f.device).view(f, 1)
        order_o, steps_o = mask_trajectory(A_o, groups, shape.num_kv_heads - 1, 1, req.importance, req.damp)
        order_f, steps_f = mask_trajectory(A_f, channels, f - min_keep_f, max(1, f // 32), req.importance, req.damp)
        k_o, k_f, tau = _select_counts(steps_o, steps_f, cost_o, cost_f, target, len(order_f))
        keep_f, note = aligned_keep(f, f - k_f, req.align)
        shift = (keep_f - (f - k_f)) * cost_f  # parameters the rounding to --align kept (+) or removed (-)
        k_f = f - keep_f

        kv_keep = sorted(set(range(shape.num_kv_heads)) - set(order_o[:k_o]))
        ffn_keep = sorted(set(range(f)) - set(order_f[:k_f]))
        tensors: dict[str, torch.Tensor] = {}
        stats: dict = {"target_ratio": target_ratio, "tau": tau, "align_shift_params": shift}
        for role, A, keep_idx in (
            ("o", A_o, groups[kv_keep].reshape(-1)),
            ("down", A_f, torch.tensor(ffn_keep, device=A_f.device)),
        ):
            if len(keep_idx) == A.shape[0] or not req.mask_tuning:
                stats[f"{role}_mask_var"] = 0.0
                continue
            m = fit_mask(A, keep_idx, damping(A, req.damp), req.solver)
            tensors[f"L{layer_index}.{role}.col_scale"] = m.float().cpu()
            stats[f"{role}_mask_var"] = float(m.var()) if m.numel() > 1 else 0.0
        new_shape = LayerShape(len(ffn_keep), len(kv_keep) * n_rep, len(kv_keep))
        stats["achieved_ratio"] = 1 - ad.layer_param_count(new_shape) / ad.layer_param_count(shape)
        stats["kept"] = new_shape.as_dict()
        if note:
            stats["align_note"] = note
        return group_layer_plan(shape, kv_keep, ffn_keep, stats), tensors

    lp, tensors = dist.solve_once(solve)
    grams.clear()
    return lp, tensors, out


def scaled_protect(L: int) -> set[int]:
    """COMP's default protected layers at depth L: the paper protects layers 0, 1 and the last
    of 32 (the first 6% and the last 3% of the depth); the same shares, rounded, elsewhere.
    32 layers -> {0, 1, 31}; 16 -> {0, 15}; 8 -> {0}; 5 or fewer -> none, so a shallow model
    can still reach high ratios. `--protect` gives the paper's fixed set (or any other)."""
    first, last = int(2 * L / 32 + 0.5), int(L / 32 + 0.5)
    return set(range(first)) | {L - 1 - k for k in range(last)}


def _auto_layers(L: int, ratio: float) -> int:
    """Default number of removed layers for `--layers auto` (see README: chosen by benchmark)."""
    return max(0, min(L // 4, int(round(ratio * L * 0.5))))


def _neuron_budget(ad, source: LayerSource, removed: list[int], protected: set[int], imp: dict[int, float],
                   ratio: float, n_remove: int, explicit: bool, req: PruneRequest) -> dict[int, float]:
    """Per-layer neuron ratios (Eq. 10) for what the removed layers left of the budget, or a
    one-line error naming the largest reachable ratio and the options that lift it."""
    P_total = dense_params(ad)
    layer_params = {i: ad.layer_param_count(s) for i, s in enumerate(source.shapes)}
    budget = ratio * P_total - sum(layer_params[i] for i in removed)
    prunable = {i: p for i, p in layer_params.items() if i not in removed and i not in protected}
    capacity = sum(prunable.values()) * req.max_layer_ratio + sum(layer_params[i] for i in removed)
    if budget < -0.01 * P_total:
        raise PlanError(
            f"removing {n_remove} layers already removes {1 - (P_total - sum(layer_params[i] for i in removed)) / P_total:.3f} "
            f"of the parameters, more than --ratio {ratio}; lower --layers"
        )
    if ratio * P_total > capacity + 1e-6:
        raise PlanError(
            f"--ratio {ratio} is impossible with layers {sorted(protected)} protected "
            f"({'--protect' if explicit else 'scaled to depth'}) and {n_remove} removed: at most {capacity / P_total:.3f} "
            f"can be removed; lower --ratio to {capacity / P_total:.3f} or less, remove more layers (--layers N), "
            f"or protect fewer (--protect with fewer layers)"
        )
    return layer_ratios({i: imp[i] for i in prunable}, prunable, max(budget, 0.0), req.max_layer_ratio)


def plan_comp(source: LayerSource, calib: torch.Tensor, req: PruneRequest) -> Plan:
    from ..apply.surgery import slice_layer

    ad = source.adapter
    L = source.num_layers
    explicit = req.protect is not None
    protected = req.protected(L) if explicit else scaled_protect(L)
    ratio = float(req.ratio)
    n_remove = _auto_layers(L, ratio) if req.layers in (None, "auto") else int(req.layers)
    check_layer_count(n_remove, L, L - len(protected))

    acts = source.start(calib, req.batch_size, req.offload)
    removed, imp, history = remove_layers(source, acts, n_remove, set(range(L)) - protected, req, req.iterative_layers)

    ratios = _neuron_budget(ad, source, removed, protected, imp, ratio, n_remove, explicit, req)

    plan = Plan(method="comp", tensors=req.tensor_store(), model_type=ad.family, num_layers=L, removed_layers=sorted(removed), ratio_requested=ratio)
    state = req.state

    def neuron_stage(i: int, layer, cur):
        """Prune layer i (or take it from the resume state); with identical inputs hand on the
        dense outputs prune_layer computed, else slice it so the driver runs the pruned layer."""
        if not ratios.get(i, 0) > 0:
            return None
        done_i = state.get(i) if state is not None else None
        out = None
        if done_i is not None:
            lp, tensors = done_i
        else:
            lp, tensors, out = prune_layer(i, layer, source, cur, ratios[i], req)
            if state is not None:
                state.put(i, lp, tensors)
        lp.stats["importance"] = imp[i]
        plan.layers[i] = lp
        plan.tensors.update(tensors)
        if req.identical_inputs:
            return out
        if out is not None:
            out.close()
        with torch.no_grad():
            slice_layer(ad, layer, i, plan, source.shapes[i])
        return None

    layers = [i for i in range(L) if req.identical_inputs or i not in removed]
    done(walk(source, acts, bar(layers, "comp neuron stage", req), edit=neuron_stage), acts)
    plan.options = {
        "layers_removed": n_remove, "importance": req.importance, "identical_inputs": req.identical_inputs,
        "iterative_layers": req.iterative_layers, "mask_tuning": req.mask_tuning, "protect": sorted(protected),
        "protect_rule": "--protect" if explicit else "scaled to depth from the paper's (0, 1, last) at 32 layers",
        "max_layer_ratio": req.max_layer_ratio, "damp": req.damp, "align": req.align, "solver": req.solver,
    }
    shown = dict(imp)  # kept layers: final importance; removed ones: their importance when removed
    for before, after in zip(history, history[1:]):
        shown[after["removed"]] = before["importance"][after["removed"]]
    plan.stats = {"layer_importance": {str(k): v for k, v in sorted(shown.items())}, "removal_history": history,
                  "layer_ratio_targets": {str(k): v for k, v in ratios.items()}}
    if _alignment_explains_the_miss(ad, plan, ratio):
        plan.stats["nearest_reachable"] = True  # a warning naming --align, not a bug (request_checks.ratio_note)
    return plan


def _alignment_explains_the_miss(ad, plan: Plan, ratio: float) -> bool:
    """True when the plan misses the ratio by no more than its layers' rounding to --align
    moved it: on narrow FFNs (a few multiples of --align) those are the only widths there are."""
    from .base import RATIO_TOLERANCE, achieved_ratio

    P = dense_params(ad)
    miss = abs(achieved_ratio(plan, ad) - ratio) * P
    shifted = sum(abs(lp.stats.get("align_shift_params", 0)) for lp in plan.layers.values())
    return miss > RATIO_TOLERANCE * P and miss <= shifted + RATIO_TOLERANCE * P

"""SlimGPT (NeurIPS 2024): layer-wise structured Optimal Brain Surgeon with compensation.

Per layer, on the already-pruned model's inputs (layers pruned in order):
  - H = 2 X Xᵀ + λI for the inputs of `o_proj` and `down_proj` (λ = 0.01 · mean diag);
  - heads: whole KV groups (GQA-valid), chosen by block OBS: the cost of removing unit u
    is tr(W_u [H⁻¹]_uu⁻¹ W_uᵀ) from per-group diagonal blocks of H⁻¹, factored as one
    batch (the paper's grouped Cholesky), one group at a time;
  - FFN: `down_proj` columns by OBS cost ‖W_:,j‖² / [H⁻¹]_jj, removed k at a time with k
    shrinking from 1024 to 8 (Dynamic Group Size);
  - each removal is compensated, W ← W − W_:,S [H⁻¹]_SS⁻¹ [H⁻¹]_S,:, and H⁻¹ updated;
    the compensated weights go into the plan as `L{i}.{o,down}.weight`.
Layer ratios follow the Incremental Pruning Ratio: logarithmic in the layer index by
default (linear and uniform as options), over the model's real layer count, scaled so the
total meets the request (clipped at 0.85, excess redistributed).
"""
from __future__ import annotations

import math

import torch

from .. import dist
from ..plan import Plan
from ..calibrate.streaming import LayerSource, done, run_collecting, walk
from .base import PruneRequest, bar, group_layer_plan, param_budget, uniform_split, units_of_groups
from .comp import layer_ratios
from .linalg import inverse_spd


def ipr_ratios(num_layers: int, params: dict[int, int], budget: float, schedule: str, r_max: float) -> dict[int, float]:
    """Incremental Pruning Ratio: weight_i = log(i+2) (log), i+1 (linear) or 1 (uniform)."""
    weight = {"log": lambda i: math.log(i + 2), "linear": lambda i: i + 1.0, "uniform": lambda i: 1.0}[schedule]
    return layer_ratios({i: 1.0 / weight(i) for i in params}, params, budget, r_max)


def hessian(gram: torch.Tensor, damp: float) -> torch.Tensor:
    """H = 2 XᵀX + λI, λ = damp · mean diag (SlimGPT's damping), a new matrix."""
    H = 2 * gram
    H.diagonal().add_(damp * float(H.diagonal().mean().clamp_min(1e-12)))
    return H


def weight64(ad, layer, role: str, device) -> torch.Tensor:
    """A copy of one role's weight in float64 on `device`: what OBS edits in place."""
    return ad.module(layer, role).weight.detach().to(device, torch.float64).clone()


def set_cost(W: torch.Tensor, Hinv: torch.Tensor, S: torch.Tensor, LS: torch.Tensor | None = None) -> float:
    """OBS cost tr(W_S [H⁻¹]_SS⁻¹ W_Sᵀ) of removing the columns S together (LS: the Cholesky
    factor of [H⁻¹]_SS, if the caller has it)."""
    LS = torch.linalg.cholesky(Hinv[S.unsqueeze(1), S.unsqueeze(0)]) if LS is None else LS
    WS = W[:, S]
    return float((WS * torch.cholesky_solve(WS.T, LS).T).sum())


def unit_costs(W: torch.Tensor, Hinv: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """OBS cost tr(W_u [H⁻¹]_uu⁻¹ W_uᵀ) of removing each unit alone; `cols` is [U, g] column
    indices. One batched Cholesky over the per-unit diagonal blocks (SlimGPT's grouped form)."""
    # Only the U diagonal blocks are gathered ([U, g, g]): gathering the whole (U·g)² block and
    # taking its diagonal cost 2.5 s per step at 8,192 channels (benchmarks/scale.py, issue 23).
    blocks = Hinv[cols.unsqueeze(2), cols.unsqueeze(1)]
    Wu = W[:, cols].permute(1, 0, 2)  # [U, out, g]
    sol = torch.cholesky_solve(Wu.transpose(1, 2), torch.linalg.cholesky(blocks))  # [U, g, out]
    return (Wu.transpose(1, 2) * sol).sum((1, 2))


def obs_compensate(W: torch.Tensor, Hinv: torch.Tensor, S: torch.Tensor) -> float:
    """Remove columns S of W (in place) with OBS compensation, update H⁻¹; returns the cost
    tr(W_S [H⁻¹]_SS⁻¹ W_Sᵀ), twice the exact rise of ‖ΔW X‖² for H = 2XXᵀ."""
    LS = torch.linalg.cholesky(Hinv[S.unsqueeze(1), S.unsqueeze(0)])
    HS = Hinv[S]  # [|S|, n]
    cost = set_cost(W, Hinv, S, LS)
    W -= W[:, S] @ torch.cholesky_solve(HS, LS)
    Hinv -= HS.T @ torch.cholesky_solve(HS, LS)
    W[:, S] = 0  # exact zeros (rounding leaves residue)
    return cost


def obs_remove(W: torch.Tensor, Hinv: torch.Tensor, units: torch.Tensor, n_units: int, steps: list[int],
               costs: list[float] | None = None) -> list[int]:
    """Remove `n_units` units of columns from W (in place) with OBS compensation; returns their
    indices (and appends each step's cost to `costs`)."""
    alive = list(range(units.shape[0]))
    removed: list[int] = []
    for k in steps:
        if len(removed) >= n_units:
            break
        k = min(k, n_units - len(removed), len(alive) - 1)
        cost = unit_costs(W, Hinv, units[alive])
        pick = torch.argsort(cost, stable=True)[:k].tolist()
        c = obs_compensate(W, Hinv, torch.cat([units[alive[i]] for i in pick]))
        if costs is not None:
            costs.append(c)
        gone = {alive[i] for i in pick}
        removed += [alive[i] for i in pick]
        alive = [u for u in alive if u not in gone]
        W[:, units[removed].reshape(-1)] = 0  # exact zeros (earlier columns drift by rounding)
    return removed


def dynamic_group_sizes(n: int, largest: int = 1024, smallest: int = 8) -> list[int]:
    """Group sizes shrinking from `largest` to `smallest` (then repeated) to remove n columns."""
    steps, left = [], n
    k = largest
    while left > 0:
        while k > smallest and k > left // 2:
            k //= 2
        take = min(max(k, smallest), left)
        steps.append(take)
        left -= take
    return steps


def plan_slimgpt(source: LayerSource, calib: torch.Tensor, req: PruneRequest) -> Plan:
    ad = source.adapter
    ratio = float(req.ratio)  # validated once, in run.request_checks.check_request
    L = source.num_layers
    params = {i: ad.layer_param_count(s) for i, s in enumerate(source.shapes)}
    ratios = ipr_ratios(L, params, param_budget(ad, ratio), req.extra.get("ipr", "log"), req.max_layer_ratio)
    plan = Plan(method="slimgpt", tensors=req.tensor_store(), model_type=ad.family, num_layers=L, ratio_requested=ratio,
                options={"ipr": req.extra.get("ipr", "log"), "damp": req.damp, "align": req.align})
    acts = source.start(calib, req.batch_size, req.offload)
    neuron_stage(source, acts, req, plan, ratios, list(range(L)))
    return plan


def neuron_stage(source: LayerSource, acts, req: PruneRequest, plan: Plan, ratios: dict[int, float],
                 layers: list[int], desc: str = "slimgpt") -> None:
    """SlimGPT's sequential OBS over `layers` (the kept ones, in order), each pruned to its
    ratio on the pruned model's inputs; closes `acts`. Shared with the comp-slimgpt hybrid."""
    from ..apply.surgery import slice_layer

    ad = source.adapter
    params = {i: ad.layer_param_count(s) for i, s in enumerate(source.shapes)}

    def prune_in_place(i: int, layer, cur):
        """Collect this layer's Grams on its (already pruned-upstream) inputs, prune it by OBS
        and slice it: the driver then runs the pruned layer for the next one (as published)."""
        s = ad.shape_of(layer)
        out, cols = run_collecting(source, layer, cur, ("o", "down"))
        out.close()
        col_o, col_f = cols["o"], cols["down"]
        n_groups, n_ch = uniform_split(ad, s, ratios.get(i, 0.0) * params[i], req.align)

        def solve() -> tuple[dict, dict]:
            """Both OBS solves of this layer on the summed Grams: (re-fitted tensors, kept units)."""
            tensors, keep = {}, {}
            for role, col, units, n_units, steps in (
                ("o", col_o, units_of_groups(s, ad.head_dim, col_o.gram.device), n_groups, [1] * n_groups),
                ("down", col_f, torch.arange(s.intermediate_size, device=col_f.gram.device).view(-1, 1), n_ch,
                 dynamic_group_sizes(n_ch)),
            ):
                H = hessian(col.gram, req.damp)
                W = weight64(ad, layer, role, H.device)
                gone = obs_remove(W, inverse_spd(H), units, n_units, steps) if n_units else []
                kept_units = [u for u in range(units.shape[0]) if u not in set(gone)]
                keep[role] = kept_units
                if gone:
                    tensors[f"L{i}.{role}.weight"] = W[:, units[kept_units].reshape(-1)].float().cpu()
            return tensors, keep

        tensors, keep = dist.solve_once(solve)  # one rank solves (with its idle peers' cores); all take it
        plan.layers[i] = group_layer_plan(s, keep["o"], keep["down"], {"target_ratio": ratios.get(i, 0.0)})
        plan.tensors.update(tensors)
        with torch.no_grad():
            slice_layer(ad, layer, i, plan, source.shapes[i])
        return None

    done(walk(source, acts, bar(layers, desc, req), edit=prune_in_place), acts)

"""SlimGPT (NeurIPS 2024): layer-wise structured Optimal Brain Surgeon with compensation.

Per layer, on the already-pruned model's inputs (layers pruned in order):
  - H = 2 X Xᵀ + λI for the inputs of `o_proj` and `down_proj` (λ = 0.01 · mean diag);
  - heads: whole KV groups (GQA-valid), chosen by block OBS: the cost of removing unit u
    is tr(W_u [H⁻¹]_uu⁻¹ W_uᵀ) from per-group diagonal blocks of H⁻¹, factored as one
    batch (the paper's grouped Cholesky), one group at a time;
  - FFN: `down_proj` columns by OBS cost ‖W_:,j‖² / [H⁻¹]_jj, removed k at a time with k
    shrinking from 1024 to 8 (Dynamic Group Size);
  - each removal is compensated, W ← W − W_:,S [H⁻¹]_SS⁻¹ [H⁻¹]_S,:, and H⁻¹ updated
    (`obs.py`, shared with search); the compensated weights go into the plan as
    `L{i}.{o,down}.weight`.
Layer ratios follow the Incremental Pruning Ratio: logarithmic in the layer index by
default (the `ipr` option: log, linear or uniform, `SCHEDULES`), over the model's real layer
count, scaled so the total meets the request (clipped at `max_layer_ratio`, excess redistributed).
"""
from __future__ import annotations

import math

import torch

from .. import dist
from ..plan import Plan
from ..calibrate.streaming import LayerSource, done, run_collecting, walk
from .base import PruneRequest, bar, group_layer_plan, param_budget, units_of_groups
from .widths import uniform_split
from .comp import layer_ratios
from .linalg import inverse_spd
from .obs import OBSState, dynamic_group_sizes, hessian, weight64


# The Incremental Pruning Ratio's schedules: layer i's weight (its ratio grows with it). The
# `ipr` option's choices (methods/registry.py) are these names.
SCHEDULES = {"log": lambda i: math.log(i + 2), "linear": lambda i: i + 1.0, "uniform": lambda i: 1.0}


def ipr_ratios(num_layers: int, params: dict[int, int], budget: float, schedule: str, r_max: float) -> dict[int, float]:
    """Incremental Pruning Ratio: weight_i = log(i+2) (log), i+1 (linear) or 1 (uniform)."""
    weight = SCHEDULES[schedule]
    return layer_ratios({i: 1.0 / weight(i) for i in params}, params, budget, r_max)


def plan_slimgpt(source: LayerSource, calib: torch.Tensor, req: PruneRequest) -> Plan:
    ad = source.adapter
    ratio = float(req.ratio)  # validated once, in run.request_checks.check_request
    L = source.num_layers
    params = {i: ad.layer_param_count(s) for i, s in enumerate(source.shapes)}
    ratios = ipr_ratios(L, params, param_budget(ad, ratio), req.ipr, req.max_layer_ratio)
    plan = Plan(method="slimgpt", tensors=req.tensor_store(), model_type=ad.family, num_layers=L, ratio_requested=ratio,
                options={"ipr": req.ipr, "damp": req.damp, "align": req.align})
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
                keep[role] = list(range(units.shape[0]))
                if not n_units:
                    continue
                # the Gram handed over and H made in its storage: inverse_spd holds the only reference
                state = OBSState(weight64(ad, layer, role, col.gram.device),
                                 inverse_spd(hessian(col.take(), req.damp, consume=True)), units)
                if state.remove_steps(n_units, steps):
                    keep[role] = list(state.alive)
                    tensors[f"L{i}.{role}.weight"] = state.W.to("cpu", torch.float32, copy=True)
            return tensors, keep

        tensors, keep = dist.solve_once(solve)  # one rank solves (with its idle peers' cores); all take it
        plan.layers[i] = group_layer_plan(s, keep["o"], keep["down"], {"target_ratio": ratios.get(i, 0.0)})
        plan.tensors.update(tensors)
        with torch.no_grad():
            slice_layer(ad, layer, i, plan, source.shapes[i])
        return None

    done(walk(source, acts, bar(layers, desc, req), edit=prune_in_place), acts)

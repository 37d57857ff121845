"""comp-slimgpt: COMP's layer stage, then SlimGPT's neuron stage.

COMP removes whole layers by iterated block influence (1 - cos(in, out)), with its
protected set scaled to depth; what is left of the parameter budget goes to SlimGPT's
sequential group OBS with compensation (Incremental Pruning Ratio over the kept layers),
on the pruned model's inputs. The two stages are the ones each paper measured best at:
COMP's layer choice, SlimGPT's re-fitted neurons.
"""
from __future__ import annotations

import torch

from ..errors import PlanError
from ..plan import Plan
from ..calibrate.streaming import LayerSource
from .base import PruneRequest, check_layer_count, dense_params, param_budget, remove_layers
from .comp import _auto_layers, scaled_protect
from .slimgpt import ipr_ratios, neuron_stage


def plan_comp_slimgpt(source: LayerSource, calib: torch.Tensor, req: PruneRequest) -> Plan:
    ad = source.adapter
    L = source.num_layers
    ratio = float(req.ratio)  # validated once, in run.request_checks.check_request
    protected = req.protected(L) if req.protect is not None else scaled_protect(L)
    n_remove = _auto_layers(L, ratio) if req.layers in (None, "auto") else int(req.layers)
    check_layer_count(n_remove, L, L - len(protected))
    acts = source.start(calib, req.batch_size, req.offload)
    removed, imp, history = remove_layers(source, acts, n_remove, set(range(L)) - protected, req, req.iterative_layers)
    params = {i: ad.layer_param_count(s) for i, s in enumerate(source.shapes)}
    budget = param_budget(ad, ratio) - sum(params[i] for i in removed)
    if budget < -0.01 * dense_params(ad):
        acts.close()
        raise PlanError(f"removing {n_remove} layers already removes more than --ratio {ratio}; lower --layers")
    kept = [i for i in range(L) if i not in removed]
    ratios = ipr_ratios(len(kept), {i: params[i] for i in kept}, max(budget, 0.0), req.ipr, req.max_layer_ratio)
    plan = Plan(method="comp-slimgpt", tensors=req.tensor_store(), model_type=ad.family, num_layers=L,
                removed_layers=sorted(removed), ratio_requested=ratio,
                options={"layers_removed": n_remove, "protect": sorted(protected), "ipr": req.ipr, "damp": req.damp,
                         "align": req.align, "iterative_layers": req.iterative_layers})
    neuron_stage(source, acts, req, plan, ratios, kept, desc="comp-slimgpt neuron stage")
    plan.stats = {"layer_importance": {str(k): v for k, v in sorted(imp.items())}, "removal_history": history,
                  "layer_ratio_targets": {str(k): v for k, v in ratios.items()}}
    return plan

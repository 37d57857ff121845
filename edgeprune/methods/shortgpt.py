"""ShortGPT: remove the layers of lowest block influence 1 - cos(in, out), computed once."""
from __future__ import annotations

import torch

from ..plan import Plan
from ..calibrate.streaming import LayerSource
from .base import PruneRequest, check_layer_count, layers_for_ratio, remove_layers


def plan_shortgpt(source: LayerSource, calib: torch.Tensor, req: PruneRequest) -> Plan:
    ad = source.adapter
    L = source.num_layers
    n = int(req.layers) if req.layers not in (None, "auto") else layers_for_ratio(ad, float(req.ratio))
    # ShortGPT as published considers every layer; --protect still applies if given explicitly.
    protected = req.protected(L)
    check_layer_count(n, L, L - len(protected))
    acts = source.start(calib, req.batch_size, req.offload)
    removed, imp, history = remove_layers(source, acts, n, set(range(L)) - protected, req, iterative=False)
    acts.close()
    plan = Plan(method="shortgpt", model_type=ad.family, num_layers=L, removed_layers=sorted(removed),
                ratio_requested=req.ratio, options={"layers_removed": n})
    plan.stats = {"layer_importance": {str(k): v for k, v in history[0]["importance"].items()}}
    return plan

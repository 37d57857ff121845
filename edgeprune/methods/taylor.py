"""LLM-Pruner-style first-order Taylor group importance (without the LoRA recovery).

The calibration loss is back-propagated through the WHOLE model once, so this method is
the high-memory reference point: it holds the full model plus its gradients (no layer
streaming), and its peak memory is measured and reported like every other method's.
A group's importance is Σ |w · ∂L/∂w| over its weights: an FFN channel is its gate and up
rows and its down column; a KV group is its q/k/v rows and o columns. Every layer is
pruned by the requested ratio (whole KV groups, then FFN channels).
"""
from __future__ import annotations

import torch

from .. import dist
from ..plan import Plan
from ..calibrate.streaming import LayerSource
from .base import PruneRequest, bar, scored_layer_plan
from .widths import uniform_split


def _full_model(source: LayerSource):
    model = getattr(source, "model", None)
    if model is None:
        from ..io.checkpoint import load

        model = load(source.model_dir, device=source.device)
    return model


def plan_taylor(source: LayerSource, calib: torch.Tensor, req: PruneRequest) -> Plan:
    ad = source.adapter
    ratio = float(req.ratio)  # validated once, in run.request_checks.check_request
    model = _full_model(source)
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    mine = calib[dist.shard(calib.shape[0])]  # this rank's windows; the loss is weighted by the whole set
    for s in bar(range(0, mine.shape[0], req.batch_size), "taylor gradients", req):
        ids = mine[s : s + req.batch_size].to(source.device)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss * ids.shape[0] / calib.shape[0]
        loss.backward()
    for p in model.parameters():  # the gradient of the whole set's loss: the sum of the ranks'
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce_sum(p.grad)
    plan = Plan(method="taylor", model_type=ad.family, num_layers=source.num_layers, ratio_requested=ratio,
                options={"align": req.align, "gradient": "full model, first order"})
    hd = ad.head_dim
    with torch.no_grad():
        for i, layer in enumerate(ad.layers(model)):
            s = ad.shape_of(layer)
            n_rep = s.num_heads // s.num_kv_heads
            t = {r: (ad.module(layer, r).weight * ad.module(layer, r).weight.grad).abs().double()
                 for r in ("q", "k", "v", "o", "gate", "up", "down")}
            ch = t["gate"].sum(1) + t["up"].sum(1) + t["down"].sum(0)
            grp = (t["q"].view(s.num_kv_heads, -1).sum(1) + t["k"].view(s.num_kv_heads, -1).sum(1)
                   + t["v"].view(s.num_kv_heads, -1).sum(1)
                   + t["o"].view(-1, s.num_kv_heads, n_rep * hd).sum((0, 2)))
            g, c = uniform_split(ad, s, ratio * ad.layer_param_count(s), req.align)
            plan.layers[i] = scored_layer_plan(s, grp, ch, g, c, {"target_ratio": ratio})
    model.zero_grad(set_to_none=True)
    return plan

"""Magnitude: the same ratio in every layer, units ranked by weight norms alone.

An FFN channel scores ||gate[j,:]|| + ||up[j,:]|| + ||down[:,j]||; a KV group scores the
summed norms of its q/k/v rows and o columns. No calibration data is read. (Wanda-sp and
COMP's diagonal reading weight these by activations; they are different scores.)
"""
from __future__ import annotations

import torch

from ..plan import Plan
from ..calibrate.streaming import LayerSource
from .base import PruneRequest, bar, scored_layer_plan
from .widths import uniform_split


def plan_magnitude(source: LayerSource, calib: torch.Tensor | None, req: PruneRequest) -> Plan:
    ad = source.adapter
    ratio = float(req.ratio)  # validated once, in run.request_checks.check_request
    L = source.num_layers
    hd = ad.head_dim
    plan = Plan(method="magnitude", model_type=ad.family, num_layers=L, ratio_requested=ratio, options={"align": req.align})
    for i in bar(range(L), "magnitude", req):
        layer = source.layer(i)
        s = ad.shape_of(layer)
        n_rep = s.num_heads // s.num_kv_heads
        target = ratio * ad.layer_param_count(s)
        g, c = uniform_split(ad, s, target, req.align)
        w = {r: ad.module(layer, r).weight.detach().float() for r in ("q", "k", "v", "o", "gate", "up", "down")}
        ch = w["gate"].norm(dim=1) + w["up"].norm(dim=1) + w["down"].norm(dim=0)
        q = w["q"].view(s.num_kv_heads, n_rep * hd, -1).flatten(1).norm(dim=1)
        o = w["o"].view(w["o"].shape[0], s.num_kv_heads, n_rep * hd).transpose(0, 1).flatten(1).norm(dim=1)
        k = w["k"].view(s.num_kv_heads, -1).norm(dim=1)
        v = w["v"].view(s.num_kv_heads, -1).norm(dim=1)
        plan.layers[i] = scored_layer_plan(s, q + k + v + o, ch, g, c, {"target_ratio": ratio})
    return plan

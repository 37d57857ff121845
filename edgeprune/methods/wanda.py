"""Wanda-sp: the same ratio in every layer, an input channel scored by Σ_i |W_ij| · ‖X_j‖₂.

An FFN channel is scored on `down_proj`'s column; a KV group sums its `o_proj` columns.
It differs from magnitude (no activations) and from COMP's diagonal reading
(‖W_:,j‖₂ · ‖X_j‖₂, i.e. √A_jj), so the three are kept distinct.
"""
from __future__ import annotations

import torch

from ..plan import Plan
from ..calibrate.streaming import LayerSource, stream_dense
from .base import PruneRequest, bar, scored_layer_plan
from .widths import uniform_split


def wanda_scores(weight: torch.Tensor, sq_norm: torch.Tensor) -> torch.Tensor:
    return weight.abs().double().sum(0) * sq_norm.to(torch.float64).sqrt()


def plan_wanda_sp(source: LayerSource, calib: torch.Tensor, req: PruneRequest) -> Plan:
    ad = source.adapter
    ratio = float(req.ratio)  # validated once, in run.request_checks.check_request
    L = source.num_layers
    plan = Plan(method="wanda-sp", model_type=ad.family, num_layers=L, ratio_requested=ratio, options={"align": req.align})
    for i, layer, cols in bar(stream_dense(source, calib, ("o", "down"), req.batch_size, req.offload), "wanda-sp", req, total=L):
        s = ad.shape_of(layer)
        col_o, col_f = cols["o"], cols["down"]
        g, c = uniform_split(ad, s, ratio * ad.layer_param_count(s), req.align)
        # scored on the CPU (vectors only): the weights come off the activations' device
        so = wanda_scores(ad.module(layer, "o").weight.detach().cpu(), col_o.sq_norm.cpu()).view(s.num_kv_heads, -1).sum(1)
        sf = wanda_scores(ad.module(layer, "down").weight.detach().cpu(), col_f.sq_norm.cpu())
        plan.layers[i] = scored_layer_plan(s, so, sf, g, c, {"target_ratio": ratio})
    return plan

"""FLAP (An et al., AAAI 2024): fluctuation metric, adaptive structure, bias compensation.

  - score of input channel j of `o_proj` / `down_proj`:
        S_j = Var_n(X[j, n]) · ||W[:, j]||²
    (a channel whose input barely fluctuates is nearly a constant, which a bias can carry);
    the authors' code squares the attention channels' scores (S_j²), and so do we;
  - adaptive structure (FLAP's "AL-AM"): channel scores are standardised per layer and
    module (over that layer's channels); a KV group's score is the MEAN of its query heads'
    standardised `o_proj` channel scores (whole groups: GQA-valid), as the authors' code
    averages a head's 128 channels. Standardising a handful of group sums instead (what
    edgeprune did first) puts the weakest group of every layer near z = -1.2, below most
    FFN channels, so attention went first and too much of it; this was the difference we
    found against the authors' code (benchmarks in the README). Units are then ranked globally;
    the lowest go until the parameter target is met, each costing its real parameter
    count (a group costs its q/k/v rows and o columns);
  - bias compensation: the removed channels' mean contribution W[:, removed] · mean(X[removed])
    becomes an output bias of `o_proj` / `down_proj`. Llama has no such bias, so the pruned
    checkpoint records it (`added_bias` per layer) and save/ONNX/GGUF carry it.

One streamed pass over the dense model collects the statistics (the paper scores every
layer on the dense model's inputs); a second, weight-only pass writes the biases. Layers
are protected only when `--protect` is given explicitly (FLAP prunes every layer); no layer loses more than `max_layer_ratio` of its
parameters, and every layer keeps at least one KV group and one FFN channel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PlanError
from ..plan import Plan
from ..calibrate.streaming import LayerSource, stream_dense
from .base import PruneRequest, bar, dense_params, group_layer_plan, param_budget


@dataclass
class _LayerStats:
    """What the global ranking and the compensation need from one layer (vectors only)."""

    group_scores: torch.Tensor  # (num_kv_heads,): mean standardised channel score of each group
    channel_scores: torch.Tensor  # (intermediate_size,): raw fluctuation scores
    mean_o: torch.Tensor  # mean input of o_proj (num_heads * head_dim,)
    mean_down: torch.Tensor  # mean input of down_proj (intermediate_size,)


def fluctuation_scores(weight: torch.Tensor, gram_diag: torch.Tensor, mean: torch.Tensor, count: int) -> torch.Tensor:
    """Var(X_j) · ||W[:, j]||² per input channel (sample variance over calibration tokens)."""
    n = max(count, 2)
    var = (gram_diag.double() - count * mean.double() ** 2) / (n - 1)
    return var.clamp_min(0) * weight.double().pow(2).sum(0)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std within one layer's module, so attention and FFN scores share a scale."""
    if x.numel() < 2:
        return torch.zeros_like(x)
    return (x - x.mean()) / x.std().clamp_min(1e-12)


def _channel_blocks(scores: torch.Tensor, align: int) -> list[list[int]]:
    """FFN channels in removal order, grouped so that every prefix leaves a kept width that is
    a multiple of `align` (the first block takes the remainder). align 1: one channel each."""
    order = torch.argsort(scores, stable=True).tolist()
    f = len(order)
    if align <= 1 or f < 2 * align:  # too narrow to align (aligned_keep says the same)
        return [[j] for j in order]
    first = f % align or align
    blocks = [order[:first]] + [order[k:k + align] for k in range(first, f, align)]
    return blocks[:-1]  # keep at least one aligned block


def rank_globally(ad, scores: dict[int, tuple[torch.Tensor, torch.Tensor]], req: PruneRequest, ratio: float
                  ) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """FLAP's global ranking from each layer's (group scores, raw channel scores) alone: the
    KV groups and FFN channels it removes per layer. `search` seeds with it (seeds.py) from the
    scores its ladder pass kept, without FLAP's compensation statistics."""
    return _select(ad, {i: _LayerStats(g, c, torch.zeros(0), torch.zeros(0)) for i, (g, c) in scores.items()}, req, ratio)


def _select(ad, stats: dict[int, _LayerStats], req: PruneRequest, ratio: float
            ) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """Global greedy on standardised scores: lowest first, until the removed parameters
    (net of the biases compensation adds) reach `ratio` of the non-embedding parameters.
    With --align, FFN channels go in blocks that keep each width a multiple of it."""
    shapes = ad.layer_shapes()
    d = ad.hidden_size
    units: list[tuple[float, int, str, list[int]]] = []
    for i, st in stats.items():
        units += [(float(z), i, "g", [j]) for j, z in enumerate(st.group_scores)]
        zc = standardise(st.channel_scores)
        units += [(float(zc[b].mean()), i, "c", b) for b in _channel_blocks(st.channel_scores, req.align)]
    units.sort(key=lambda u: (u[0], u[1], u[2], u[3][0]))
    target = param_budget(ad, ratio)
    drop_g: dict[int, set[int]] = {i: set() for i in stats}
    drop_c: dict[int, set[int]] = {i: set() for i in stats}
    removed_in_layer = {i: 0.0 for i in stats}
    native = set(ad.native_bias_roles())
    blocked: set[int] = set()  # layers whose FFN removal stopped
    slack = ad.ffn_channel_param_count() * max(1, req.align)  # overshoot accepted at the end
    removed = 0.0
    for _, i, kind, idx in units:
        if removed >= target:
            break
        s = shapes[i]
        if kind == "g":
            if len(drop_g[i]) + 1 >= s.num_kv_heads:
                continue
            cost = ad.head_group_param_count(s.num_heads // s.num_kv_heads)
            first, role = not drop_g[i], "o"
        else:
            if i in blocked or len(drop_c[i]) + len(idx) >= s.intermediate_size:
                blocked.add(i)  # a skipped block would leave a gap in the layer's removal order
                continue
            cost = ad.ffn_channel_param_count() * len(idx)
            first, role = not drop_c[i], "down"
        if first and role not in native:
            cost -= d  # the compensation bias this module gains
        if removed_in_layer[i] + cost > req.max_layer_ratio * ad.layer_param_count(s):
            if kind == "c":
                blocked.add(i)
            continue
        if kind == "g" and removed + cost > target + slack:
            continue  # a whole KV group would overshoot the ratio: let channels finish it
        (drop_g if kind == "g" else drop_c)[i].update(idx)
        removed_in_layer[i] += cost
        removed += cost
    if removed < target - 0.005 * dense_params(ad):
        raise PlanError(
            f"--ratio {ratio} is impossible for flap: with every layer keeping one KV group, one FFN channel "
            f"and at most {req.max_layer_ratio} of its parameters removed, at most {removed / dense_params(ad):.3f} "
            "can go; lower --ratio or change --protect"
        )
    return drop_g, drop_c


def plan_flap(source: LayerSource, calib: torch.Tensor, req: PruneRequest) -> Plan:
    ad = source.adapter
    ratio = float(req.ratio)  # validated once, in run.request_checks.check_request
    L = source.num_layers
    hd = ad.head_dim
    # Like ShortGPT, FLAP prunes every layer unless the user names layers to protect.
    protected = req.protected(L)
    plan = Plan(method="flap", tensors=req.tensor_store(), model_type=ad.family, num_layers=L, ratio_requested=ratio,
                options={"align": req.align, "structure": "AL-AM", "protect": sorted(protected),
                         "max_layer_ratio": req.max_layer_ratio})
    stats: dict[int, _LayerStats] = {}
    for i, layer, cols in bar(stream_dense(source, calib, ("o", "down"), req.batch_size, req.offload),
                              "flap (fluctuation)", req, total=L):
        if i in protected:
            continue
        s = ad.shape_of(layer)
        co, cd = cols["o"], cols["down"]
        so = fluctuation_scores(ad.module(layer, "o").weight.detach().cpu(), co.sq_norm.cpu(), co.mean.cpu(), co.count)
        sd = fluctuation_scores(ad.module(layer, "down").weight.detach().cpu(), cd.sq_norm.cpu(), cd.mean.cpu(), cd.count)
        groups = standardise(so.pow(2)).view(s.num_kv_heads, -1).mean(1)  # the authors' squared attention metric
        stats[i] = _LayerStats(groups, sd, co.mean.cpu(), cd.mean.cpu())

    drop_g, drop_c = _select(source.adapter, stats, req, ratio)
    shapes = ad.layer_shapes()
    for i in bar(sorted(stats), "flap (bias compensation)", req):
        if not drop_g[i] and not drop_c[i]:
            continue
        s = shapes[i]
        n_rep = s.num_heads // s.num_kv_heads
        kv_keep = [j for j in range(s.num_kv_heads) if j not in drop_g[i]]
        ffn_keep = [j for j in range(s.intermediate_size) if j not in drop_c[i]]
        plan.layers[i] = group_layer_plan(s, kv_keep, ffn_keep, {
            "kv_groups_removed": len(drop_g[i]), "ffn_channels_removed": len(drop_c[i]),
        })
        layer = source.layer(i)  # weights only: the compensation needs the removed columns
        for role, dropped, mean, width in (("o", drop_g[i], stats[i].mean_o, n_rep * hd),
                                           ("down", drop_c[i], stats[i].mean_down, 1)):
            if not dropped:
                continue
            lin = ad.module(layer, role)
            cols = torch.tensor([u * width + k for u in sorted(dropped) for k in range(width)], dtype=torch.long)
            w = lin.weight.detach().cpu().double()
            bias = w[:, cols] @ mean.double()[cols]
            if lin.bias is not None:
                bias += lin.bias.detach().cpu().double()
            plan.tensors[f"L{i}.{role}.bias"] = bias.float()
        new_shape = plan.result_shape(i, ad)
        plan.layers[i].stats["achieved_ratio"] = 1 - ad.layer_param_count(new_shape) / ad.layer_param_count(s)
    return plan

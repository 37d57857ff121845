"""search's last stage: the chosen allocation re-fitted layer by layer on the PRUNED model's
inputs over all calibration windows (as SlimGPT), with the ladder's OBS moves, landing on the
budget to the channel; resumable per layer. The FFN starts from the channels the ladder kept
one rung above the chosen one (`jump_start`, `obs.jump`: that OBS state in one solve), so only
the last rung's step is chosen afresh and no full-width inverse is made.
"""
from __future__ import annotations

import torch

from .. import dist
from ..calibrate.streaming import LayerSource, done, run_collecting, walk
from ..plan import LayerPlan, Plan
from .allocate import DROP, Alloc, Ladders
from .base import PruneRequest, bar
from .ladder import attention_path, head_cols, initial_heads
from .linalg import inverse_spd
from .obs import OBSState, dynamic_group_sizes, hessian, jump, weight64


def final_counts(lad: Ladders, alloc: Alloc, budget: float, per_ch: int, align: int,
                 tol: float | None = None) -> dict[int, int]:
    """FFN channels to remove per kept layer: the rungs', less what overshoots the budget
    (handed back, in whole --align steps, by the layers cut deepest). An allocation at or
    under the budget keeps its rungs, and so does one under a time budget (its widths are the
    ones the latency model priced; a width between rungs was never predicted). With `tol`: when
    what is left over exceeds it and one more step lands nearer (under the budget), that step is
    handed back too."""
    counts = {i: len(lad.ffn(i)[0]["keep"]) - len(lad.ffn(i)[c[1]]["keep"]) for i, c in enumerate(alloc) if c != DROP}
    step = max(1, align)
    over = lad.total(alloc) - budget
    if over <= 0 or lad.costs is not None:
        return counts
    for i in sorted(counts, key=lambda i: (-counts[i], i)):
        give = min(counts[i], int(over // (per_ch * step)) * step)
        counts[i] -= give
        over -= give * per_ch
    if tol is not None and over > tol and per_ch * step - over < over:
        deepest = max((i for i in counts if counts[i] >= step), key=lambda i: (counts[i], -i), default=None)
        if deepest is not None:
            counts[deepest] -= step
    return counts


def final_stage(source: LayerSource, calib: torch.Tensor, req: PruneRequest, plan: Plan, lad: Ladders,
                alloc: Alloc, budget: float, tol: float | None = None) -> None:
    """Re-fit the chosen allocation on the pruned model's inputs, layer by layer (resumable)."""
    from ..apply.surgery import slice_layer

    ad = source.adapter
    counts = final_counts(lad, alloc, budget, ad.ffn_channel_param_count(), req.align, tol)

    def prune_in_place(i: int, layer, cur):
        got = req.state.get(i) if req.state is not None else None
        if got is None:
            got = refit_layer(source, i, layer, cur, lad.attn(i)[alloc[i][0]]["moves"], counts[i], req,
                              jump_start(lad, i, alloc[i][1], counts[i]))
            got[0].stats.update({"attn_rung": alloc[i][0], "ffn_rung": alloc[i][1], "proxy_error": lad.error(i, alloc[i])})
            if req.state is not None:
                req.state.put(i, *got)
        plan.layers[i], tensors = got
        plan.tensors.update(tensors)
        with torch.no_grad():
            slice_layer(ad, layer, i, plan, source.shapes[i])
        return None

    removed = sum(lad.removed(i, c) if c == DROP else lad.attn(i)[c[0]]["removed"] + counts[i] * ad.ffn_channel_param_count()
                  for i, c in enumerate(alloc))
    if tol is not None and abs(removed - budget) > tol:  # the aligned widths allow nothing nearer (allocate.land)
        plan.stats["nearest_reachable"] = True
    acts = source.start(calib, req.batch_size, req.offload)
    kept = [i for i, c in enumerate(alloc) if c != DROP]
    done(walk(source, acts, bar(kept, "search: final re-fit", req), edit=prune_in_place), acts)


def jump_start(lad: Ladders, i: int, rung: int, n_ch: int) -> list[int] | None:
    """The FFN channels the re-fit starts from: those kept by the deepest rung above the chosen
    one that removes at most `n_ch` (None: from the full width). The ladder chose them on the
    dense inputs; the re-fit reaches their state in one solve (`obs.jump`) and chooses only the
    last rung's step afresh on the pruned inputs."""
    rungs = lad.ffn(i)
    width = len(rungs[0]["keep"])
    return next((rungs[r]["keep"] for r in range(rung - 1, 0, -1) if width - len(rungs[r]["keep"]) <= n_ch), None)


def refit_layer(source: LayerSource, i: int, layer, cur, moves: list[str], n_ch: int, req: PruneRequest,
                start: list[int] | None = None):
    """One layer's attention moves and FFN cut on these inputs: the attention chosen afresh by OBS,
    the FFN from the channels `start` keeps (`jump_start`; None: the full width) on. The
    statistics are every rank's; the solve runs once (`dist.solve_once`, on the cores of the
    ranks that would otherwise repeat it) and every rank takes its answer."""
    ad = source.adapter
    s = ad.shape_of(layer)
    out, cols = run_collecting(source, layer, cur, ("o", "down"))
    out.close()

    def solve() -> tuple[LayerPlan, dict[str, torch.Tensor]]:
        tensors: dict[str, torch.Tensor] = {}
        heads = initial_heads(s)
        if moves:
            W = weight64(ad, layer, "o", cols["o"].gram.device)
            Hinv = inverse_spd(hessian(cols["o"].take(), req.damp, consume=True))
            for _, _, heads in attention_path(W, Hinv, ad, s, forced=moves):
                pass
            del Hinv  # not alive through the FFN's solve
        kept = sorted(h for v in heads.values() for h in v)
        if moves:
            tensors[f"L{i}.o.weight"] = W[:, head_cols(kept, ad.head_dim, W.device).reshape(-1)].float().cpu()
        keep_f = list(range(s.intermediate_size))
        if n_ch:
            dev = cols["down"].gram.device
            first = start if start is not None else keep_f
            if start is None:  # the Gram handed over unnamed: H is made in its storage and inverted there
                state = OBSState(weight64(ad, layer, "down", dev),
                                 inverse_spd(hessian(cols["down"].take(), req.damp, consume=True)),
                                 torch.arange(len(first), device=dev).view(-1, 1))
            else:
                Wk, Hinv = jump(weight64(ad, layer, "down", dev), hessian(cols["down"].take(), req.damp, consume=True), first)
                state = OBSState(Wk, Hinv, torch.arange(len(first), device=dev).view(-1, 1))
                del Wk, Hinv
            left = n_ch - (s.intermediate_size - len(first))
            if left < 0:  # jump_start never starts past the count: a bug (the CLI's internal-error path), not an input
                raise RuntimeError(f"layer {i}'s re-fit starts {-left} channels past its cut")
            state.remove_steps(left, dynamic_group_sizes(left))
            keep_f = [first[j] for j in state.alive]
            tensors[f"L{i}.down.weight"] = state.W.to("cpu", torch.float32, copy=True)
        return LayerPlan(ffn_keep=keep_f, heads_keep=kept, kv_keep=sorted(heads), stats={}), tensors

    return dist.solve_once(solve)

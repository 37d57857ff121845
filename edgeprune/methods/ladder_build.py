"""search's ladder pass: every layer's rungs on the dense model's inputs, the solves spread
across ranks.

The statistics of a layer (its input Grams, norms, cosine and FLAP terms) are sums over every
rank's windows and are gathered layer by layer as the driver streams. The solves (the
attention path and the FFN OBS down to 1/8 of the width: nearly all of the pass's time at real
width) need only those sums, and a layer's ladder does not change the next layer's inputs
(they are dense). So in a distributed run each layer's solve has one owner, the least loaded
rank by its cost (∝ width³ of both modules), which keeps the layer's weights and Grams in its
private work directory while the stream goes on; then every rank solves its own layers at the
same time, and each finished ladder (rungs and compensated weights, exactly as stored) is
broadcast from its owner, so every rank's store holds the same ladders as one process's.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .. import dist
from ..calibrate.streaming import LayerSource, done, run_collecting, walk
from .base import PruneRequest, bar, cosine_importance
from .ladder import LadderStore, attention_rungs, ffn_rungs, ladder_record
from .seeds import layer_stats
from .linalg import inverse_spd
from .obs import hessian, weight64


def build_ladders(source: LayerSource, windows: torch.Tensor, req: PruneRequest, store: LadderStore) -> list[dict]:
    """Every layer's ladder, on the dense model's inputs (kept from an earlier run if there)."""
    ad = source.adapter
    records: dict[int, dict] = {}
    pending: dict[int, tuple[int, dict]] = {}  # layer -> (owner rank, the record's rank-independent part)
    load = [0.0] * dist.world()
    spool = Path(tempfile.mkdtemp(prefix="edgeprune-ladder-jobs-", dir=store.dir))

    def edit(i: int, layer, cur):
        rec = store.record(i)
        out, cols = run_collecting(source, layer, cur, ("o", "down"), full=rec is None)
        if rec is not None:
            records[i] = rec
            return out
        s = ad.shape_of(layer)
        norm, drop = _norms(cur, out)
        part = {"shape": s, "norm": norm, "drop": drop, "importance": cosine_importance(cur, out),
                "seed_stats": layer_stats(ad, layer, cols)}  # what the portfolio's rules read (seeds.py)
        dev = cols["o"].gram.device  # the solves run where the statistics are (--device)
        grams = {"o": cols["o"].take(), "down": cols["down"].take()}  # handed over: the FFN solve consumes its Gram
        if dist.world() == 1:  # one process: solved at once (and resumable layer by layer)
            records[i] = _finish(ad, i, part, _solve(ad, i, part, lambda r: weight64(ad, layer, r, dev), grams, req, store))
            store.put_record(i, records[i])
            return out
        owner = min(range(len(load)), key=lambda r: (load[r], r))  # every rank computes the same assignment
        load[owner] += float(s.intermediate_size) ** 3 + float(s.num_heads * ad.head_dim) ** 3
        if owner == dist.rank():
            torch.save({"grams": grams, **{r: weight64(ad, layer, r, dev) for r in grams}}, spool / f"L{i}.pt")
        pending[i] = (owner, part)
        return out

    try:
        acts = source.start(windows, req.batch_size, req.offload)
        done(walk(source, acts, bar(range(source.num_layers), "search: ladders", req), edit=edit), acts)
        mine = {}
        for i, (owner, part) in pending.items():
            if owner == dist.rank():
                job = torch.load(spool / f"L{i}.pt")
                mine[i] = _solve(ad, i, part, job.__getitem__, job["grams"], req, store)
                del job
        for i, (owner, part) in sorted(pending.items()):
            records[i] = _finish(ad, i, part, _share(store, i, owner, mine.get(i)))
            store.put_record(i, records[i])
    finally:
        import shutil

        shutil.rmtree(spool, ignore_errors=True)
    return [records[i] for i in range(source.num_layers)]


def _solve(ad, i: int, part: dict, weight, grams: dict, req: PruneRequest, store: LadderStore) -> tuple[list, list]:
    """One layer's attention and FFN rungs (`weight(role)`: the float64 weight OBS edits, made
    when needed); each rung's weight goes to the store as it is made."""
    sink = lambda key, t: store.put_tensor(i, key, t)  # noqa: E731
    attn = attention_rungs(weight("o"), hessian(grams["o"], req.damp), ad, part["shape"], part["norm"], req.align, sink)
    ffn = ffn_rungs(weight("down"), inverse_spd(hessian(grams.pop("down"), req.damp, consume=True)), ad, part["norm"],
                    req.align, sink)
    return attn, ffn


def _share(store: LadderStore, i: int, owner: int, solved: tuple[list, list] | None) -> tuple[list, list]:
    """The owner's rungs of layer i and their stored weights, on every rank's store."""
    attn, ffn = dist.broadcast_object(solved, src=owner)
    keys = [f"attn{k}" for k in range(1, len(attn))] + [f"ffn{k}" for k in range(1, len(ffn))]
    for key in keys:
        t = dist.broadcast_object(store.stored(i, key) if dist.rank() == owner else None, src=owner)
        if dist.rank() != owner:
            store.put_stored(i, key, t)
    return attn, ffn


def _finish(ad, i: int, part: dict, solved: tuple[list, list]) -> dict:
    attn, ffn = solved
    return {**ladder_record(ad, part["shape"], attn, ffn, part["drop"] / part["norm"]), "importance": part["importance"],
            "seed_stats": part["seed_stats"]}


def _norms(x_acts, y_acts) -> tuple[float, float]:
    """Σ‖y‖² and Σ‖y − x‖² over every token (the layer's output and its whole contribution)."""
    norm = drop = 0.0
    for x, y in zip(x_acts, y_acts):
        norm += float(y.double().pow(2).sum())
        drop += float((y.double() - x.double()).pow(2).sum())
    norm, drop = dist.sum_floats(norm, drop)  # every rank's tokens
    return max(norm, 1e-30), drop

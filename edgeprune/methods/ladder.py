"""Candidate ladders for the global search: every layer pruned at several keep levels.

For one decoder layer, from the input Grams of `o_proj` and `down_proj` and the layer's
input/output, three kinds of candidate, each a *rung* (kept units, parameters removed,
error):
  - attention: one path from dense down to (at most) 1/8 of the query heads. Each step is
    the cheaper, per parameter saved, of two OBS moves: one query head out of every kept KV
    group (the same count per group keeps GQA valid; llama.cpp's deci and ORT GenAI read
    per-layer head counts), or one whole KV group (its k/v rows go too, so the KV cache
    shrinks). o_proj is compensated after each move (SlimGPT's group OBS);
  - FFN: down_proj channels removed by OBS with dynamic group sizes, a rung every 1/16 of
    the width (aligned to --align), down to 1/8 of it;
  - the whole layer dropped (ShortGPT's unit, so layer-removal plans are inside the space).
An error is the rise of ‖ΔY‖² summed over calibration tokens, for the module's contribution
to the residual stream (half the OBS cost; ‖layer(x) − x‖² for a dropped layer), divided by
the dense layer output's ‖Y‖², one scale for every candidate of a layer. Each rung's weights
go to disk as soon as they exist: at 8B width a layer's ladder is about 2.5 GB in float32.

Why OBS and not COMP's mask re-fit here: for a given kept set OBS compensation is the
least-squares optimum over every kept weight of the row, and COMP's fit (one scale per kept
column) is a special case of it, so its error can only be equal or larger.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from .. import dist
from ..models import DecoderAdapter, LayerShape
from ..plan import LayerPlan, Plan
from .allocate import Choice, Ladders
from .widths import MAX_MODULE_CUT, aligned_keep
from ..io.atomic import write_text, write_with
from ..io.schema import LADDER_VERSION  # noqa: F401  (the record's format lives with its schema)
from .linalg import inverse_spd
from .obs import OBSState, dynamic_group_sizes, obs_compensate, set_cost, unit_costs

FFN_LEVELS = 16  # an FFN rung every 1/16 of the width
Sink = Callable[[str, torch.Tensor], None]  # takes each rung's compensated weight as it is made (to disk)


@dataclass
class Rung:
    removed: int  # parameters removed from the layer by this module's cut
    error: float  # normalised rise of ‖ΔY‖²
    keep: list[int]  # kept query heads (attention) or FFN channels, original indices
    kv_keep: list[int] | None = None  # attention: kept KV groups
    moves: list[str] = field(default_factory=list)  # attention: the path ("head"/"group") to here
    aligned: bool = True  # the kept width is a multiple of --align (where the dense one is)


def head_cols(heads: list[int], hd: int, device) -> torch.Tensor:
    return torch.stack([torch.arange(h * hd, (h + 1) * hd, device=device) for h in heads])


def initial_heads(shape: LayerShape) -> dict[int, list[int]]:
    """Query heads by KV group, dense."""
    n_rep = shape.num_heads // shape.num_kv_heads
    return {g: list(range(g * n_rep, (g + 1) * n_rep)) for g in range(shape.num_kv_heads)}


def attention_path(W: torch.Tensor, Hinv: torch.Tensor, ad: DecoderAdapter, shape: LayerShape,
                   forced: list[str] | None = None) -> Iterator[tuple[str, float, dict[int, list[int]]]]:
    """OBS moves on o_proj (W, H⁻¹ updated in place): yields (move, cost, kept heads by group).
    With `forced`, replays exactly those move types (choosing the units afresh)."""
    hd = ad.head_dim
    heads = initial_heads(shape)
    dense = ad.layer_param_count(shape)

    def saved(nh: int, nkv: int) -> int:
        return dense - ad.layer_param_count(LayerShape(shape.intermediate_size, nh, nkv, shape.added_bias))

    step = 0
    while forced is None or step < len(forced):
        want = forced[step] if forced is not None else None
        step += 1
        nh = sum(len(v) for v in heads.values())
        opts: dict[str, tuple[list[int], float, int]] = {}
        if all(len(v) > 1 for v in heads.values()) and want in (None, "head"):
            alive = sorted(h for v in heads.values() for h in v)
            c = dict(zip(alive, unit_costs(W, Hinv, head_cols(alive, hd, W.device)).tolist()))
            pick = [min(v, key=lambda h: (c[h], h)) for _, v in sorted(heads.items())]
            cost = set_cost(W, Hinv, head_cols(pick, hd, W.device).reshape(-1))
            opts["head"] = (pick, cost, saved(nh - len(heads), len(heads)) - saved(nh, len(heads)))
        if len(heads) > 1 and want in (None, "group"):
            gs = sorted(heads)
            cols = torch.stack([head_cols(heads[g], hd, W.device).reshape(-1) for g in gs])
            c = unit_costs(W, Hinv, cols)
            j = int(torch.argmin(c))
            opts["group"] = (heads[gs[j]], float(c[j]), saved(nh - len(heads[gs[j]]), len(heads) - 1) - saved(nh, len(heads)))
        if not opts:
            return
        move = min(opts, key=lambda m: (opts[m][1] / opts[m][2], m))
        pick = opts[move][0]
        cost = obs_compensate(W, Hinv, head_cols(pick, hd, W.device).reshape(-1))
        gone = set(pick)
        heads = {g: [h for h in v if h not in gone] for g, v in heads.items()}
        heads = {g: v for g, v in heads.items() if v}
        yield move, cost, heads


def attention_rungs(W: torch.Tensor, H: torch.Tensor, ad: DecoderAdapter, shape: LayerShape, norm: float,
                    align: int, sink: Sink) -> list[Rung]:
    """The attention ladder of one layer; the compensated o_proj of every rung goes to `sink`."""
    dense = ad.layer_param_count(shape)
    width_ok = (shape.num_heads * ad.head_dim) % align == 0 if align > 1 else False
    rungs = [Rung(0, 0.0, list(range(shape.num_heads)), list(range(shape.num_kv_heads)))]
    err, moves = 0.0, []
    for move, cost, heads in attention_path(W, inverse_spd(H), ad, shape):
        err += cost / 2
        moves.append(move)
        kept = sorted(h for v in heads.values() for h in v)
        if len(kept) < shape.num_heads * (1 - MAX_MODULE_CUT):
            break
        removed = dense - ad.layer_param_count(LayerShape(shape.intermediate_size, len(kept), len(heads), shape.added_bias))
        aligned = not width_ok or (len(kept) * ad.head_dim) % align == 0
        rungs.append(Rung(removed, err / norm, kept, sorted(heads), list(moves), aligned))
        sink(f"attn{len(rungs) - 1}", W[:, head_cols(kept, ad.head_dim, W.device).reshape(-1)].float().cpu())
    return rungs


def ffn_counts(f: int, align: int) -> list[int]:
    """Channel counts removed at each FFN rung: every 1/16 of the width, aligned, at most 7/8."""
    counts = set()
    for k in range(1, FFN_LEVELS):
        keep, _ = aligned_keep(f, round(f * (1 - k / FFN_LEVELS)), align)
        if 0 < f - keep <= MAX_MODULE_CUT * f and keep > 0:
            counts.add(f - keep)
    return sorted(counts)


def ffn_rungs(W: torch.Tensor, Hinv: torch.Tensor, ad: DecoderAdapter, norm: float, align: int, sink: Sink) -> list[Rung]:
    """The FFN ladder of one layer: one OBS pass (W and H⁻¹ are consumed), its matrices shrunk to
    the kept channels as it goes (`obs.OBSState`), each rung's down_proj to `sink`. It takes H⁻¹,
    not H: a caller's `inverse_spd(hessian(...))` then leaves no name on H, which the inverse frees
    as it goes (a parameter holding H kept a third n x n matrix alive through the inversion)."""
    f = W.shape[1]
    per_ch = ad.ffn_channel_param_count()
    state = OBSState(W, Hinv, torch.arange(f, device=W.device).view(-1, 1))
    err = 0.0
    rungs = [Rung(0, 0.0, list(range(f)))]
    for n in ffn_counts(f, align):
        inc = n - (f - len(state.alive))
        costs: list[float] = []
        state.remove_steps(inc, dynamic_group_sizes(inc), costs)
        err += sum(costs) / 2
        rungs.append(Rung(n * per_ch, err / norm, list(state.alive)))
        sink(f"ffn{len(rungs) - 1}", state.W.to("cpu", torch.float32, copy=True))  # never the state's own storage
    return rungs


def ladder_record(ad: DecoderAdapter, shape: LayerShape, attn: list[Rung], ffn: list[Rung], drop_error: float) -> dict:
    """One layer's ladder as plain data (what `allocate` reads and the store keeps as JSON)."""
    dense = ad.layer_param_count(shape)
    no_attn = ad.layer_param_count(LayerShape(shape.intermediate_size, 0, 0, shape.added_bias))
    return {"attn": [asdict(r) for r in attn], "ffn": [asdict(r) for r in ffn], "attn_params": dense - no_attn,
            "drop": {"removed": dense, "error": drop_error}}


class LadderStore:
    """One JSON record and one safetensors file of compensated weights per layer, on disk.
    A layer whose record exists is not built again (resume)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._remote: set[int] = set()  # layers whose rungs only rank 0's store holds (resumed)

    def record(self, i: int) -> dict | None:
        """Layer i's finished ladder, or None. In a distributed run rank 0's store decides
        (it alone resumes): a layer rank 0 had finished is fetched from it (`tensor`), the
        others' private stores hold only what they built in this run."""
        from edgeprune.io import schema

        p = self.dir / f"L{i}.json"
        rec = None
        if p.is_file() and dist.is_writer():
            fix = f"delete it to build that layer's ladder again, or {schema.RESTART}"
            rec = schema.read(p, dict, "ladder record", fix)
            if rec.get("version") == LADDER_VERSION:
                schema.check(rec, schema.LADDER, p, "ladder record", fix)
            else:  # another version's ladder: built again
                rec = None
        rec = dist.broadcast_object(rec)
        if rec is not None and dist.active():
            self._remote.add(i)
        return rec

    def put_tensor(self, i: int, key: str, tensor: torch.Tensor) -> None:
        """One rung's weight, written at once: float16 on disk (the fitness only ranks candidates;
        the final weights are re-fitted in float32), float32 where float16 would overflow."""
        from safetensors.torch import save_file

        small = tensor.half()
        path = self.dir / f"L{i}.{key}.safetensors"
        write_with(path, lambda tmp: save_file({"w": (small if torch.isfinite(small).all() else tensor).contiguous()}, str(tmp)))

    def put_record(self, i: int, record: dict) -> None:
        """The layer's record, written last: its presence says the layer's ladder is complete."""
        write_text(self.dir / f"L{i}.json", json.dumps({**record, "version": LADDER_VERSION}))

    def stored(self, i: int, key: str) -> torch.Tensor:
        """One rung's weight exactly as stored (what a distributed ladder pass broadcasts)."""
        from safetensors.torch import load_file

        return load_file(str(self.dir / f"L{i}.{key}.safetensors"))["w"]

    def put_stored(self, i: int, key: str, tensor: torch.Tensor) -> None:
        """Write a weight `stored` read on another rank, unchanged."""
        from safetensors.torch import save_file

        write_with(self.dir / f"L{i}.{key}.safetensors", lambda tmp: save_file({"w": tensor.contiguous()}, str(tmp)))

    def tensor(self, i: int, key: str) -> torch.Tensor:
        from safetensors.torch import load_file

        if i in self._remote:  # every rank asks for the same rungs in the same order
            return dist.broadcast_object(load_file(str(self.dir / f"L{i}.{key}.safetensors"))["w"].float()
                                         if dist.is_writer() else None)
        return load_file(str(self.dir / f"L{i}.{key}.safetensors"))["w"].float()


def rung_plan(lad: Ladders, store: LadderStore, i: int, c: Choice, num_layers: int, family: str) -> Plan:
    """A one-layer plan for choice `c` of layer `i` with the ladder's weights."""
    a, f = lad.attn(i)[c[0]], lad.ffn(i)[c[1]]
    tensors = {}
    if c[0]:
        tensors[f"L{i}.o.weight"] = store.tensor(i, f"attn{c[0]}")
    if c[1]:
        tensors[f"L{i}.down.weight"] = store.tensor(i, f"ffn{c[1]}")
    lp = LayerPlan(ffn_keep=f["keep"], heads_keep=a["keep"], kv_keep=a["kv_keep"])
    return Plan(method="search", model_type=family, num_layers=num_layers, layers={i: lp}, tensors=tensors)

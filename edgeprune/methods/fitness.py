"""The search's fitness: KL(dense ‖ pruned) per token on held-back calibration windows.

Candidates are evaluated together, layer by layer through the streaming driver: each dense
layer is read once per generation, each distinct choice at that layer is built from it
(sliced, with the ladder's compensated weights from disk) and run once for every distinct
*prefix* of choices (candidates that agree on layers 0..i share those activations). Memory
is one layer, its candidate copies, and one activation set per distinct prefix.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ..plan import LayerPlan, Plan
from ..reference import _final_norm
from ..streaming import Activations, LayerSource
from ..surgery import slice_layer
from .allocate import DROP, Alloc, Choice, Ladders

TOKEN_BLOCK = 256  # tokens turned into logits at a time
LADDER_VERSION = 2  # a record written by another version is built again, never misread
VOCAB_BLOCK = 16384  # rows of lm_head cast to float32 at a time


class LadderStore:
    """One JSON record and one safetensors file of compensated weights per layer, on disk.
    A layer whose record exists is not built again (resume)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def record(self, i: int) -> dict | None:
        p = self.dir / f"L{i}.json"
        rec = json.loads(p.read_text()) if p.is_file() else None
        return rec if rec is not None and rec.get("version") == LADDER_VERSION else None

    def put_tensor(self, i: int, key: str, tensor: torch.Tensor) -> None:
        """One rung's weight, written at once: float16 on disk (the fitness only ranks candidates;
        the final weights are re-fitted in float32), float32 where float16 would overflow."""
        from safetensors.torch import save_file

        small = tensor.half()
        path = self.dir / f"L{i}.{key}.safetensors"
        save_file({"w": (small if torch.isfinite(small).all() else tensor).contiguous()}, str(path.with_suffix(".tmp")))
        path.with_suffix(".tmp").replace(path)

    def put_record(self, i: int, record: dict) -> None:
        """The layer's record, written last: its presence says the layer's ladder is complete."""
        tmp = self.dir / f"L{i}.json.tmp"
        tmp.write_text(json.dumps({**record, "version": LADDER_VERSION}))
        tmp.replace(self.dir / f"L{i}.json")

    def tensor(self, i: int, key: str) -> torch.Tensor:
        from safetensors.torch import load_file

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


class KLFitness:
    """Mean per-token KL(dense ‖ candidate) on fixed held-back windows."""

    def __init__(self, source: LayerSource, windows: torch.Tensor, lad: Ladders, store: LadderStore, batch_size: int):
        self.source, self.lad, self.store = source, lad, store
        self.inputs = source.start(windows, batch_size)  # embedded once, kept for every evaluation
        self.norm = _final_norm(source)
        self.head = source.lm_head_weight()
        dense = tuple((0, 0) for _ in range(source.num_layers))
        self.dense = self._final(self._hidden([dense])[dense])

    @torch.no_grad()
    def __call__(self, allocs: list[Alloc]) -> list[float]:
        hidden = self._hidden(allocs)
        return [self._kl(hidden[a]) for a in allocs]

    def close(self) -> None:
        self.inputs.close()

    def _layer(self, i: int, dense: nn.Module, c: Choice) -> nn.Module:
        if c == (0, 0):
            return dense
        layer = copy.deepcopy(dense)
        plan = rung_plan(self.lad, self.store, i, c, self.source.num_layers, self.source.adapter.family)
        slice_layer(self.source.adapter, layer, i, plan, self.source.shapes[i])
        return layer

    @torch.no_grad()
    def _hidden(self, allocs: list[Alloc]) -> dict[Alloc, Activations]:
        acts: dict[tuple, Activations] = {(): self.inputs}
        for i in range(self.source.num_layers):
            need = sorted({a[: i + 1] for a in allocs})
            dense = self.source.layer(i) if any(p[-1] != DROP for p in need) else None
            built: dict[Choice, nn.Module] = {}
            new: dict[tuple, Activations] = {}
            for p in need:
                if p[-1] == DROP:
                    new[p] = acts[p[:-1]]
                    continue
                if p[-1] not in built:
                    built[p[-1]] = self._layer(i, dense, p[-1])
                new[p] = self.source.run(built[p[-1]], acts[p[:-1]], check_finite=False)
            keep = {id(v) for v in new.values()} | {id(self.inputs)}
            for v in acts.values():
                if id(v) not in keep:
                    v.close()
            acts = new
        return {a: acts[a] for a in allocs}

    def _final(self, acts: Activations) -> list[torch.Tensor]:
        out = [self.norm(x).reshape(-1, x.shape[-1]) for x in acts]
        if acts is not self.inputs:
            acts.close()
        return out

    def _logprobs(self, h: torch.Tensor) -> torch.Tensor:
        logits = torch.cat([h.float() @ self.head[s : s + VOCAB_BLOCK].to(h.device, torch.float32).T
                            for s in range(0, self.head.shape[0], VOCAB_BLOCK)], dim=1)
        return torch.log_softmax(logits, dim=-1)

    def _kl(self, acts: Activations) -> float:
        total, n = 0.0, 0
        for hd, hp in zip(self.dense, self._final(acts)):
            for s in range(0, hd.shape[0], TOKEN_BLOCK):
                lp_d, lp_p = self._logprobs(hd[s : s + TOKEN_BLOCK]), self._logprobs(hp[s : s + TOKEN_BLOCK])
                kl = (lp_d.exp() * (lp_d - lp_p)).sum(-1)
                total += float(kl.sum())
                n += kl.numel()
        value = total / max(n, 1)
        return value if value == value and abs(value) != float("inf") else float("inf")

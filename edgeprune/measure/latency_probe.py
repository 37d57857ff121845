"""Timing candidate layer shapes in the real runtime, for the latency model (`latency_model.py`).

Artifacts with random weights at the model's real widths (hidden size, head_dim, vocabulary,
family) and chosen layer shapes are written with edgeprune's own writers (GGUF: `write_gguf`,
`deci` for per-layer widths; ONNX: `write_onnx` + the GenAI package) and timed with
`latency.measure` (the build's loop: sessions, interleaved repetitions, warm-up) at the
target's context and threads. The configurations are chosen to identify the fit's terms:
models of k identical layers for several k (the fixed part and the per-layer constant), FFN
widths, query heads per KV group and KV groups varied one at a time, widths that miss the
quantisation block; the held-out ones are non-uniform mixes of shapes the fit never saw.
Each time is the median over rounds of its ratio to the dense reference timed in the same
round, times the reference's median: a slow round on a busy machine moves every config alike.
"""
from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..models import LayerShape

MAX_PROBE_BYTES = 1.5e9  # f32 layer bytes of one probe model: wide models are timed on fewer layers


@dataclass
class Probe:
    name: str
    shapes: list[LayerShape]
    held_out: bool = False


def _round(x: float, step: int) -> int:
    return max(step, int(round(x / step)) * step)


def design(dense: LayerShape, layers: int, block: int, layer_bytes: float, few: bool, shallow: bool = False) -> list[Probe]:
    """The timed configurations: fitted ones vary one term at a time, held-out ones mix.
    `shallow` (ORT: its export costs ~10 s a layer on a busy 2-core host) times the whole design
    on 2-layer probes and two at full depth: the dense model, fitted (a slope from 1- and
    2-layer probes alone carries its noise K/2 times into a K-layer prediction: 15-27% misses
    at full depth were seen), and a mixed plan, held out, so the error reported is the one at
    the depth the plans have."""
    F, H, KV = dense.intermediate_size, dense.num_heads, dense.num_kv_heads
    g = H // KV
    step = max(block, 8)
    K = max(2, min(layers, int(MAX_PROBE_BYTES // max(layer_bytes, 1))))
    half = max(1, K // 2)
    S = lambda p, k, f: LayerShape(int(f), p * k, k)  # noqa: E731  (query heads per group, groups, FFN)
    if shallow and K > 2:
        two = [p for p in design(dense, 2, block, layer_bytes, few) if p.name not in ("dense-half", "mix-b")]  # 1-layer repeats
        c = S(g, max(1, KV - 1), _round(5 * F / 8, step) + (block // 2 if block > 1 else 0))
        b = S(max(1, g - 1), KV, _round(3 * F / 8, step))
        return two + [Probe("dense-full", [dense] * K), Probe("mix-full", [c if i % 3 else b for i in range(K)], True)]
    out = [Probe("dense", [dense] * K), Probe("dense-1", [dense]), Probe("ffn/8", [S(g, KV, _round(F / 8, step))] * K),
           Probe("min", [S(1, 1, _round(F / 4, step))] * K)]
    if not few:
        out += [Probe("dense-half", [dense] * half), Probe("ffn/2", [S(g, KV, _round(F / 2, step))] * K)]
        if g > 1:
            out.append(Probe("1-per-group", [S(1, KV, F)] * K))
        if KV > 1:
            out.append(Probe("1-group", [S(g, 1, F)] * K))
        out.append(Probe("min-half", [S(1, 1, _round(F / 8, step))] * half))
        if block > 1:
            out += [Probe("unaligned", [S(g, KV, _round(F / 2, step) + block // 2)] * K),
                    Probe("unaligned-min", [S(1, KV, _round(F / 4, step) + block // 4)] * half)]
    a, b = S(g, KV, _round(3 * F / 4, step)), S(max(1, g - 1), KV, _round(3 * F / 8, step))
    out.append(Probe("mix-a", [a if i % 2 else b for i in range(max(1, K - 1))], True))
    if not few:
        c = S(g, max(1, KV - 1), _round(5 * F / 8, step) + (block // 2 if block > 1 else 0))
        out.append(Probe("mix-b", [c if i % 3 else dense for i in range(max(1, K - 2))], True))
        out.append(Probe("mix-c", [S(1, KV, _round(F / 4, step)) if i % 2 else S(g, 1, F) for i in range(K)], True))
    return out


def probe_config(adapter, shapes: list[LayerShape], max_positions: int):
    """A transformers config of the model's family and widths with these per-layer shapes."""
    from ..models.pruned_modeling import CLASSES

    d = {k: v for k, v in adapter.config.to_dict().items()
         if k not in ("model_type", "architectures", "auto_map", "_name_or_path", "edgeprune_layers", "transformers_version")}
    d.update(num_hidden_layers=len(shapes), edgeprune_layers=[s.as_dict() for s in shapes],
             max_position_embeddings=max(int(d.get("max_position_embeddings") or 0), max_positions),
             intermediate_size=shapes[0].intermediate_size, num_attention_heads=shapes[0].num_heads,
             num_key_value_heads=shapes[0].num_kv_heads, head_dim=adapter.head_dim)
    return CLASSES[adapter.family][0](**d)


def _random_view(cfg, empty_dir: Path):
    """A WeightsView over random tensors (made one at a time as the writer asks): shapes come
    from the family's own modules built on the meta device, so no weight is held."""
    import torch

    from exporters.source import WeightsView

    from ..models.pruned_modeling import CLASSES

    with torch.device("meta"):
        meta = CLASSES[cfg.model_type.removeprefix("edgeprune_")][1](cfg)  # the family's type (legacy: edgeprune_<family>)
    shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    gen = torch.Generator().manual_seed(0)

    def get(key: str):
        if key.endswith("norm.weight"):
            return torch.ones(shapes[key])
        return torch.randn(shapes[key], generator=gen) * 0.02

    return WeightsView(cfg, get, set(shapes), shapes.__getitem__, empty_dir, torch.float32)


def write_probe(adapter, fmt: str, dtype: str, shapes: list[LayerShape], out: Path, max_positions: int) -> Path:
    """One random-weight artifact of these layer shapes, written by edgeprune's own writer."""
    cfg = probe_config(adapter, shapes, max_positions)
    empty = out.parent / "no-tokenizer"
    empty.mkdir(exist_ok=True)
    from exporters.formats import get

    return get(fmt).write_probe(adapter, cfg, lambda: _random_view(cfg, empty), out, dtype)


def time_probes(paths: dict[str, Path], reference: str, context: int, new_tokens: int, reps: int, threads: int,
                vocab: int) -> dict[str, float]:
    """Decode ms/token of every artifact, interleaved, normalised round by round to `reference`."""
    from .latency import measure

    res = measure(paths, context, new_tokens, reps, threads, vocab=vocab)
    ref = res[reference]["decode_ms_per_token_runs"]
    ref_med = statistics.median(ref)
    return {k: statistics.median(r / q for r, q in zip(v["decode_ms_per_token_runs"], ref)) * ref_med
            for k, v in res.items()}


def run(adapter, fmt: str, dtype: str, probes: list[Probe], context: int, threads: int, reps: int,
        new_tokens: int, tick: Callable[[str], None]) -> tuple[dict[str, float], str]:
    """Write and time every probe; returns ({probe name: ms/token}, runtime description)."""
    from .latency import _session

    with tempfile.TemporaryDirectory(prefix="edgeprune-latency-") as tmp:
        paths = {}
        for p in probes:
            tick(f"write {p.name}")
            paths[p.name] = write_probe(adapter, fmt, dtype, p.shapes, Path(tmp) / f"probe{len(paths)}", context + new_tokens + 16)
        tick("time")
        runtime = _session(paths[probes[0].name], context, 2, threads).runtime
        times = time_probes(paths, probes[0].name, context, new_tokens, reps, threads, adapter.vocab_size)
    return times, runtime

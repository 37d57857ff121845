"""GGUF export for llama.cpp, written with the `gguf` package.

Uniform shapes use the family's own architecture (`llama`, `qwen2`, `qwen3`). Per-layer
widths use `deci` (Nemotron-NAS layout, Llama tensor names), the only llama.cpp
architecture that builds each block with its own `feed_forward_length`, `head_count` and
`head_count_kv`. `llama` and `deci` read optional q/k/v/o and ffn_down biases (so Qwen2 and
FLAP's compensation biases fit; checked against llama-cpp-python in the tests) but no q/k
norms, so non-uniform Qwen3 is refused with the reason. The adapter picks the architecture
(`DecoderAdapter.gguf_architecture`). Llama-style rotary weights, and the q/k biases with
them, get the HF -> GGML permutation per layer with that layer's own head counts; Qwen
architectures (NeoX rotary) need none.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from edgeprune.errors import ExportError

from .runtime_imports import require
from .dtypes import get as dtype_facts
from .gguf_tokenizer import add_tokenizer
from .source import WeightsView

PERMUTED_ARCHS = ("llama", "deci")


def hf_to_ggml_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotate-half layout -> GGML's interleaved pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _choose_type(name: str, shape: tuple[int, ...], dtype: str, fallbacks: list[dict]) -> str:
    """The GGML type one tensor gets, decided from its shape alone (before any data is read):
    1-D tensors stay f32; rows that do not fit the block fall back, recorded."""
    if len(shape) == 1 or dtype == "f32":
        return "f32"
    want = dtype
    block = dtype_facts(want).block
    if shape[-1] % block:
        new = next(t for t in dtype_facts(want).fallback if shape[-1] % dtype_facts(t).block == 0)
        fallbacks.append({"tensor": name, "wanted": want, "used": new, "row": int(shape[-1]),
                          "why": f"row length {shape[-1]} is not a multiple of {block}"})
        want = new
    return want


def _info(gguf, shape: tuple[int, ...], kind: str):
    """(shape as given to add_tensor_info, numpy dtype, nbytes, raw GGML type)."""
    Q = gguf.GGMLQuantizationType
    n = int(np.prod(shape))
    if kind == "f32":
        return shape, np.dtype(np.float32), 4 * n, Q.F32
    if kind == "f16":
        return shape, np.dtype(np.float16), 2 * n, Q.F16
    qt = Q[dtype_facts(kind).ggml]
    byte_shape = tuple(gguf.quants.quant_shape_to_byte_shape(shape, qt))
    return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), qt


ROW_BLOCK_ELEMENTS = 1 << 24  # converted/quantised at a time: a 1 GB embedding costs megabytes of scratch


def _encode(gguf, t: torch.Tensor, kind: str) -> np.ndarray:
    """The tensor's GGUF bytes (or float array), converted in row blocks into one output
    array: never a float32 copy of a whole bf16 embedding next to its quantised form."""
    t = t.detach()
    if t.ndim < 2:
        return _encode_block(gguf, t, kind)
    rows = t.shape[0]
    step = max(1, ROW_BLOCK_ELEMENTS // max(1, t[0].numel()))
    first = _encode_block(gguf, t[:step], kind)
    if step >= rows:
        return first
    out = np.empty((rows, *first.shape[1:]), dtype=first.dtype)
    out[:step] = first
    for s in range(step, rows, step):
        out[s : s + step] = _encode_block(gguf, t[s : s + step], kind)
    return out


def _encode_block(gguf, t: torch.Tensor, kind: str) -> np.ndarray:
    arr = t.float().cpu().numpy()
    if kind == "f32":
        return arr
    if kind == "f16":
        return arr.astype(np.float16)
    Q = gguf.GGMLQuantizationType
    return gguf.quants.quantize(arr, Q[dtype_facts(kind).ggml])


# llama.cpp architectures whose graph adds an optional attn_output / ffn_down bias
# (FLAP's bias compensation); checked by tests/test_exporters.py against llama-cpp-python.
OUTPUT_BIAS_ARCHS = ("llama", "deci")


def gguf_arch(view: WeightsView) -> tuple[str, bool]:
    """(llama.cpp architecture, uniform?) for the model's layer shapes; the adapter decides."""
    return view.adapter.gguf_architecture(view.shapes), len(set(view.shapes)) == 1


def rope_type(cfg) -> str:
    """'default', 'llama3', ... from transformers' rope_parameters (v5) or rope_scaling (v4)."""
    p = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return str(p.get("rope_type") or p.get("type") or "default")


def llama3_rope_factors(view: WeightsView) -> np.ndarray:
    """Llama-3.1's frequency-dependent rope scaling as the per-frequency divisors llama.cpp
    reads from `rope_freqs.weight`: high frequencies unscaled, low ones divided by `factor`,
    a smooth blend between (the published llama3 rule)."""
    import math

    cfg = view.config
    p = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    hd = view.adapter.head_dim
    theta = float(p.get("rope_theta") or getattr(cfg, "rope_theta", 10000.0))
    factor, lo, hi = float(p["factor"]), float(p.get("low_freq_factor", 1.0)), float(p.get("high_freq_factor", 4.0))
    old = float(p.get("original_max_position_embeddings", 8192))
    out = []
    for k in range(0, hd, 2):
        wavelen = 2 * math.pi * theta ** (k / hd)
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _write_metadata(w, view: WeightsView, arch: str, uniform: bool, dtype: str, tokenizer_pre: str | None = None) -> dict:
    cfg, ad, shapes = view.config, view.adapter, view.shapes
    w.add_name(str(getattr(cfg, "_name_or_path", "") or "edgeprune-model").split("/")[-1])
    w.add_file_type(dtype_facts(dtype).llama_ftype)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(ad.hidden_size)
    w.add_block_count(len(shapes))
    if uniform:
        w.add_feed_forward_length(shapes[0].intermediate_size)
        w.add_head_count(shapes[0].num_heads)
        w.add_head_count_kv(shapes[0].num_kv_heads)
    else:
        w.add_feed_forward_length([s.intermediate_size for s in shapes])
        w.add_head_count([s.num_heads for s in shapes])
        w.add_head_count_kv([s.num_kv_heads for s in shapes])
    w.add_key_length(ad.head_dim)
    w.add_value_length(ad.head_dim)
    w.add_rope_dimension_count(ad.head_dim)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(ad.vocab_size)
    return add_tokenizer(w, view.model_dir or Path("."), cfg, tokenizer_pre)


def tensor_list(view: WeightsView, arch: str) -> list[tuple[str, str, int]]:
    """(GGUF name, HF key, rotary heads to permute or 0) in file order."""
    ad = view.adapter
    permute = arch in PERMUTED_ARCHS
    out = [("token_embd.weight", ad.embed_key, 0)]
    for i, s in enumerate(view.shapes):
        k = lambda role, p="weight": ad.layer_key(i, role, p)  # noqa: E731
        out += [(f"blk.{i}.attn_norm.weight", k("attn_norm"), 0),
                (f"blk.{i}.attn_q.weight", k("q"), s.num_heads if permute else 0),
                (f"blk.{i}.attn_k.weight", k("k"), s.num_kv_heads if permute else 0),
                (f"blk.{i}.attn_v.weight", k("v"), 0), (f"blk.{i}.attn_output.weight", k("o"), 0)]
        for role, name, heads in (("q", "attn_q", s.num_heads), ("k", "attn_k", s.num_kv_heads), ("v", "attn_v", 0)):
            if view.has(k(role, "bias")):
                out.append((f"blk.{i}.{name}.bias", k(role, "bias"), heads if permute else 0))
        for role, name in (("o", "attn_output"), ("down", "ffn_down")):
            if view.has(k(role, "bias")):
                if arch not in OUTPUT_BIAS_ARCHS:
                    raise ExportError(f"llama.cpp's {arch} architecture has no {role}_proj bias; export ONNX")
                out.append((f"blk.{i}.{name}.bias", k(role, "bias"), 0))
        for path, name in zip(ad.head_norm_paths, ("attn_q_norm", "attn_k_norm")):
            out.append((f"blk.{i}.{name}.weight", f"{ad.layer_prefix(i)}{path}.weight", 0))
        out += [(f"blk.{i}.ffn_norm.weight", k("ffn_norm"), 0), (f"blk.{i}.ffn_gate.weight", k("gate"), 0),
                (f"blk.{i}.ffn_up.weight", k("up"), 0), (f"blk.{i}.ffn_down.weight", k("down"), 0)]
    out.append(("output_norm.weight", ad.final_norm_key, 0))
    if not getattr(view.config, "tie_word_embeddings", False):
        out.append(("output.weight", ad.lm_head_key, 0))
    return out


def write_gguf(view: WeightsView, path: Path, dtype: str = "f32", progress: bool = False,  # long: two passes
               imatrix: dict | None = None, tokenizer_pre: str | None = None) -> dict:
    """Write the model to `path`, streamed: tensor infos from shapes first, then each tensor
    read, converted or quantised and written alone, as llama.cpp's converter does with lazy
    tensors. Returns metadata (arch, tensor types, fallbacks). `imatrix` ({GGUF name: mean
    x^2 per column}, edgeprune.calibrate.imatrix) goes to llama.cpp's quantizer (k-quants only)."""
    gguf = require("gguf", "gguf", "GGUF export")
    if dtype_facts(dtype).llama_quantizer:
        raise ExportError(f"{dtype} is written by llama.cpp's quantizer (exporters.gguf_kquant), not here")
    if imatrix is not None:
        raise ExportError(f"an importance matrix is used by llama.cpp's k-quants only, not {dtype}; "
                          "drop --imatrix or choose q4_k_m, q5_k_m or q6_k")
    rope = rope_type(view.config)
    if rope not in ("default", "llama3"):
        raise ExportError(f"rope scaling '{rope}' is not written by edgeprune's GGUF exporter yet; export ONNX")
    arch, uniform = gguf_arch(view)
    tensors = tensor_list(view, arch)
    extra = {"rope_freqs.weight": llama3_rope_factors(view)} if rope == "llama3" else {}
    fallbacks: list[dict] = []
    kinds = {name: _choose_type(name, view.shape(key), dtype, fallbacks) for name, key, _ in tensors}
    kinds.update({name: "f32" for name in extra})
    w = gguf.GGUFWriter(str(path), arch)
    info = _write_metadata(w, view, arch, uniform, dtype, tokenizer_pre)
    for name, arr in extra.items():
        w.add_tensor_info(name, arr.shape, arr.dtype, arr.nbytes, raw_dtype=gguf.GGMLQuantizationType.F32)
    for name, key, _ in tensors:
        shape, npdt, nbytes, qt = _info(gguf, view.shape(key), kinds[name])
        w.add_tensor_info(name, shape, npdt, nbytes, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for arr in extra.values():
        w.write_tensor_data(arr)
    for name, key, heads in tqdm(tensors, desc=f"gguf {dtype}", unit="tensor", file=sys.stderr, disable=not progress, leave=False):
        t = view.get(key)
        if heads:
            t = hf_to_ggml_rotary(t, heads)
        w.write_tensor_data(_encode(gguf, t, kinds[name]))
        del t
    w.close()
    types = {n: dtype_facts(k).ggml for n, k in kinds.items()}
    return {"architecture": arch, "uniform": uniform, "fallbacks": fallbacks, "tensor_types": _summary(types), **info}


def _summary(types: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in types.values():
        out[t] = out.get(t, 0) + 1
    return out

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

import json
from pathlib import Path

import numpy as np
import torch

from edgeprune.errors import ExportError
from edgeprune.models import get_adapter

from .common import require

BLOCK = {"q8_0": 32, "q4_0": 32, "q4_k": 256}
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32, "q4_k": 15}
PERMUTED_ARCHS = ("llama", "deci")


def hf_to_ggml_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotate-half layout -> GGML's interleaved pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_type(name: str, arr: np.ndarray, dtype: str, fallbacks: list[dict]):
    """(data, raw GGML type) for one tensor; falls back when rows don't fit the block."""
    gguf = require("gguf", "gguf", "GGUF export")
    Q = gguf.GGMLQuantizationType
    if arr.ndim == 1 or dtype == "f32":
        return arr.astype(np.float32), Q.F32
    want = dtype
    if want in BLOCK and arr.shape[-1] % BLOCK[want]:
        chain = {"q4_k": ["q4_0", "f16"], "q8_0": ["f16"], "q4_0": ["f16"]}[want]
        new = next(t for t in chain if t not in BLOCK or arr.shape[-1] % BLOCK[t] == 0)
        fallbacks.append({"tensor": name, "wanted": want, "used": new, "row": int(arr.shape[-1]),
                          "why": f"row length {arr.shape[-1]} is not a multiple of {BLOCK[want]}"})
        want = new
    if want == "f16":
        return arr.astype(np.float16), Q.F16
    qtype = {"bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[want]
    return gguf.quants.quantize(arr.astype(np.float32), qtype), qtype


def _add_tokenizer(w, model_dir: Path, config) -> dict:
    """Embed the tokenizer: SentencePiece (`llama`) or BPE (`gpt2`), BOS/EOS, chat template."""
    info: dict = {}
    spm = model_dir / "tokenizer.model"
    tj = model_dir / "tokenizer.json"
    if spm.is_file():
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(spm))
        tokens, scores, types = [], [], []
        for i in range(sp.vocab_size()):
            tokens.append(sp.id_to_piece(i).encode("utf-8"))
            scores.append(sp.get_score(i))
            types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i) else 6 if sp.is_byte(i) else 1)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        if sp.unk_id() >= 0:
            w.add_unk_token_id(sp.unk_id())
        info["tokenizer"] = "llama (sentencepiece)"
    elif tj.is_file():
        d = json.loads(tj.read_text())
        if d["model"]["type"] != "BPE":
            raise ExportError(f"tokenizer.json model type {d['model']['type']} is not BPE; only SentencePiece and BPE tokenizers can be embedded")
        vocab = dict(d["model"]["vocab"])
        special = {t["content"]: t["id"] for t in d.get("added_tokens", [])}
        vocab.update(special)
        n = max(vocab.values()) + 1
        tokens = [b"[PAD%d]" % i for i in range(n)]
        types = [5] * n
        for tok, i in vocab.items():
            tokens[i] = tok.encode("utf-8")
            types[i] = 3 if tok in special else 1
        scores = None
        merges = [" ".join(m) if isinstance(m, list) else m for m in d["model"].get("merges", [])]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_merges(merges)
        info["tokenizer"] = "gpt2 (BPE)"
    else:
        w.add_tokenizer_model("none")
        info["tokenizer"] = "none"
        return info
    vocab_size = int(config.vocab_size)
    while len(tokens) < vocab_size:  # the embedding may be padded beyond the tokenizer
        tokens.append(b"[PAD%d]" % len(tokens))
        types.append(5)
        if scores is not None:
            scores.append(0.0)
    w.add_token_list(tokens[:vocab_size])
    if scores is not None:
        w.add_token_scores(scores[:vocab_size])
    w.add_token_types(types[:vocab_size])
    for key, fn in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id)):
        v = getattr(config, key, None)
        if isinstance(v, list):
            v = v[0]
        if v is not None:
            fn(int(v))
    tc = model_dir / "tokenizer_config.json"
    template = None
    if (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text()
    elif tc.is_file():
        template = json.loads(tc.read_text()).get("chat_template")
    if isinstance(template, str):
        w.add_chat_template(template)
        info["chat_template"] = True
    return info


# llama.cpp architectures whose graph adds an optional attn_output / ffn_down bias
# (FLAP's bias compensation); checked by tests/test_exporters.py against llama-cpp-python.
OUTPUT_BIAS_ARCHS = ("llama", "deci")


def gguf_arch(model) -> tuple[str, bool]:
    """(llama.cpp architecture, uniform?) for the model's layer shapes; the adapter decides."""
    ad = get_adapter(model.config)
    shapes = [ad.shape_of(layer) for layer in ad.layers(model)]
    return ad.gguf_architecture(shapes), len(set(shapes)) == 1


def write_gguf(model, model_dir: Path, path: Path, dtype: str = "f32") -> dict:
    """Write `model` to `path`; returns metadata (arch, tensor types, fallbacks)."""
    gguf = require("gguf", "gguf", "GGUF export")
    if dtype == "q4_k":
        return _write_q4_k(model, model_dir, path)
    ad = get_adapter(model.config)
    cfg = model.config
    if getattr(cfg, "rope_scaling", None) and (cfg.rope_scaling or {}).get("rope_type", "default") not in ("default", None):
        raise ExportError(f"rope scaling '{cfg.rope_scaling.get('rope_type')}' is not written by edgeprune's GGUF exporter yet; export ONNX")
    arch, uniform = gguf_arch(model)
    layers = ad.layers(model)
    shapes = [ad.shape_of(layer) for layer in layers]
    hd = ad.head_dim
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(str(getattr(cfg, "_name_or_path", "") or "edgeprune-model").split("/")[-1])
    w.add_file_type(FILE_TYPE[dtype])
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
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(ad.vocab_size)
    info = _add_tokenizer(w, model_dir, cfg)

    fallbacks: list[dict] = []
    types: dict[str, str] = {}

    def put(name: str, t: torch.Tensor) -> None:
        data, qt = _tensor_type(name, t.detach().float().cpu().numpy(), dtype, fallbacks)
        w.add_tensor(name, data, raw_dtype=qt)
        types[name] = qt.name

    sd = model.state_dict()
    put("token_embd.weight", sd[ad.embed_key])
    permute = arch in PERMUTED_ARCHS
    for i, (layer, s) in enumerate(zip(layers, shapes)):
        m = lambda role: ad.module(layer, role)  # noqa: E731
        put(f"blk.{i}.attn_norm.weight", m("attn_norm").weight)
        q, k = m("q").weight, m("k").weight
        put(f"blk.{i}.attn_q.weight", hf_to_ggml_rotary(q, s.num_heads) if permute else q)
        put(f"blk.{i}.attn_k.weight", hf_to_ggml_rotary(k, s.num_kv_heads) if permute else k)
        put(f"blk.{i}.attn_v.weight", m("v").weight)
        put(f"blk.{i}.attn_output.weight", m("o").weight)
        for role, name, heads in (("q", "attn_q", s.num_heads), ("k", "attn_k", s.num_kv_heads), ("v", "attn_v", 0)):
            b = m(role).bias
            if b is not None:
                put(f"blk.{i}.{name}.bias", hf_to_ggml_rotary(b, heads) if permute and heads else b)
        for role, name in (("o", "attn_output"), ("down", "ffn_down")):
            if m(role).bias is not None:
                if arch not in OUTPUT_BIAS_ARCHS:
                    raise ExportError(f"llama.cpp's {arch} architecture has no {role}_proj bias; export ONNX")
                put(f"blk.{i}.{name}.bias", m(role).bias)
        for path, name in zip(ad.head_norm_paths, ("attn_q_norm", "attn_k_norm")):
            put(f"blk.{i}.{name}.weight", layer.get_submodule(path).weight)
        put(f"blk.{i}.ffn_norm.weight", m("ffn_norm").weight)
        put(f"blk.{i}.ffn_gate.weight", m("gate").weight)
        put(f"blk.{i}.ffn_up.weight", m("up").weight)
        put(f"blk.{i}.ffn_down.weight", m("down").weight)
    put("output_norm.weight", sd[ad.final_norm_key])
    if not getattr(cfg, "tie_word_embeddings", False):
        put("output.weight", sd[ad.lm_head_key])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"architecture": arch, "uniform": uniform, "fallbacks": fallbacks, "tensor_types": _summary(types), **info}


def _summary(types: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in types.values():
        out[t] = out.get(t, 0) + 1
    return out


def _write_q4_k(model, model_dir: Path, path: Path) -> dict:
    """q4_k through llama.cpp's own quantizer (it falls back per tensor itself)."""
    import ctypes

    lc = require("llama_cpp", "gguf", "q4_k quantization (llama.cpp's quantizer)")
    tmp = path.with_name(path.name + ".f32")
    meta = write_gguf(model, model_dir, tmp, "f32")
    params = lc.llama_model_quantize_default_params()
    params.ftype = FILE_TYPE["q4_k"]  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    rc = lc.llama_model_quantize(str(tmp).encode(), str(path).encode(), ctypes.byref(params))
    tmp.unlink(missing_ok=True)
    if rc != 0:
        raise ExportError(f"llama.cpp's quantizer failed (code {rc}) for q4_k")
    meta["fallbacks"] = [{"note": "q4_k_m via llama.cpp's quantizer, which picks fallback types per tensor itself"}]
    meta["tensor_types"] = {}
    return meta

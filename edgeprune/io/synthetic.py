"""Random-weight checkpoints with real shapes, written the way hubs write them.

Used to measure memory and time at real widths (Llama-3.2-1B, Qwen2.5-7B, Llama-3.1-8B)
at small depth, and by the tests for hub conventions: bf16, sharded safetensors with an
index, tied embeddings stored once (under `lm_head.weight` when asked, as some public
checkpoints do), or a `pytorch_model.bin`. Written tensor by tensor: an 8B-width file
never needs the model in memory. The tokenizer is a small byte-level BPE trained on the
Python standard library (its ids fit any vocabulary of 1024 or more).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .tensorfiles import DEFAULT_SHARD_BYTES, ShardWriter
from .weights import CONFIG_DTYPE_NAME

# Real widths (from the models' public config.json files), depth chosen by the caller.
SHAPES: dict[str, dict] = {
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                       num_key_value_heads=4, head_dim=128, vocab_size=152064, tie_word_embeddings=False,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
                         rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072),
}
FULL_DEPTH = {"llama-3.2-1b": 16, "qwen2.5-7b": 28, "llama-3.1-8b": 32}


def config_for(shape: str | dict, layers: int, dtype: torch.dtype = torch.bfloat16, **over) -> dict:
    cfg = dict(SHAPES[shape]) if isinstance(shape, str) else dict(shape)
    cfg.update(num_hidden_layers=layers, torch_dtype=CONFIG_DTYPE_NAME[dtype], bos_token_id=1, eos_token_id=2,
               hidden_act="silu", attention_bias=cfg["model_type"] == "qwen2", **over)
    from ..models.pruned_modeling import FAMILIES  # the one family -> transformers class table

    cfg["architectures"] = [FAMILIES[cfg["model_type"]][2]]
    return cfg


def _tensors(cfg: dict, dtype: torch.dtype, gen: torch.Generator, tied_as_lm_head: bool):
    """The checkpoint's tensors in hub order, named by the family's adapter (the layout is the
    adapter's alone): norms ones, weights and the family's own biases N(0, 0.02)."""
    from types import SimpleNamespace

    from ..models import get_adapter

    ad = get_adapter(SimpleNamespace(**cfg))
    d, hd, v, s = ad.hidden_size, ad.head_dim, ad.vocab_size, ad.layer_shapes()[0]
    q, kv, f = s.num_heads * hd, s.num_kv_heads * hd, s.intermediate_size
    rows_cols = {"q": (q, d), "k": (kv, d), "v": (kv, d), "o": (d, q), "gate": (f, d), "up": (f, d), "down": (d, f)}
    biased = set(ad.native_bias_roles())

    def rnd(*shape, std=0.02):
        return (torch.randn(*shape, generator=gen) * std).to(dtype)

    tied = cfg.get("tie_word_embeddings", False)
    if not (tied and tied_as_lm_head):
        yield ad.embed_key, rnd(v, d)
    for i in range(ad.num_layers):
        yield ad.layer_key(i, "attn_norm"), torch.ones(d, dtype=dtype)
        for role in ("q", "k", "v", "o"):
            yield ad.layer_key(i, role), rnd(*rows_cols[role])
            if role in biased:
                yield ad.layer_key(i, role, "bias"), rnd(rows_cols[role][0])
        for path in ad.head_norm_paths:
            yield f"{ad.layer_prefix(i)}{path}.weight", torch.ones(hd, dtype=dtype)
        yield ad.layer_key(i, "ffn_norm"), torch.ones(d, dtype=dtype)
        for role in ("gate", "up", "down"):
            yield ad.layer_key(i, role), rnd(*rows_cols[role])
            if role in biased:
                yield ad.layer_key(i, role, "bias"), rnd(rows_cols[role][0])
    yield ad.final_norm_key, torch.ones(d, dtype=dtype)
    if not tied or tied_as_lm_head:
        yield ad.lm_head_key, rnd(v, d)


def write_checkpoint(out: str | Path, cfg: dict, *, seed: int = 0, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                     tied_as_lm_head: bool = False, layout: str = "safetensors", tokenizer: bool = True) -> Path:
    """Write a random checkpoint for `cfg` (see `config_for`) into `out`; returns `out`.

    layout: "safetensors" (sharded with an index past `max_shard_bytes`) or "bin"
    (`pytorch_model.bin`, small models only: it is built in memory).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from edgeprune.dtypes import torch_dtype

    dtype = torch_dtype(cfg["torch_dtype"])
    gen = torch.Generator().manual_seed(seed)
    items = _tensors(cfg, dtype, gen, tied_as_lm_head)
    if layout == "bin":
        torch.save(dict(items), out / "pytorch_model.bin")
    else:
        w = ShardWriter(out, max_shard_bytes)
        for name, t in items:
            w.add(name, t)
        w.close()
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer:
        save_small_tokenizer(out)
    return out


def save_small_tokenizer(out: Path) -> None:
    """A 1024-token byte-level BPE (seconds to train) so calibration text can be tokenized."""
    from .demo import demo_text, train_bpe

    train_bpe(demo_text("calib", limit=200_000), vocab=1024).save_pretrained(str(out))

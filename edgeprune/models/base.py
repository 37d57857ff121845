"""The adapter contract: where a decoder family keeps its layers, projections and norms.

Methods, surgery, streaming and exporters talk to a model only through an adapter, so a new
architecture family is one new file here. The four families supported today share the
Hugging Face module layout (`model.layers[i].self_attn.{q,k,v,o}_proj`,
`model.layers[i].mlp.{gate,up,down}_proj`); they differ in biases, q/k norms and in what the
GGUF writer may express, which the subclasses declare.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

# Roles name the linear maps of a decoder layer independently of the family's attribute names.
ATTN_ROLES = ("q", "k", "v", "o")
MLP_ROLES = ("gate", "up", "down")
# Output projections that bias compensation may give a bias (it absorbs a constant shift).
ADDABLE_BIAS_ROLES = ("o", "down")


@dataclass(frozen=True)
class LayerShape:
    """The prunable widths of one decoder layer."""

    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    # Output biases the family's own layout lacks, added by bias compensation (FLAP):
    # a subset of ("o", "down"). They must survive save, reload and export.
    added_bias: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        d: dict = {
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
        }
        if self.added_bias:
            d["added_bias"] = list(self.added_bias)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerShape":
        return cls(d["intermediate_size"], d["num_attention_heads"], d["num_key_value_heads"],
                   tuple(d.get("added_bias", ())))


REGISTERED: list[type] = []  # filled by DecoderAdapter.__init_subclass__, in definition order


class DecoderAdapter:
    """Names and layout of a Llama-shaped decoder (RMSNorm, SwiGLU, rotary, GQA)."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    # Attribute paths relative to a decoder layer, by role.
    paths: ClassVar[dict[str, str]] = {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    layers_key: ClassVar[str] = "model.layers"
    embed_key: ClassVar[str] = "model.embed_tokens.weight"
    final_norm_key: ClassVar[str] = "model.norm.weight"
    lm_head_key: ClassVar[str] = "lm_head.weight"
    rotary_key: ClassVar[str] = "model.rotary_emb"  # built anew on load (its tables are not stored)
    # Extra per-layer modules that depend on head_dim only (Qwen3's q_norm/k_norm).
    head_norm_paths: ClassVar[tuple[str, ...]] = ()
    # What llama.cpp's GGUF can express: uniform shapes go to `uniform_gguf_arch`;
    # per-layer shapes need `deci` (biases yes, q/k norms no).
    uniform_gguf_arch: ClassVar[str | None] = "llama"
    nonuniform_gguf_reason: ClassVar[str | None] = None
    # onnxruntime-genai's model "type" in genai_config.json
    genai_type: ClassVar[str] = "llama"
    # transformers' config of the family refuses a hidden size that is not a multiple of the
    # head count even when head_dim is given (Llama's does; Qwen's and Mistral's do not)
    heads_divide_hidden: ClassVar[bool] = False

    def __init_subclass__(cls, **kw):
        """Every adapter class that names model types registers itself (models.ADAPTERS)."""
        super().__init_subclass__(**kw)
        if cls.model_types:
            REGISTERED.append(cls)

    def __init__(self, config):
        self.config = config

    # ---- geometry -------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def head_dim(self) -> int:
        hd = getattr(self.config, "head_dim", None)
        return int(hd) if hd else self.hidden_size // int(self.config.num_attention_heads)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    def layer_shapes(self) -> list[LayerShape]:
        """Per-layer widths from the config (edgeprune's per-layer list when pruned)."""
        per_layer = getattr(self.config, "edgeprune_layers", None)
        if per_layer:
            return [LayerShape.from_dict(d) for d in per_layer]
        c = self.config
        kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        return [LayerShape(int(c.intermediate_size), int(c.num_attention_heads), int(kv))] * self.num_layers

    def has_attention_bias(self) -> bool:
        return bool(getattr(self.config, "attention_bias", False))

    def gguf_architecture(self, shapes: list[LayerShape]) -> str:
        """The llama.cpp architecture that can hold a model with these layer shapes."""
        if len(set(shapes)) == 1:
            return self.uniform_gguf_arch or "llama"
        if self.nonuniform_gguf_reason:
            from ..errors import ExportError

            raise ExportError(self.nonuniform_gguf_reason)
        return "deci"

    def native_bias_roles(self) -> tuple[str, ...]:
        """Roles whose Linear carries a bias in the family's own layout (config flags)."""
        roles: tuple[str, ...] = ATTN_ROLES if self.has_attention_bias() else ()
        if getattr(self.config, "mlp_bias", False):
            roles += MLP_ROLES
        return roles

    # ---- module access --------------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers_key)

    def module(self, layer: nn.Module, role: str) -> nn.Module:
        return layer.get_submodule(self.paths[role])

    def set_module(self, layer: nn.Module, role: str, new: nn.Module) -> None:
        parent, _, name = self.paths[role].rpartition(".")
        setattr(layer.get_submodule(parent) if parent else layer, name, new)

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule(self.paths["q"].rpartition(".")[0])

    def layer_key(self, index: int, role: str, param: str = "weight") -> str:
        """The state-dict key of a layer's parameter in a checkpoint."""
        return f"{self.layers_key}.{index}.{self.paths[role]}.{param}"

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers_key}.{index}."

    def shape_of(self, layer: nn.Module) -> LayerShape:
        """Read the widths off the modules themselves (the truth after surgery)."""
        hd = self.head_dim
        native = self.native_bias_roles()
        added = tuple(r for r in ADDABLE_BIAS_ROLES if r not in native and self.module(layer, r).bias is not None)
        return LayerShape(
            self.module(layer, "down").in_features,
            self.module(layer, "q").out_features // hd,
            self.module(layer, "k").out_features // hd,
            added,
        )

    def sync_attention(self, layer: nn.Module, shape: LayerShape) -> None:
        """Keep the attention's bookkeeping consistent with its (new) head counts."""
        attn = self.attention(layer)
        for name, value in self.attention_counts(shape).items():
            setattr(attn, name, value)

    def attention_counts(self, shape: LayerShape) -> dict[str, int]:
        """The head-count attributes this family's attention module reads in forward. In
        transformers 5 the Llama, Mistral and Qwen2/3 attentions read only the GQA group size
        (query and key/value widths come from the weights); a family that reads more says so here."""
        return {"num_key_value_groups": shape.num_heads // shape.num_kv_heads}

    def set_layer_index(self, layer: nn.Module, index: int) -> None:
        """Renumber the layer after deletions, or the KV cache indexes the wrong slot."""
        self.attention(layer).layer_idx = index
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = index

    # ---- classes used to build one layer at a time (layer streaming) -----------------
    @property
    def modeling(self) -> tuple[str, str]:
        """(transformers module, class prefix), e.g. ("...modeling_llama", "Llama"), read from
        the one family table (pruned_modeling.FAMILIES) that also generates the HF classes."""
        from .pruned_modeling import FAMILIES

        module, config_name, _ = FAMILIES[self.family]
        return module, config_name[: -len("Config")]

    def modeling_module(self):
        import importlib

        return importlib.import_module(self.modeling[0])

    def decoder_layer_class(self) -> type[nn.Module]:
        return getattr(self.modeling_module(), f"{self.modeling[1]}DecoderLayer")

    def rotary_class(self) -> type[nn.Module]:
        return getattr(self.modeling_module(), f"{self.modeling[1]}RotaryEmbedding")

    # ---- parameter accounting -------------------------------------------------------
    def layer_param_count(self, shape: LayerShape) -> int:
        """Parameters of one decoder layer with the given widths (norms and biases count)."""
        d, hd = self.hidden_size, self.head_dim
        q = shape.num_heads * hd
        kv = shape.num_kv_heads * hd
        n = d * q + 2 * d * kv + q * d + 3 * d * shape.intermediate_size + 2 * d
        n += len(self.head_norm_paths) * hd
        return n + self.bias_param_count(shape)

    def bias_param_count(self, shape: LayerShape) -> int:
        """Bias entries of one layer: the family's own plus any added by compensation."""
        d, hd = self.hidden_size, self.head_dim
        out = {"q": shape.num_heads * hd, "k": shape.num_kv_heads * hd, "v": shape.num_kv_heads * hd,
               "o": d, "gate": shape.intermediate_size, "up": shape.intermediate_size, "down": d}
        roles = set(self.native_bias_roles()) | set(shape.added_bias)
        return sum(out[r] for r in roles)

    def head_group_param_count(self, heads_per_group: int) -> int:
        """Parameters removed with one whole KV group (its query heads, k, v and o columns)."""
        d, hd = self.hidden_size, self.head_dim
        n = 2 * d * hd * heads_per_group + 2 * d * hd
        if self.has_attention_bias():
            n += hd * heads_per_group + 2 * hd
        return n

    def ffn_channel_param_count(self) -> int:
        n = 3 * self.hidden_size
        if getattr(self.config, "mlp_bias", False):
            n += 2
        return n

    def embedding_params(self) -> int:
        """Token embedding plus lm_head (counted once when tied): what the ratio leaves out."""
        tied = bool(getattr(self.config, "tie_word_embeddings", False))
        return self.vocab_size * self.hidden_size * (1 if tied else 2)

    def non_layer_nonembedding_params(self) -> int:
        """Non-embedding parameters outside the decoder layers: the final norm."""
        return self.hidden_size


def count_parameters(model: nn.Module, adapter: DecoderAdapter) -> dict[str, int]:
    """Total and non-embedding parameter counts, the ratio's single definition.

    Non-embedding = everything except the token embedding and lm_head (norms and biases
    count). Tied embeddings are counted once in `total`.
    """
    seen: set[int] = set()
    total = 0
    embedding = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if name in (adapter.embed_key, adapter.lm_head_key):
            embedding += p.numel()
    return {"total": total, "non_embedding": total - embedding}


def expected_nonembedding(adapter: DecoderAdapter, shapes: list[LayerShape]) -> int:
    return sum(adapter.layer_param_count(s) for s in shapes) + adapter.non_layer_nonembedding_params()


def linear(in_f: int, out_f: int, bias: bool, like: torch.Tensor) -> nn.Linear:
    return nn.Linear(in_f, out_f, bias=bias, device=like.device, dtype=like.dtype)

"""Hugging Face classes for checkpoints whose layers have different widths.

This file is self-contained (torch + transformers only) because `edgeprune.save` copies it
into every non-uniform checkpoint as `modeling_edgeprune.py` and points `auto_map` at it.
Such a checkpoint keeps its family's own `model_type` (`llama`, `qwen2`, ...), so tools that
only read the config or the tokenizer (`AutoTokenizer.from_pretrained(dir)`) need no custom
code; its per-layer widths are in `edgeprune_layers`. Plain
`AutoModelForCausalLM.from_pretrained(dir)` builds the family's uniform model, finds every
narrowed weight mismatched and fails loudly (transformers refuses mismatched sizes unless
`ignore_mismatched_sizes`), while `trust_remote_code=True` (or `edgeprune.load`) builds each
layer with its own widths and loads the weights strictly. Checkpoints written before kept
`model_type = "edgeprune_<family>"`; `register_with_transformers` still reads them.
"""
from __future__ import annotations

import importlib

from torch import nn

# family -> (transformers module, config class, causal-LM class)
FAMILIES = {
    "llama": ("transformers.models.llama.modeling_llama", "LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("transformers.models.mistral.modeling_mistral", "MistralConfig", "MistralForCausalLM"),
    "qwen2": ("transformers.models.qwen2.modeling_qwen2", "Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("transformers.models.qwen3.modeling_qwen3", "Qwen3Config", "Qwen3ForCausalLM"),
}


def _new_linear(old: nn.Linear, in_f: int, out_f: int, add_bias: bool = False) -> nn.Linear:
    bias = old.bias is not None or add_bias
    return nn.Linear(in_f, out_f, bias=bias, device=old.weight.device, dtype=old.weight.dtype)


def resize_layers(model: nn.Module, per_layer: list[dict]) -> None:
    """Give every decoder layer the widths listed in `config.edgeprune_layers` (weights empty)."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    for layer, shape in zip(model.model.layers, per_layer):
        resize_layer(layer, shape, head_dim)


def resize_layer(layer: nn.Module, shape: dict, head_dim: int) -> None:
    """Replace one decoder layer's projections by empty ones of the given widths.

    `added_bias` lists output projections ("o", "down") that carry a bias the family lacks:
    FLAP-style bias compensation puts one there, and it must reload.
    """
    added = set(shape.get("added_bias", ()))
    f = shape["intermediate_size"]
    h = shape["num_attention_heads"]
    kv = shape["num_key_value_heads"]
    attn, mlp = layer.self_attn, layer.mlp
    d = attn.q_proj.in_features
    attn.q_proj = _new_linear(attn.q_proj, d, h * head_dim)
    attn.k_proj = _new_linear(attn.k_proj, d, kv * head_dim)
    attn.v_proj = _new_linear(attn.v_proj, d, kv * head_dim)
    attn.o_proj = _new_linear(attn.o_proj, h * head_dim, d, "o" in added)
    attn.num_key_value_groups = h // kv
    mlp.gate_proj = _new_linear(mlp.gate_proj, d, f)
    mlp.up_proj = _new_linear(mlp.up_proj, d, f)
    mlp.down_proj = _new_linear(mlp.down_proj, f, d, "down" in added)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = f


def _make_classes(family: str, legacy: bool = False):
    """The config and model classes of one family. The config class keeps the family's
    `model_type`, so loading it through `auto_map` raises no "model of type X to instantiate
    a model of type Y" warning; `legacy` makes the pair for `edgeprune_<family>` checkpoints."""
    module_name, config_name, model_name = FAMILIES[family]
    mod = importlib.import_module(module_name)
    base_config = getattr(importlib.import_module(module_name.replace("modeling_", "configuration_")), config_name)
    base_model = getattr(mod, model_name)
    suffix, model_type = ("Legacy", f"edgeprune_{family}") if legacy else ("", base_config.model_type)

    config_cls = type(
        f"EdgePrune{config_name}{suffix}", (base_config,), {"model_type": model_type, "__module__": __name__}
    )

    def __init__(self, config):
        base_model.__init__(self, config)
        resize_layers(self, config.edgeprune_layers)
        self.post_init()

    model_cls = type(
        f"EdgePrune{model_name}{suffix}",
        (base_model,),
        {"config_class": config_cls, "__init__": __init__, "__module__": __name__},
    )
    return config_cls, model_cls


# One pair of classes per family, generated from FAMILIES (adding a family is one line there),
# published under their own names, which is what a checkpoint's `auto_map` points at.
CLASSES = {family: _make_classes(family) for family in FAMILIES}
LEGACY = {family: _make_classes(family, legacy=True) for family in FAMILIES}
globals().update({cls.__name__: cls for pair in (*CLASSES.values(), *LEGACY.values()) for cls in pair})


def config_class(model_type: str):
    """The config class that reads a non-uniform checkpoint of `model_type` (`llama`, or a
    legacy `edgeprune_llama`)."""
    for family, (cfg, _) in CLASSES.items():
        if model_type == cfg.model_type:
            return cfg
        if model_type == f"edgeprune_{family}":
            return LEGACY[family][0]
    raise ValueError(f"no edgeprune classes for model_type {model_type!r}")


def register_with_transformers() -> None:
    """Let Auto* classes resolve `edgeprune_<family>` in this process (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for config_cls, model_cls in LEGACY.values():
        try:
            AutoConfig.register(config_cls.model_type, config_cls)
        except ValueError:
            pass  # already registered
    for config_cls, model_cls in (*CLASSES.values(), *LEGACY.values()):
        try:  # so that from_config(an instance of our config class) builds the per-layer model
            AutoModelForCausalLM.register(config_cls, model_cls)
        except ValueError:
            pass

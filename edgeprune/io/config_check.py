"""Every config.json field the adapters read, checked for type and range before any work.

transformers builds a model from whatever the file says and fails deep inside (a
`KeyError` for an unknown rope type, an `AttributeError` for a list); here each field is
refused with its name, its value and what it must be.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelError

# Fields every supported family needs: positive whole numbers.
POSITIVE_INTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
OPTIONAL_POSITIVE_INTS = ("num_key_value_heads", "head_dim", "max_position_embeddings")
POSITIVE_FLOATS = ("rope_theta", "rms_norm_eps")
# No released decoder comes near 2^24 in a width, a head count, a vocabulary or a depth: a
# larger value is a typo, and would be allocated (rotary tables, per-layer lists) before the
# weights are read and found to disagree. A context may be longer (GGUF stores it in 32 bits).
MAX_DIM, MAX_CONTEXT = 2**24, 2**32 - 1
# The dtypes a config may name for its weights (transformers reads the name as a torch dtype).
CONFIG_DTYPES = ("float32", "float16", "bfloat16", "float64", "auto")


def _rope_types() -> tuple[str, ...]:
    try:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    except ImportError:  # torch-free installs: the exporters' runtimes only
        return ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
    return ("default", *ROPE_INIT_FUNCTIONS)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


FIX = "fix config.json or re-download the model"


def check_kinds(d: dict, path: Path) -> None:
    """The fields read before the family is known, and those transformers reads by kind:
    model_type, architectures, the weights' dtype name, tie_word_embeddings."""
    if not isinstance(d.get("model_type", ""), str):
        raise ModelError(f"{path}: model_type must be a string such as \"llama\", got {d['model_type']!r}; {FIX}")
    archs = d.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise ModelError(f"{path}: architectures must be a list of class names such as [\"LlamaForCausalLM\"], "
                         f"got {archs!r}; {FIX}")
    for key in ("torch_dtype", "dtype"):
        if d.get(key) is not None and d[key] not in CONFIG_DTYPES:
            raise ModelError(f"{path}: {key} {d[key]!r} is not a dtype transformers reads; use one of "
                             f"{', '.join(CONFIG_DTYPES)}; {FIX}")
    tie = d.get("tie_word_embeddings")
    if tie is not None and not isinstance(tie, bool):
        raise ModelError(f"{path}: tie_word_embeddings must be true or false, got {tie!r}; {FIX}")


def check_config(d: dict, path: Path) -> None:
    """Refuse a config.json the adapters cannot read, naming the field and the fix."""
    fix = FIX  # d is a dict: checkpoint.read_config_dict made sure
    check_kinds(d, path)
    if isinstance(d.get("edgeprune_layers"), list):
        _check_layers(d, path)
    for key in POSITIVE_INTS + OPTIONAL_POSITIVE_INTS:
        v = d.get(key)
        if v is None and key in OPTIONAL_POSITIVE_INTS:
            continue
        if not _is_int(v) or v <= 0:
            raise ModelError(f"{path}: {key} must be a whole number > 0, got {v!r}; {fix}")
        top = MAX_CONTEXT if key == "max_position_embeddings" else MAX_DIM
        if v > top:
            raise ModelError(f"{path}: {key} {v} is beyond any model's (at most {top}); {fix}")
    for key in POSITIVE_FLOATS:
        v = d.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise ModelError(f"{path}: {key} must be a number > 0, got {v!r}; {fix}")
    heads, kv = d["num_attention_heads"], d.get("num_key_value_heads") or d["num_attention_heads"]
    if heads % kv:
        raise ModelError(f"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}; {fix}")
    if d["hidden_size"] % heads and (not d.get("head_dim") or _family_needs_divisible(d)):
        raise ModelError(f"{path}: hidden_size {d['hidden_size']} is not a multiple of num_attention_heads {heads}"
                         + ("" if d.get("head_dim") else " and no head_dim is given") + f"; {fix}")
    _check_rope(d, path)


def _family_needs_divisible(d: dict) -> bool:
    from ..models import ADAPTERS, family_of

    kind = family_of(d.get("model_type") or "")
    return any(kind in a.model_types and a.heads_divide_hidden for a in ADAPTERS)


def _check_rope(d: dict, path: Path) -> None:
    for key in ("rope_scaling", "rope_parameters"):
        rs = d.get(key)
        if rs is None:
            continue
        if not isinstance(rs, dict):
            raise ModelError(f"{path}: {key} must be an object such as {{\"rope_type\": \"llama3\", ...}} or null, "
                             f"got {rs!r}; fix config.json")
        kind = rs.get("rope_type", rs.get("type", "default"))
        if kind not in _rope_types():
            raise ModelError(f"{path}: {key} type {kind!r} is not one transformers implements; supported: "
                             f"{', '.join(_rope_types())}; fix config.json")


def _check_layers(d: dict, path: Path) -> None:
    per = d["edgeprune_layers"]
    if len(per) != d.get("num_hidden_layers"):
        raise ModelError(f"{path}: edgeprune_layers lists {len(per)} layers but num_hidden_layers is "
                         f"{d.get('num_hidden_layers')!r}; re-save the pruned model")
    for i, layer in enumerate(per):
        for key in ("intermediate_size", "num_attention_heads", "num_key_value_heads"):
            v = layer.get(key) if isinstance(layer, dict) else None
            if not _is_int(v) or v < 0:
                raise ModelError(f"{path}: edgeprune_layers[{i}].{key} must be a whole number >= 0, got {v!r}; "
                                 "re-save the pruned model")

"""Architecture adapters: one per family. `get_adapter(config)` picks it or refuses clearly."""
from __future__ import annotations

from ..errors import ModelError
from . import llama, qwen  # noqa: F401  (each adapter class registers itself on definition)
from .base import REGISTERED, DecoderAdapter, LayerShape, count_parameters, expected_nonembedding

ADAPTERS: tuple[type[DecoderAdapter], ...] = tuple(REGISTERED)
SUPPORTED = tuple(t for a in ADAPTERS for t in a.model_types)


def family_of(model_type: str) -> str:
    """`edgeprune_llama` -> `llama`; plain types unchanged."""
    return model_type[len("edgeprune_"):] if model_type.startswith("edgeprune_") else model_type


def get_adapter(config) -> DecoderAdapter:
    model_type = family_of(getattr(config, "model_type", "") or "")
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls(config)
    raise ModelError(
        f"unsupported architecture '{model_type or 'unknown'}'; edgeprune supports: "
        f"{', '.join(SUPPORTED)} (decoder-only, RMSNorm + SwiGLU + rotary)"
    )


__all__ = [
    "ADAPTERS", "SUPPORTED", "DecoderAdapter", "LayerShape", "count_parameters",
    "expected_nonembedding", "family_of", "get_adapter",
]

"""edgeprune: structured post-training pruning for edge deployment.

    import edgeprune
    model = edgeprune.load("build/model")          # a transformers PreTrainedModel
    result = edgeprune.prune("my-llama", "search", ratio=0.2, calib="wikitext2", out="pruned/")

Attributes are imported lazily, so that `edgeprune bench` runs on a device where only
the runtime (llama-cpp-python or onnxruntime) and numpy are installed, without torch.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load": ("io.checkpoint", "load"),
    "save": ("io.checkpoint", "save"),
    "apply_plan": ("apply.surgery", "apply_plan"),
    "Plan": ("plan", "Plan"),
    "LayerPlan": ("plan", "LayerPlan"),
    "prune": ("run.pipeline", "prune"),
    "EdgePruneError": ("errors", "EdgePruneError"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]

"""What an exporter reads: a model's config, layer shapes and tensors by Hugging Face key.

`WeightsView.from_dir` reads a checkpoint lazily (one tensor at a time, memory-mapped), so
a GGUF of an 8B model is written without the model ever being in memory;
`WeightsView.from_model` serves an in-memory model (the Python API, tests) the same way.
"""
from __future__ import annotations

from pathlib import Path

import torch

from edgeprune.models import LayerShape, get_adapter


class WeightsView:
    """Config, adapter, per-layer shapes and `get(key)` over a checkpoint or a model."""

    def __init__(self, config, getter, keys: set[str], shape_of, model_dir: Path | None, dtype: torch.dtype):
        self.config = config
        self.adapter = get_adapter(config)
        self._get, self._keys, self._shape = getter, keys, shape_of
        self.model_dir = model_dir
        self.dtype = dtype  # the stored dtype (what an unquantised export may keep)
        self.shapes: list[LayerShape] = self._layer_shapes()

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "WeightsView":
        from edgeprune.io.checkpoint import load_config
        from edgeprune.io.weights import open_store

        model_dir = Path(model_dir)
        cfg = load_config(model_dir)
        store = open_store(model_dir, cfg)
        keys = set(store.keys()) | set(store.alias)
        return cls(cfg, store.__getitem__, keys, store.shape, model_dir, store.dtype)

    @classmethod
    def from_model(cls, model: torch.nn.Module, model_dir: str | Path | None = None) -> "WeightsView":
        sd = model.state_dict()
        dtype = next(model.parameters()).dtype
        return cls(model.config, lambda k: sd[k].detach(), set(sd), lambda k: tuple(sd[k].shape),
                   Path(model_dir) if model_dir else None, dtype)

    def _layer_shapes(self) -> list[LayerShape]:
        """Shapes read off the tensors (the truth), biases added by compensation included."""
        ad, hd = self.adapter, self.adapter.head_dim
        native = ad.native_bias_roles()
        out = []
        for i in range(ad.num_layers):
            added = tuple(r for r in ("o", "down") if r not in native and self.has(ad.layer_key(i, r, "bias")))
            out.append(LayerShape(self.shape(ad.layer_key(i, "down"))[1], self.shape(ad.layer_key(i, "q"))[0] // hd,
                                  self.shape(ad.layer_key(i, "k"))[0] // hd, added))
        return out

    def total_elements(self) -> int:
        """Elements of every stored tensor (a tied output counted once)."""
        import math

        tied = bool(getattr(self.config, "tie_word_embeddings", False))
        keys = [k for k in self._keys if not (tied and k == self.adapter.lm_head_key and self.adapter.embed_key in self._keys)]
        return sum(math.prod(self.shape(k)) for k in keys)

    def has(self, key: str) -> bool:
        return key in self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._shape(key))

    def get(self, key: str) -> torch.Tensor:
        return self._get(key)

    @property
    def num_layers(self) -> int:
        return len(self.shapes)

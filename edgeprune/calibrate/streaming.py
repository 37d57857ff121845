"""The one layer-streaming driver every method uses.

`LayerSource` hands out one decoder layer at a time, read from the checkpoint's safetensors
shards (never the whole model) or from an in-memory model. `Activations` holds the hidden
states of the calibration windows between layers, in memory or on disk. `GramCollector`
hooks a linear map and accumulates its input Gram matrix X^T X (and per-channel sums),
which is all COMP, SlimGPT, Wanda-sp and FLAP need from activations. `walk` is the one
layer loop: it owns the activations' lifetime and offers one hook to edit a layer before its
forward pass (SlimGPT, COMP's pruned-inputs mode); methods, the imatrix pass and the streamed
PyTorch reference all go through it (`stream_dense` is its generator form for the methods
that score every layer on one dense pass).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from .. import defaults, dist
from ..io.checkpoint import load_config
from ..errors import DataError, ModelError
from ..models import DecoderAdapter, LayerShape, get_adapter
from ..models.pruned_modeling import resize_layer
from .activations import Activations, GramCollector  # noqa: F401  (re-exported: the driver's types)


def _trim_heap() -> None:
    """glibc keeps freed mid-sized tensors (< 32 MB) in its arenas; return them to the OS so
    that the resident set reflects one layer at a time rather than creeping with depth."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class LayerSource:
    """One decoder layer at a time, plus embedding and rotary tables."""

    config: object
    adapter: DecoderAdapter
    device: torch.device
    dtype: torch.dtype

    def __init__(self, config, device, dtype):
        config._attn_implementation = "sdpa"  # causal masking without an explicit mask
        self.config = config
        self.adapter = get_adapter(config)
        self.device = torch.device(device)
        self.dtype = dtype
        self.shapes: list[LayerShape] = self.adapter.layer_shapes()
        self._rotary = self.adapter.rotary_class()(config=config).to(self.device)

    @property
    def num_layers(self) -> int:
        return len(self.shapes)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer(self, i: int) -> nn.Module:
        raise NotImplementedError

    def release_embedding(self) -> None:
        """Drop any cached embedding matrix (after the calibration windows are embedded)."""

    def position_embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(x.shape[1], device=self.device).unsqueeze(0)
        return self._rotary(x, pos)

    @torch.no_grad()
    def embed_all(self, windows: torch.Tensor, batch_size: int, on_disk: bool = False, workdir=None) -> Activations:
        acts = Activations(on_disk=on_disk, workdir=workdir)
        for s in range(0, windows.shape[0], batch_size):
            acts.append(self.embed(windows[s : s + batch_size].to(self.device)))
        return acts

    def start(self, windows: torch.Tensor, batch_size: int, on_disk: bool = False, workdir=None) -> Activations:
        """Every pass begins here: embed the windows, then drop the embedding matrix. In a
        distributed run this rank embeds only its contiguous slice of the windows; the
        statistics gathered on them are summed across ranks by the driver (`run_collecting`,
        and the methods' scalar sums), so every method sees the whole set's."""
        acts = self.embed_all(windows[dist.shard(windows.shape[0])], batch_size, on_disk, workdir)
        self.release_embedding()
        return acts

    @torch.no_grad()
    def run(self, layer: nn.Module, acts: Activations, check_finite: bool = True) -> Activations:
        """Forward every batch through one decoder layer (verification passes check_finite=False
        and judges the logits itself)."""
        out = acts.empty_like()
        for x in acts:
            x = x.to(self.device)
            y = layer(x, attention_mask=None, position_embeddings=self.position_embeddings(x))
            y = y[0] if isinstance(y, tuple) else y
            if check_finite and not torch.isfinite(y).all():
                raise DataError("NaN or Inf in calibration activations; check the model weights and the calibration text")
            out.append(y)
        return out


class CheckpointSource(LayerSource):
    """Streams layers from a local checkpoint (any layout `WeightStore` reads); holds one
    layer at a time. Tensors are cast to the compute dtype as they are read."""

    def __init__(self, model_dir: str | Path, device="cpu", dtype=torch.float32):
        from ..io.weights import open_store

        self.model_dir = Path(model_dir)
        super().__init__(load_config(model_dir), device, dtype)
        self.store = open_store(model_dir, self.config)
        self._embed: torch.Tensor | None = None

    def tensor(self, key: str) -> torch.Tensor:
        return self.store[key]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self._embed is None:  # kept in the stored dtype; rows are cast after the lookup
            self._embed = self.tensor(self.adapter.embed_key).to(self.device)
        return nn.functional.embedding(ids.to(self.device), self._embed).to(self.dtype)

    def release_embedding(self) -> None:
        self._embed = None

    def final_norm_weight(self) -> torch.Tensor:
        return self.tensor(self.adapter.final_norm_key)

    def lm_head_weight(self) -> torch.Tensor:
        return self.tensor(self.adapter.lm_head_key)

    def check_complete(self) -> None:
        """Every tensor the config implies is in the checkpoint (shapes checked on meta
        layers, nothing read): a missing tensor is refused before any work."""
        ad = self.adapter
        for key in (ad.embed_key, ad.final_norm_key) + (() if getattr(self.config, "tie_word_embeddings", False) else (ad.lm_head_key,)):
            if key not in self.store:
                raise ModelError(f"{self.model_dir}: the checkpoint lacks {key}; the weights do not match config.json")
        rows = (ad.vocab_size, ad.hidden_size)
        for key in (ad.embed_key, ad.lm_head_key):
            if key in self.store and tuple(self.store.shape(key)) != rows:
                raise ModelError(f"{self.model_dir}: {key} has shape {tuple(self.store.shape(key))} but config.json "
                                 f"implies {rows} (vocab_size, hidden_size); fix vocab_size in config.json to match the weights")
        for i in range(self.num_layers):
            self._meta_layer(i, check=True)

    def _meta_layer(self, i: int, check: bool = False) -> nn.Module:
        with torch.device("meta"):
            layer = self.adapter.decoder_layer_class()(self.config, i)
            per_layer = getattr(self.config, "edgeprune_layers", None)
            if per_layer:
                resize_layer(layer, per_layer[i], self.adapter.head_dim)
        prefix = self.adapter.layer_prefix(i)
        for k, v in layer.state_dict().items():
            if prefix + k not in self.store:
                raise ModelError(f"{self.model_dir}: layer {i} lacks {prefix + k} in the checkpoint; "
                                 "the weights do not match config.json (re-download the model)")
            if check and tuple(self.store.shape(prefix + k)) != tuple(v.shape):
                raise ModelError(f"{self.model_dir}: {prefix + k} has shape {tuple(self.store.shape(prefix + k))}, "
                                 f"config.json implies {tuple(v.shape)}; the weights do not match their config")
        return layer

    def layer(self, i: int) -> nn.Module:
        _trim_heap()  # hand the previous layer's freed pages back before reading the next one
        layer = self._meta_layer(i)
        prefix = self.adapter.layer_prefix(i)
        have = {k[len(prefix):] for k in self.store.keys() if k.startswith(prefix)}
        state = {k: self.tensor(prefix + k).to(self.device, self.dtype) for k in have}
        layer.load_state_dict(state, strict=True, assign=True)
        return layer.to(self.device, self.dtype).eval()


class ModuleSource(LayerSource):
    """The same interface over a model already in memory (tests, the Python API)."""

    def __init__(self, model: nn.Module, device=None, dtype=torch.float32):
        self.model = model
        dev = device or next(model.parameters()).device
        super().__init__(model.config, dev, dtype)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids.to(self.device)).to(self.dtype)

    def final_norm_weight(self) -> torch.Tensor:
        return self.model.get_submodule(self.adapter.final_norm_key.rpartition(".")[0]).weight.detach()

    def lm_head_weight(self) -> torch.Tensor:
        return self.model.get_output_embeddings().weight.detach()

    def layer(self, i: int) -> nn.Module:
        import copy

        return copy.deepcopy(self.adapter.layers(self.model)[i]).to(self.device, self.dtype).eval()


Edit = Callable[[int, nn.Module, Activations], "Activations | None"]
Seen = Callable[[int, Activations, Activations], None]


def walk(source: LayerSource, acts: Activations, layers: Iterable[int], *, edit: Edit | None = None,
         seen: Seen | None = None, check_finite: bool = True) -> Activations:
    """The one layer loop. Each layer in `layers` is built (`source.layer(i)`), handed to
    `edit(i, layer, inputs)`, which may prune it in place and may return outputs it already
    computed; it is run on its inputs if `edit` returned none; `seen(i, inputs, outputs)` looks
    at both; the outputs become the next layer's inputs. Intermediate activations are closed
    as soon as they are consumed, the caller's `acts` never: the last outputs are returned
    (close them with `done(out, acts)`)."""
    cur = acts
    for i in layers:
        layer = source.layer(i)
        out = edit(i, layer, cur) if edit is not None else None
        if out is None:
            out = source.run(layer, cur, check_finite)
        if seen is not None:
            seen(i, cur, out)
        if cur is not acts:
            cur.close()
        cur = out
        del layer
    return cur


def done(out: Activations, acts: Activations) -> None:
    """Close a walk's outputs and its inputs (once, if they are the same)."""
    if out is not acts:
        out.close()
    acts.close()


def run_collecting(source: LayerSource, layer: nn.Module, acts: Activations, roles: tuple[str, ...],
                   full: bool = True) -> tuple[Activations, dict[str, GramCollector]]:
    """Forward `acts` through `layer` while accumulating the input Gram of each role's linear
    (only its diagonal with full=False), summed over every rank's windows."""
    cols = {r: GramCollector(source.adapter.module(layer, r), full=full) for r in roles}
    try:
        out = source.run(layer, acts)
    finally:
        for c in cols.values():
            c.remove()
    for c in cols.values():
        c.reduce()
    return out, cols


def stream_dense(source: LayerSource, calib: torch.Tensor, roles: tuple[str, ...], batch_size: int = defaults.BATCH_SIZE,
                 offload: bool = False) -> Iterator[tuple[int, nn.Module, dict[str, GramCollector]]]:
    """Every layer in order, with the input Grams of `roles` collected on the DENSE model's
    inputs (the methods that score all layers on one unpruned pass: Wanda-sp, FLAP).
    One layer and two activation sets are alive at a time."""
    acts = source.start(calib, batch_size, offload)
    cur = acts
    try:
        for i in range(source.num_layers):
            layer = source.layer(i)
            out, cols = run_collecting(source, layer, cur, roles, full=False)
            yield i, layer, cols
            if cur is not acts:
                cur.close()
            cur = out
    finally:
        if cur is not acts:
            cur.close()
        acts.close()


def open_source(model: str | Path | nn.Module, device="cpu", dtype=torch.float32) -> LayerSource:
    if isinstance(model, nn.Module):
        return ModuleSource(model, device, dtype)
    return CheckpointSource(model, device, dtype)

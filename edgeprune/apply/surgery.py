"""Physical surgery: applies any `Plan` to any supported model, in place.

Removed layers are deleted and the rest renumbered (their `layer_idx` drives the KV
cache); q/k/v/gate/up rows and o/down columns are sliced into new, smaller `nn.Linear`s;
re-fitted tensors from the plan are written in; the config is updated so that
transformers' forward, `generate` and cache work, and so that the checkpoint reloads.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models import DecoderAdapter, LayerShape, get_adapter
from ..plan import Plan


def _slice_linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = lin.weight.data
    b = lin.bias.data if lin.bias is not None else None
    if rows is not None:
        w = w.index_select(0, rows)
        b = b.index_select(0, rows) if b is not None else None
    if cols is not None:
        w = w.index_select(1, cols)
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def _rows_of_units(units: list[int], size: int, device) -> torch.Tensor:
    idx = [u * size + k for u in units for k in range(size)]
    return torch.tensor(idx, dtype=torch.long, device=device)


def _apply_tensors(adapter: DecoderAdapter, layer: nn.Module, orig_index: int, plan: Plan) -> None:
    for role in ("q", "k", "v", "o", "gate", "up", "down"):
        lin = adapter.module(layer, role)
        prefix = f"L{orig_index}.{role}."
        if prefix + "weight" in plan.tensors:
            w = plan.tensors[prefix + "weight"].to(lin.weight)
            if w.shape != lin.weight.shape:
                raise ValueError(f"plan tensor {prefix}weight has shape {tuple(w.shape)}, layer has {tuple(lin.weight.shape)}")
            lin.weight.data.copy_(w)
        if prefix + "col_scale" in plan.tensors:
            s = plan.tensors[prefix + "col_scale"].to(lin.weight)
            lin.weight.data.mul_(s.unsqueeze(0))
        if prefix + "bias" in plan.tensors:
            b = plan.tensors[prefix + "bias"].to(lin.weight)
            if lin.bias is None:
                new = nn.Linear(lin.in_features, lin.out_features, bias=True, device=lin.weight.device, dtype=lin.weight.dtype)
                new.weight.data.copy_(lin.weight.data)
                new.bias.data.copy_(b)
                adapter.set_module(layer, role, new)
            else:
                lin.bias.data.copy_(b)


def slice_layer(adapter: DecoderAdapter, layer: nn.Module, orig_index: int, plan: Plan, shape: LayerShape) -> LayerShape:
    """Slice one decoder layer to the plan's kept units; returns its new shape."""
    lp = plan.layer(orig_index)
    hd = adapter.head_dim
    dev = adapter.module(layer, "q").weight.device
    kv, heads = plan.ordered_heads(orig_index, shape)
    if len(heads) != shape.num_heads or heads != sorted(heads) or len(kv) != shape.num_kv_heads:
        q_rows = _rows_of_units(heads, hd, dev)
        kv_rows = _rows_of_units(kv, hd, dev)
        adapter.set_module(layer, "q", _slice_linear(adapter.module(layer, "q"), rows=q_rows))
        adapter.set_module(layer, "k", _slice_linear(adapter.module(layer, "k"), rows=kv_rows))
        adapter.set_module(layer, "v", _slice_linear(adapter.module(layer, "v"), rows=kv_rows))
        adapter.set_module(layer, "o", _slice_linear(adapter.module(layer, "o"), cols=q_rows))
    if lp.ffn_keep is not None and len(lp.ffn_keep) != shape.intermediate_size:
        ch = torch.tensor(sorted(lp.ffn_keep), dtype=torch.long, device=dev)
        adapter.set_module(layer, "gate", _slice_linear(adapter.module(layer, "gate"), rows=ch))
        adapter.set_module(layer, "up", _slice_linear(adapter.module(layer, "up"), rows=ch))
        adapter.set_module(layer, "down", _slice_linear(adapter.module(layer, "down"), cols=ch))
    _apply_tensors(adapter, layer, orig_index, plan)
    new_shape = adapter.shape_of(layer)
    adapter.sync_attention(layer, new_shape)
    return new_shape


def update_config(cfg, adapter: DecoderAdapter, shapes: list[LayerShape]) -> None:
    """Write the new geometry into a transformers config so that forward, cache and reload agree."""
    cfg.head_dim = adapter.head_dim  # keep head_dim even if head counts change
    cfg.num_hidden_layers = len(shapes)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = list(cfg.layer_types)[: len(shapes)]
    if getattr(cfg, "max_window_layers", None) is not None:
        cfg.max_window_layers = min(cfg.max_window_layers, len(shapes))
    # A plain config can express uniform FFN widths; changed head counts cannot go there
    # (transformers derives and validates head_dim from num_attention_heads).
    orig = adapter.layer_shapes()[0] if not getattr(cfg, "edgeprune_layers", None) else None
    uniform = (
        len(set(shapes)) == 1 and orig is not None and not shapes[0].added_bias
        and (shapes[0].num_heads, shapes[0].num_kv_heads) == (orig.num_heads, orig.num_kv_heads)
    )
    if uniform:
        cfg.intermediate_size = shapes[0].intermediate_size
        if hasattr(cfg, "edgeprune_layers"):
            del cfg.edgeprune_layers
    else:
        cfg.edgeprune_layers = [s.as_dict() for s in shapes]


def apply_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """Apply `plan` to `model` in place and return it (eval mode, same device/dtype)."""
    adapter = get_adapter(model.config)
    plan.validate(adapter)
    base_shapes = adapter.layer_shapes()
    layers = adapter.layers(model)
    kept = plan.kept_layers()
    new_shapes: list[LayerShape] = []
    with torch.no_grad():
        for i in kept:
            new_shapes.append(slice_layer(adapter, layers[i], i, plan, base_shapes[i]))
    new_layers = nn.ModuleList([layers[i] for i in kept])
    for new_index, layer in enumerate(new_layers):
        adapter.set_layer_index(layer, new_index)
    parent, _, name = adapter.layers_key.rpartition(".")
    setattr(model.get_submodule(parent), name, new_layers)
    update_config(model.config, adapter, new_shapes)
    model.eval()
    return model

"""ONNX export: `torch.onnx.export(dynamo=True)` of a decoder with past key values.

Inputs follow Optimum / ONNX Runtime GenAI names: `input_ids`, `attention_mask`,
`position_ids`, `past_key_values.{i}.key|value` ([batch, kv_heads_i, past, head_dim], head
counts static per layer, past length may be 0 so one graph does prefill and decode).
Outputs: `logits` [batch, seq, vocab], then `present.{i}.key|value`. Per-layer KV head
counts are why optimum's exporter (one head count for every layer) cannot be used here.
"""
from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import torch
from torch import nn

from edgeprune.dtypes import torch_dtype
from edgeprune.models import get_adapter

from .names import ONNX_MODEL
from .runtime_imports import quiet_runtime_logs, require

EXTERNAL_DATA_THRESHOLD = 2 * 1024**3  # protobuf's 2 GB limit
# onnxscript's graph optimizer (constant folding) holds a second copy of the weights: 2.1x the
# artifact at 2.5 GB against 1.04x without (benchmarks/scale.py). ONNX Runtime applies its
# own graph optimisations when it loads the model, so large models skip it.
OPTIMIZE_BELOW_BYTES = 1024**3


class PastKeyValueWrapper(nn.Module):
    """Flat per-layer past tensors in, logits and flat presents out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past):
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(past):
            cache.update(k, v, i)
        # newer transformers name the argument `cache` (`past_key_values` is deprecated there)
        kw = {"cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values": cache}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **kw)
        presents = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    ins = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    outs = ["logits"] + [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return ins, outs


def kv_heads(model) -> list[int]:
    ad = get_adapter(model.config)
    return [ad.shape_of(layer).num_kv_heads for layer in ad.layers(model)]


def write_onnx(model: nn.Module, out_dir: Path, dtype: str = "f32") -> Path:
    """Export `model` into `out_dir/model.onnx` (weights > 2 GB go to external data)."""
    require("onnxscript", "onnx", "ONNX export")
    onnx = require("onnx", "onnx", "ONNX export")
    ad = get_adapter(model.config)
    hd = ad.head_dim
    tdtype = torch_dtype(dtype)
    model = model.to(tdtype).eval()
    model.config.use_cache = True
    heads = kv_heads(model)
    L = len(heads)
    b, t, p = 2, 4, 3
    past = [(torch.zeros(b, h, p, hd, dtype=tdtype), torch.zeros(b, h, p, hd, dtype=tdtype)) for h in heads]
    ids = torch.ones(b, t, dtype=torch.long)
    mask = torch.ones(b, p + t, dtype=torch.long)
    pos = torch.arange(p, p + t).expand(b, t)
    Dim = torch.export.Dim
    B, S, P, T = Dim("batch", min=1, max=256), Dim("sequence", min=1, max=32768), Dim("past_sequence", min=0, max=32768), Dim("total_sequence", min=1, max=65536)
    dyn = {"input_ids": {0: B, 1: S}, "attention_mask": {0: B, 1: T}, "position_ids": {0: B, 1: S},
           "past": [({0: B, 2: P}, {0: B, 2: P}) for _ in range(L)]}
    ins, outs = io_names(L)
    out_dir.mkdir(parents=True, exist_ok=True)
    from edgeprune.io.outdir import OWNER

    (out_dir / OWNER).write_text("written by edgeprune export; --force may replace this folder\n")
    path = out_dir / ONNX_MODEL
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    quiet_runtime_logs("torch.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(PastKeyValueWrapper(model), (ids, mask, pos, past), dynamo=True,
                                 dynamic_shapes=dyn, input_names=ins, output_names=outs, verbose=False,
                                 optimize=nbytes < OPTIMIZE_BELOW_BYTES)
    prog.save(str(path), external_data=nbytes > EXTERNAL_DATA_THRESHOLD)
    onnx.checker.check_model(str(path) if nbytes > EXTERNAL_DATA_THRESHOLD else onnx.load(str(path)))
    return path


def check_graph(path: Path, view) -> None:
    """The checks optimum's exporter does after export, against per-layer head counts
    (`view`: an `exporters.source.WeightsView`)."""
    ort = require("onnxruntime", "onnx", "ONNX verification")
    from edgeprune.errors import ExportError

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # names only: no optimised copy
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    heads = [s.num_kv_heads for s in view.shapes]
    ins, outs = io_names(len(heads))
    got_in = [i.name for i in sess.get_inputs()]
    got_out = [o.name for o in sess.get_outputs()]
    if got_in != ins or got_out != outs:
        raise ExportError(f"ONNX graph names differ from the contract: inputs {got_in[:4]}..., outputs {got_out[:3]}...")
    hd = view.adapter.head_dim
    for i, h in enumerate(heads):
        shape = sess.get_inputs()[3 + 2 * i].shape
        if shape[1] != h or shape[3] != hd:
            raise ExportError(f"past_key_values.{i}.key has shape {shape}, expected [batch, {h}, past, {hd}]")


def _child(model_dir: str, out_dir: str, dtype: str, conn) -> None:
    """Runs in a fresh process: load in the export dtype, export, report the peak."""
    try:
        import edgeprune
        from edgeprune.measure.memory import process_peak_bytes

        model = edgeprune.load(model_dir, dtype=torch_dtype(dtype))
        write_onnx(model, Path(out_dir), dtype)
        conn.send(("ok", process_peak_bytes()))
    except BaseException as e:  # noqa: BLE001 - everything is reported to the parent as one line
        from edgeprune.errors import EdgePruneError

        kind = "user" if isinstance(e, EdgePruneError) else "bug"
        conn.send((kind, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]))
    finally:
        conn.close()


def write_onnx_isolated(model_dir: Path, out_dir: Path, dtype: str) -> tuple[Path, int]:
    """Export a checkpoint directory in a child process; returns (model.onnx, child's peak RSS).

    torch.onnx's exported graph keeps references to every weight after the export returns
    (a whole model's worth of RSS for the rest of the command); a child process gives all
    of it back before verification loads the artifact in ONNX Runtime.
    """
    import multiprocessing as mp

    from edgeprune.errors import EdgePruneError, ExportError

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(str(model_dir), str(out_dir), dtype, child), daemon=True)
    proc.start()
    child.close()
    try:
        kind, value = parent.recv()
    except EOFError:
        proc.join()
        raise ExportError(f"the ONNX exporter process died (exit code {proc.exitcode}; out of memory?); "
                          "free memory or export on a larger machine") from None
    proc.join()
    if kind == "user":
        raise EdgePruneError(value.split(": ", 1)[-1])
    if kind == "bug":
        raise ExportError(f"torch.onnx.export failed ({value}); please report it with the command")
    return out_dir / ONNX_MODEL, int(value)

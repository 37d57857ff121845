"""Streamed apply + save: the pruned checkpoint written layer by layer from the source.

For each kept layer: read it from the source checkpoint (in float32, the maths dtype),
slice it with the one surgery module (`surgery.slice_layer`, re-fitted tensors included),
cast it to the output dtype and append its tensors to the current shard. Nothing but one
layer (and the embedding while it is copied) is ever in memory, and the output keeps the
source's dtype (bf16 in, bf16 out) unless `dtype` says otherwise. The result is bit for bit
what the in-memory path (`apply_plan` on a float32 model, then a cast) gives; a test holds
the two against each other.
"""
from __future__ import annotations

import errno
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..io.checkpoint import finish_dir, load_config, staged_dir
from ..models import expected_nonembedding
from ..plan import Plan
from ..calibrate.streaming import CheckpointSource
from .surgery import slice_layer, update_config
from ..io.tensorfiles import DEFAULT_SHARD_BYTES, ShardWriter, check_free_space, disk_full_error
from ..io.weights import CONFIG_DTYPE_NAME


def output_bytes(source: CheckpointSource, plan: Plan, dtype: torch.dtype) -> int:
    """Bytes the pruned weights will take (an upper bound for the free-space check)."""
    ad = source.adapter
    n = expected_nonembedding(ad, plan.result_shapes(ad)) + ad.embedding_params()
    return n * torch.tensor([], dtype=dtype).element_size()


def _tensors(source: CheckpointSource, plan: Plan, dtype: torch.dtype, progress: bool):
    """(name, tensor) of the pruned model in Hugging Face order, one layer at a time."""
    ad, store = source.adapter, source.store
    base = ad.layer_shapes()
    yield ad.embed_key, store[ad.embed_key].to(dtype)
    kept = plan.kept_layers()
    for new, i in enumerate(tqdm(kept, desc="apply+save", unit="layer", file=sys.stderr, disable=not progress, leave=False)):
        layer = source.layer(i)
        with torch.no_grad():
            slice_layer(ad, layer, i, plan, base[i])
        prefix = ad.layer_prefix(new)
        for k, v in layer.state_dict().items():
            yield prefix + k, v.to(dtype)
        del layer
    yield ad.final_norm_key, store[ad.final_norm_key].to(dtype)
    if not getattr(source.config, "tie_word_embeddings", False):
        yield ad.lm_head_key, store[ad.lm_head_key].to(dtype)


def save_pruned(
    model_dir: str | Path,
    plan: Plan,
    out: str | Path,
    *,
    dtype: torch.dtype | None = None,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
) -> dict:
    """Apply `plan` to the checkpoint at `model_dir` and write the result to `out`, streamed.

    Returns {"dtype", "bytes", "files"}. Refuses before writing when the disk cannot hold
    the result; a write that fails midway leaves no partial checkpoint behind.
    """
    source = CheckpointSource(model_dir, dtype=torch.float32)
    ad = source.adapter
    plan.validate(ad)
    dtype = dtype or source.store.dtype
    out = Path(out).absolute()
    need = output_bytes(source, plan, dtype)
    check_free_space(out.parent, need + min(need, max_shard_bytes))  # data + one shard's side file
    with staged_dir(out, force) as tmp:
        writer = ShardWriter(tmp, max_shard_bytes)
        try:
            for name, t in _tensors(source, plan, dtype, progress):
                writer.add(name, t)
            files = writer.close()
        except OSError as e:
            writer.abort()
            if e.errno == errno.ENOSPC:
                raise disk_full_error(tmp, need) from None
            raise
        except BaseException:
            writer.abort()
            raise
        cfg = load_config(model_dir)
        update_config(cfg, ad, plan.result_shapes(ad))
        cfg_dict = cfg.to_dict()
        for key in ("dtype", "torch_dtype"):
            cfg_dict.pop(key, None)
        cfg_dict["dtype"] = CONFIG_DTYPE_NAME[dtype]  # transformers >= 5 spelling (reads torch_dtype too)
        nonuniform = bool(cfg_dict.get("edgeprune_layers"))
        finish_dir(tmp, cfg_dict, ad.family, nonuniform, model_dir, plan)
    return {"dtype": CONFIG_DTYPE_NAME[dtype], "bytes": writer.total, "files": files}

"""Read a checkpoint's tensors lazily, the way transformers reads them.

Real hub checkpoints come as one `model.safetensors`, as shards with
`model.safetensors.index.json`, or as `pytorch_model.bin` (sharded or not). Tied
embeddings are stored once, under either `model.embed_tokens.weight` or `lm_head.weight`.
`WeightStore` hides all of that: `store[key]` reads one tensor (memory-mapped, nothing else
is loaded), and the tied name resolves to the stored one. An index that disagrees with
its shards, a missing shard, a truncated file or a missing tensor is a one-line
`ModelError` naming the file and the fix, raised when the store opens, before any work.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from .. import dtypes as _dtypes

from ..errors import ModelError

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
# The config's dtype names (`torch_dtype`, newer `dtype`) and `--dtype` names -> torch.
# The torch dtype of each float dtype is a fact of `edgeprune.dtypes.DType`; these add the spellings.
_FLOATS = [d for d in _dtypes.TABLE.values() if d.torch]
CONFIG_DTYPE_NAME = {getattr(torch, d.torch): d.torch for d in _FLOATS}
DTYPE_NAMES: dict[str, torch.dtype] = {
    **{n: getattr(torch, d.torch) for d in _FLOATS for n in (d.torch, d.name)},
    "fp16": torch.float16, "half": torch.float16, "fp32": torch.float32, "float": torch.float32,
}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPE_NAMES[str(name).lower()]
    except KeyError:
        raise ModelError(f"unknown dtype '{name}'; choose bf16, f16 or f32") from None


class WeightStore:
    """Lazy, validated access to every tensor of a local checkpoint directory."""

    def __init__(self, model_dir: str | Path, config: dict, embed_key: str, lm_head_key: str):
        self.dir = Path(model_dir)
        self._where: dict[str, Path] = {}
        self._meta: dict[str, tuple] = {}  # safetensors: shape, dtype name, byte start, byte end
        self._bin: dict[Path, dict] = {}
        self.kind = self._discover()
        self.alias: dict[str, str] = {}
        tied = bool(config.get("tie_word_embeddings", False))
        if tied:  # stored once under either name: transformers accepts both
            for a, b in ((embed_key, lm_head_key), (lm_head_key, embed_key)):
                if a not in self._where and b in self._where:
                    self.alias[a] = b
        if embed_key not in self._where and embed_key not in self.alias:
            raise ModelError(f"{self.dir}: the checkpoint has no '{embed_key}' (nor a tied lm_head); it does not match its config")
        self.config_dtype = _config_dtype(config)

    # ---- discovery --------------------------------------------------------------------
    def _discover(self) -> str:
        """The first layout present, in transformers' order of preference."""
        d = self.dir
        for kind, index, single, keys_of in (("safetensors", SAFE_INDEX, SAFE_SINGLE, self._safetensors_keys),
                                             ("bin", BIN_INDEX, BIN_SINGLE, self._bin_keys)):
            if (d / index).is_file():
                self._from_index(d / index, keys_of)
                return f"{kind}-sharded"
            if (d / single).is_file():
                self._where.update((k, d / single) for k in keys_of(d / single))
                return kind
        raise ModelError(f"{d} has no weights (model.safetensors, its index, or pytorch_model.bin); "
                         "download the whole model directory")

    def _from_index(self, index: Path, keys_of) -> None:
        from . import schema

        weight_map = schema.read(index, schema.SHARD_INDEX, "shard index", "re-download the model")["weight_map"]
        by_file: dict[str, set[str]] = {}
        for key, fname in weight_map.items():
            by_file.setdefault(fname, set()).add(key)
        for fname, want in sorted(by_file.items()):
            path = self.dir / fname
            if not path.is_file():
                raise ModelError(f"{index.name} names shard {fname}, which is missing from {self.dir}; re-download the model")
            have = set(keys_of(path))
            missing = sorted(want - have)
            if missing:
                raise ModelError(f"shard {fname} lacks {missing[0]} (and {len(missing) - 1} more) that {index.name} "
                                 "places there; the shards disagree with their index, re-download the model")
            extra = sorted(have - set(weight_map))
            if extra:
                raise ModelError(f"shard {fname} holds {extra[0]}, which {index.name} does not list; "
                                 "the shards disagree with their index, re-download the model")
            for k in want:
                self._where[k] = path

    def _safetensors_keys(self, path: Path) -> list[str]:
        """Parse the header (the format's own layout: u64 length, JSON); check the file holds
        every byte the header promises."""
        from .schema import SchemaError, safetensors_header

        try:
            n, header = safetensors_header(path, "re-download or re-save it")
        except SchemaError as e:  # a checkpoint's file: the model is what is wrong
            raise ModelError(str(e)) from None
        for k, v in header.items():
            _check_stored_dtype(v["dtype"], k, path)
            self._meta[k] = (tuple(v["shape"]), v["dtype"], 8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1])
        return list(header)

    def _bin_keys(self, path: Path) -> list[str]:
        try:
            sd = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:
            raise ModelError(f"{path} could not be read as a PyTorch checkpoint ({type(e).__name__}); "
                             "re-download it, or convert it to safetensors") from None
        if not isinstance(sd, dict):
            raise ModelError(f"{path} does not hold a state dict; convert the model with save_pretrained")
        for k, t in sd.items():
            if isinstance(t, torch.Tensor):
                _check_stored_dtype(_TORCH_TO_ST.get(t.dtype, str(t.dtype)), k, path)
        self._bin[path] = sd
        return list(sd)

    # ---- access -----------------------------------------------------------------------
    def keys(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where or key in self.alias

    def file_of(self, key: str) -> Path:
        return self._where[self.alias.get(key, key)]

    def __getitem__(self, key: str) -> torch.Tensor:
        k = self.alias.get(key, key)
        if k not in self._where:
            raise ModelError(f"{self.dir}: tensor {key} is missing from the checkpoint; it does not match its config")
        path = self._where[k]
        if path in self._bin:
            _check_finite(self._bin[path][k], k, path)
            return self._bin[path][k]
        shape, dt, start, end = self._meta[k]
        if dt not in _ST_TO_TORCH:
            raise ModelError(f"{path}: tensor {k} has dtype {dt}, which edgeprune does not read")
        return self._read(k, path, torch.empty(shape, dtype=_ST_TO_TORCH[dt]))

    def read_into(self, key: str, dest: torch.Tensor) -> None:
        """Copy tensor `key` into `dest` (same shape); straight from the file when the dtype
        matches, so a model is filled without a second copy of its largest tensor."""
        k = self.alias.get(key, key)
        path = self._where.get(k)
        meta = self._meta.get(k)
        if path is not None and meta is not None and _ST_TO_TORCH.get(meta[1]) == dest.dtype \
                and tuple(meta[0]) == tuple(dest.shape) and dest.is_contiguous() and dest.device.type == "cpu":
            self._read(k, path, dest)
        else:
            dest.copy_(self[key])

    def _read(self, k: str, path: Path, t: torch.Tensor) -> torch.Tensor:
        _, _, start, end = self._meta[k]
        # Plain reads into the tensor, not a memory map: a mapping keeps every page it touched
        # in the process's RSS (twice the tensor while it is copied, the whole file if kept).
        with open(path, "rb") as f:
            f.seek(start)
            got = f.readinto(memoryview(t.detach().view(-1).view(torch.uint8).numpy()) if t.numel() else bytearray())
        if got != end - start:
            raise ModelError(f"{path}: tensor {k} is cut short ({got} of {end - start} bytes); re-download the file")
        _check_finite(t, k, path)
        return t

    def check_finite(self, progress: bool = False) -> None:
        """Read every tensor once (one at a time) and refuse NaN/Inf, naming the tensor:
        run before any work, so that a corrupt checkpoint never yields an artifact."""
        import sys

        from tqdm.auto import tqdm

        for k in tqdm(self.keys(), desc="checking weights", unit="tensor", file=sys.stderr, disable=not progress, leave=False):
            self[k]

    def shape(self, key: str) -> tuple[int, ...]:
        k = self.alias.get(key, key)
        path = self._where[k]
        if path in self._bin:
            return tuple(self._bin[path][k].shape)
        return self._meta[k][0]

    def stored_dtype(self) -> torch.dtype:
        """The most common floating dtype among the stored tensors (the checkpoint's own)."""
        counts: Counter = Counter()
        for k, path in list(self._where.items())[:64]:
            if path in self._bin:
                dt = self._bin[path][k].dtype
            else:
                dt = _ST_TO_TORCH.get(self._meta[k][1], torch.float32)
            if dt.is_floating_point:
                counts[dt] += 1
        return counts.most_common(1)[0][0] if counts else torch.float32

    @property
    def dtype(self) -> torch.dtype:
        """The dtype a pruned copy keeps: the config's declared one, else the stored one."""
        return self.config_dtype or self.stored_dtype()


def open_store(model_dir: str | Path, config) -> WeightStore:
    """The store of a local checkpoint directory whose `config` the caller has already
    loaded and validated (`checkpoint.load_config`); the raw config.json gives the dtype."""
    from ..models import get_adapter

    ad = get_adapter(config)
    raw = json.loads((Path(model_dir) / "config.json").read_text())
    return WeightStore(model_dir, raw, ad.embed_key, ad.lm_head_key)


def all_finite(t: torch.Tensor, block: int = 1 << 24) -> bool:
    """torch.isfinite on a whole tensor makes an abs() copy of it: checked in 16M-element
    blocks, so that checking a 1 GB embedding costs megabytes, not gigabytes."""
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[s : s + block]).all()) for s in range(0, flat.numel(), block))


# (file, its inode, mtime and size, tensor) already found finite in this process: the search's fitness
# and a sweep's builds read the same dense tensors many times, and checking each read again cost
# a tenth of a small model's build. A rewritten file (new inode, mtime or size) is checked again.
_FINITE: set[tuple[str, int, int, int, str]] = set()


def _check_finite(t: torch.Tensor, key: str, path: Path) -> None:
    if not t.is_floating_point():
        return
    try:
        st = path.stat()
        seen = (str(path), st.st_ino, st.st_mtime_ns, st.st_size, key)
    except OSError:
        seen = None
    if seen is not None and seen in _FINITE:
        return
    if all_finite(t):
        if seen is not None:
            _FINITE.add(seen)
    else:
        raise ModelError(f"{path.name}: tensor {key} holds NaN or Inf; the checkpoint is corrupt "
                         "(re-download it, or fix the training run that wrote it)")


_ST_TO_TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


# Floating dtypes a checkpoint may store (what the surgery, writers and exporters handle).
READABLE_FLOATS = ("F32", "F16", "BF16")
_TORCH_TO_ST = {v: k for k, v in _ST_TO_TORCH.items()}


def _check_stored_dtype(name: str, key: str, path: Path) -> None:
    """A float64 or float8 tensor is refused when the store opens, not deep in a writer."""
    if name not in _ST_TO_TORCH or (name.startswith("F") and name not in READABLE_FLOATS):
        raise ModelError(f"{path.name}: tensor {key} is stored as {name}; edgeprune reads {', '.join(READABLE_FLOATS)} "
                         "weights: re-save the model in float32 or bfloat16 (model.to(torch.float32).save_pretrained)")


def _config_dtype(config: dict) -> torch.dtype | None:
    name = config.get("dtype") or config.get("torch_dtype")
    if isinstance(name, str):
        return DTYPE_NAMES.get(name.lower().replace("torch.", ""))
    return None

"""Safetensors written one tensor at a time, and tensors kept on disk instead of in RAM.

`safetensors.torch.save_file` needs every tensor of a file in memory at once; at 8B width
one shard is 5 GB. `StreamWriter` writes each tensor's bytes as it comes and the header
last (the format puts the header first, so the data goes to a side file that is then
appended behind the header: one extra sequential copy, constant memory). `ShardWriter`
splits the stream into Hugging Face shards (`model-0000k-of-0000n.safetensors` plus
`model.safetensors.index.json`, or one `model.safetensors` when it all fits).

`DiskTensors` is a dict-like store of tensors on disk (one file each), used for re-fitted
plan tensors so that a method's output does not grow with depth in RAM.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path

import torch

from .atomic import write_with
from .weights import SAFE_INDEX, SAFE_SINGLE
from ..errors import OutputError

# One table: torch dtype <-> safetensors name (and bytes per element, from torch).
ST_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
DEFAULT_SHARD_BYTES = 5 * 1000**3  # transformers' save_pretrained default ("5GB")
_COPY_CHUNK = 16 * 2**20


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def disk_full_error(path: Path, needed: int | None = None) -> OutputError:
    free = free_bytes(path if path.is_dir() else path.parent)
    need = f"; about {needed / 1e9:.2f} GB are needed" if needed else ""
    return OutputError(f"disk full while writing {path} ({free / 1e9:.2f} GB free{need}); free space or choose another --out")


def check_free_space(directory: Path, needed: int) -> None:
    """Refuse before writing when the file system cannot hold `needed` bytes."""
    free = free_bytes(directory)
    if free < needed:
        raise OutputError(f"{directory} has {free / 1e9:.2f} GB free but this write needs about {needed / 1e9:.2f} GB; "
                          "free space or choose another --out")


def _raw(t: torch.Tensor) -> memoryview:
    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).reshape(-1).numpy())


class StreamWriter:
    """One safetensors file, written tensor by tensor."""

    def __init__(self, path: Path, metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self._data_path = self.path.with_name(self.path.name + ".data")
        self._data = open(self._data_path, "wb")
        self._header: dict = {"__metadata__": metadata or {"format": "pt"}}
        self.nbytes = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        if name in self._header:
            raise ValueError(f"tensor {name} written twice")
        if t.dtype not in ST_DTYPES:
            raise ValueError(f"tensor {name}: dtype {t.dtype} has no safetensors name")
        raw = _raw(t)
        start = self.nbytes
        _write(self._data, raw, self.path)
        self.nbytes += raw.nbytes
        self._header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [start, self.nbytes]}

    @property
    def names(self) -> list[str]:
        return [k for k in self._header if k != "__metadata__"]

    def close(self) -> None:
        """Write header + data to `path` and drop the side file."""
        self._data.close()
        head = json.dumps(self._header, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)  # the reference writer pads the header to 8 bytes
        try:
            with open(self.path, "wb") as out, open(self._data_path, "rb") as src:
                out.write(len(head).to_bytes(8, "little"))
                out.write(head)
                shutil.copyfileobj(src, out, _COPY_CHUNK)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise disk_full_error(self.path, self.nbytes) from None
            raise
        finally:
            self._data_path.unlink(missing_ok=True)

    def abort(self) -> None:
        self._data.close()
        self._data_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


def _write(f, raw: memoryview, path: Path) -> None:
    try:
        f.write(raw)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise disk_full_error(path) from None
        raise


class ShardWriter:
    """Hugging Face sharded safetensors in `directory`, one tensor at a time.

    A new shard starts when the next tensor would push the current one past
    `max_shard_bytes` (a single larger tensor gets a shard of its own), as transformers does.
    """

    def __init__(self, directory: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.dir = Path(directory)
        self.max = max_shard_bytes
        self._shards: list[StreamWriter] = []
        self.total = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        cur = self._shards[-1] if self._shards else None
        if cur is None or (cur.nbytes and cur.nbytes + size > self.max):
            if cur is not None:
                cur.close()
            cur = StreamWriter(self.dir / f".shard-{len(self._shards) + 1}.safetensors")
            self._shards.append(cur)
        cur.add(name, t)
        self.total += size

    def close(self) -> list[str]:
        """Finish the last shard, name the shards, write the index; returns the file names."""
        if not self._shards:
            raise ValueError("no tensors were written")
        self._shards[-1].close()
        n = len(self._shards)
        if n == 1:
            os.replace(self._shards[0].path, self.dir / SAFE_SINGLE)
            return [SAFE_SINGLE]
        names, weight_map = [], {}
        for k, s in enumerate(self._shards, 1):
            fname = f"model-{k:05d}-of-{n:05d}.safetensors"
            os.replace(s.path, self.dir / fname)
            names.append(fname)
            weight_map.update({t: fname for t in s.names})
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.dir / SAFE_INDEX).write_text(json.dumps(index, indent=2))
        return names + [SAFE_INDEX]

    def abort(self) -> None:
        for s in self._shards:
            s.abort()


def parse_size(s: str | int) -> int:
    """'5GB' / '500MB' / 1000 -> bytes (decimal units, as transformers reads them)."""
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", s, re.I)
    if not m:
        raise ValueError(f"'{s}' is not a size such as 5GB or 500MB")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * mult)


class DiskTensors(MutableMapping):
    """Tensors kept one file each in `directory`; reading one loads only that one."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._keys: dict[str, Path] = {}
        for p in sorted(self.dir.glob("*.safetensors")):
            self._keys[_key_of(p)] = p

    def __setitem__(self, key: str, t: torch.Tensor) -> None:
        from safetensors.torch import save_file

        p = self.dir / (key.replace("/", "_") + ".safetensors")
        write_with(p, lambda tmp: save_file({key: t.detach().contiguous().cpu()}, str(tmp)))
        self._keys[key] = p

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self._keys[key]), "pt") as f:
            return f.get_tensor(key)

    def __delitem__(self, key: str) -> None:
        self._keys.pop(key).unlink(missing_ok=True)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._keys))

    def __len__(self) -> int:
        return len(self._keys)


def _key_of(p: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        return next(iter(f.keys()))


class FileTensors(Mapping):
    """The tensors of one safetensors file, read on access (a saved plan's re-fitted weights)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = Path(path)
        with safe_open(str(self.path), "pt") as f:
            self._keys = sorted(f.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        if key not in self._keys:
            raise KeyError(key)
        with safe_open(str(self.path), "pt") as f:
            return f.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write a mapping (possibly disk-backed) into one safetensors file, one tensor at a time."""
    w = StreamWriter(Path(path))
    try:
        for k in sorted(tensors):
            w.add(k, tensors[k])
        w.close()
    except BaseException:
        w.abort()
        raise

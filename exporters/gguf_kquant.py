"""k-quants (q4_k_m, q5_k_m, q6_k) through llama.cpp's own quantizer, optionally weighted by
an importance matrix, and read back: real bits per weight and every fallback tensor.

llama.cpp picks its own per-tensor mix (Q4_K_M keeps some tensors at Q6_K) and silently
falls back to a wider type when a row is not a multiple of 256, so the file is the truth.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeprune.errors import ExportError

from .runtime_imports import require
from .dtypes import get as dtype_facts
from .source import WeightsView


def _imatrix_array(lc, imatrix: dict):
    """A NULL-terminated `llama_model_imatrix_data[]` over `imatrix` (kept alive by the caller)."""
    import ctypes

    keep = {name.encode(): np.ascontiguousarray(v, dtype=np.float32) for name, v in imatrix.items()}
    arr = (lc.llama_model_imatrix_data * (len(keep) + 1))()
    for j, (name, v) in enumerate(keep.items()):
        arr[j].name = name
        arr[j].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[j].size = v.size
    arr[len(keep)].name = None
    return arr, keep


def write_llama_quantized(view: WeightsView, path: Path, dtype: str, progress: bool = False,
                           imatrix: dict | None = None, tokenizer_pre: str | None = None) -> dict:
    """k-quants through llama.cpp's own quantizer (its per-tensor mix, e.g. Q4_K_M), from an
    intermediate GGUF in the checkpoint's own precision (bf16 stays bf16, f32 stays f32).
    The result is read back: real bits per weight, and every 2-D weight whose type is not of
    the mix's family (llama.cpp falls back silently when a row is not a multiple of 256)."""
    import ctypes

    lc = require("llama_cpp", "gguf", f"{dtype} quantization (llama.cpp's quantizer)")
    facts = dtype_facts(dtype)
    tmp = path.with_name(path.name + ".src")
    src = {torch.bfloat16: "bf16", torch.float16: "f16"}.get(view.dtype, "f32")
    try:
        from .gguf_writer import write_gguf

        meta = write_gguf(view, tmp, src, progress, tokenizer_pre=tokenizer_pre)
        params = lc.llama_model_quantize_default_params()
        params.ftype = facts.llama_ftype
        if imatrix:
            arr, _alive = _imatrix_array(lc, imatrix)
            params.imatrix = ctypes.cast(arr, ctypes.POINTER(lc.llama_model_imatrix_data))
        # its per-tensor lines are quiet unless -v (`require` -> quiet_runtime_logs); fallbacks are read back below
        rc = lc.llama_model_quantize(str(tmp).encode(), str(path).encode(), ctypes.byref(params))
    finally:
        tmp.unlink(missing_ok=True)
    if rc != 0:
        raise ExportError(f"llama.cpp's quantizer failed (code {rc}) for {dtype}")
    meta.update(quantized_summary(path, facts.family))
    meta["imatrix_tensors"] = len(imatrix) if imatrix else 0
    return meta


def quantized_summary(path: Path, family: tuple[str, ...]) -> dict:
    """Tensor types, bits per weight of the 2-D weights, and the fallbacks, read from the file."""
    gguf = require("gguf", "gguf", "reading GGUF files")
    reader = gguf.GGUFReader(str(path))
    types: dict[str, int] = {}
    fallbacks, bits, n = [], 0, 0
    for t in reader.tensors:
        name, kind = t.name, t.tensor_type.name
        types[kind] = types.get(kind, 0) + 1
        if len(t.shape) < 2 or not name.endswith(".weight"):
            continue
        bits += 8 * int(t.n_bytes)
        n += int(t.n_elements)
        if name not in ("token_embd.weight", "output.weight") and kind not in family:
            fallbacks.append({"tensor": name, "used": kind, "row": int(t.shape[0]),
                              "why": f"llama.cpp chose {kind}, outside {'/'.join(family)} (row length not a multiple of 256?)"})
    return {"tensor_types": types, "fallbacks": fallbacks, "bits_per_weight": bits / max(n, 1)}

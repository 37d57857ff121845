"""Every fact about a weight dtype, in one table: bytes per weight, the row-length block it
needs, what it falls back to, the verification tolerance, the llama.cpp file type, its GGML
tensor type and its torch dtype. Checkpoint loading, the speed budgets (`measure/budget.py`), the exporters,
verification, targets and the build's estimates read it; which formats carry a dtype is the
format's declaration (`exporters/formats.py`, `exporters.dtypes.allowed`). It lives in the core
package because loading a checkpoint needs it and the core imports nothing from `exporters`.
torch-free: the torch dtype is its attribute name, resolved by `torch_dtype`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str
    bytes_per_weight: float  # average over a model's linear weights (k-quant mixes included)
    ppl_tolerance: float | None  # relative perplexity delta allowed; None: f32, judged on logits
    block: int = 1  # quantised rows must be a multiple of this
    # what a row that does not fit becomes, in order: our own writer's choice, or for a
    # llama.cpp mix the quantizer's own (llama-quant.cpp: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16)
    fallback: tuple[str, ...] = ()
    llama_ftype: int = 0  # llama.cpp's LLAMA_FTYPE_* (the GGUF's general.file_type)
    llama_quantizer: bool = False  # quantised by llama.cpp itself (its own per-tensor mix)
    family: tuple[str, ...] = ()  # GGML types that count as "no fallback" for a llama.cpp mix
    ggml: str | None = None  # the GGML tensor type edgeprune's own GGUF writer stores (gguf.GGMLQuantizationType)
    torch: str | None = None  # the torch dtype of a float dtype (torch.<name>), for checkpoints and configs


TABLE: dict[str, DType] = {d.name: d for d in (
    DType("f32", 4.0, None, llama_ftype=0, ggml="F32", torch="float32"),
    DType("f16", 2.0, 0.01, llama_ftype=1, ggml="F16", torch="float16"),
    DType("bf16", 2.0, 0.01, llama_ftype=32, ggml="BF16", torch="bfloat16"),
    # weight-only MatMulNBits, symmetric: 4 bits + one f32 scale per block of 32..128
    DType("int4", 0.56, 0.15),
    DType("q8_0", 34 / 32, 0.03, 32, ("f16",), 7, ggml="Q8_0"),
    DType("q4_0", 18 / 32, 0.15, 32, ("f16",), 2, ggml="Q4_0"),
    DType("q6_k", 210 / 256, 0.06, 256, ("q8_0", "f16"), 18, True, ("Q6_K",)),
    DType("q5_k_m", 5.7 / 8, 0.10, 256, ("q5_1", "f16"), 17, True, ("Q5_K", "Q6_K")),
    DType("q4_k_m", 4.9 / 8, 0.15, 256, ("q5_0", "f16"), 15, True, ("Q4_K", "Q5_K", "Q6_K")),
    # llama.cpp's fallback types for the k-quants: no format carries them, the build's size
    # prediction (edgeprune/measure/dtype_fit.py) reads their facts
    DType("q5_0", 22 / 32, None, 32, ("f16",)),
    DType("q5_1", 24 / 32, None, 32, ("f16",)),
)}
ALIASES = {"q4_k": "q4_k_m"}  # the name edgeprune used before the mix was spelled out


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def get(name: str) -> DType:
    return TABLE[canonical(name)]


def torch_dtype(name: str):
    """The torch dtype of a float dtype name (`f16`, or the config's `float16`), or None."""
    import torch

    d = TABLE.get(canonical(name)) or next((x for x in TABLE.values() if x.torch == name), None)
    return getattr(torch, d.torch) if d is not None and d.torch else None


def failure_hint(name: str) -> str:
    """What to try when an artifact of this dtype fails its perplexity bound."""
    if get(name).bytes_per_weight < 0.75:
        return ("4-bit weights can lose too much on a model this small or narrow: choose a wider dtype "
                "(q8_0 or f16) with --dtype or in the target")
    return ""

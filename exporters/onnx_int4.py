"""int4 ONNX: weight-only 4-bit `MatMulNBits` through onnxruntime's own quantizer.

Every MatMul whose weight is a constant 2-D initializer becomes `com.microsoft.MatMulNBits`
(symmetric, per block of K), except the output projection (lm_head), which stays in float:
it is one matrix and the most sensitive one, as llama.cpp's k-quant mixes also keep it wider.
The block size is 32 (onnxruntime-genai's model builder default, and llama.cpp's Q4_0
block) when every quantised input width is a multiple of it, else 16 when that divides them
all, else 32 with the quantizer padding K; larger blocks (64, 128) decode a little faster but
lost more perplexity on our models, so they are not chosen automatically.
"""
from __future__ import annotations

from pathlib import Path

BLOCKS = (32, 16)
FALLBACK_BLOCK = 32


def _fold_weight_transposes(model) -> int:
    """Replace `Transpose(W) -> MatMul` on a 2-D initializer by a transposed initializer
    (large models are exported without onnxscript's constant folding); returns how many."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, int] = {}
    for n in model.graph.node:
        for x in n.input:
            consumers[x] = consumers.get(x, 0) + 1
    folded, keep = 0, []
    for n in model.graph.node:
        src = inits.get(n.input[0]) if n.op_type == "Transpose" and n.input else None
        if src is not None and len(src.dims) == 2 and consumers.get(n.input[0]) == 1:
            arr = numpy_helper.to_array(src).T.copy()
            model.graph.initializer.remove(src)
            model.graph.initializer.append(numpy_helper.from_array(arr, n.output[0]))
            folded += 1
            continue
        keep.append(n)
    if folded:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return folded


def _weight_matmuls(model, vocab: int) -> tuple[list, list[str]]:
    """(MatMul nodes with a constant 2-D weight that get quantised, names kept in float)."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    quant, kept = [], []
    for n in model.graph.node:
        dims = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) > 1 else None
        if dims is None or len(dims) != 2:
            continue
        (kept if dims[1] == vocab else quant).append(n if dims[1] != vocab else n.name)
    return quant, kept


def choose_block(widths: list[int]) -> int:
    """The largest block that divides every input width (K), else the padded fallback."""
    for b in BLOCKS:
        if widths and all(k % b == 0 for k in widths):
            return b
    return FALLBACK_BLOCK


def quantize_int4(path: Path, vocab: int, external: bool) -> dict:
    """Rewrite the f32 `path` (model.onnx) as int4 MatMulNBits in place; returns what was done."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from edgeprune.errors import ExportError

    from .runtime_imports import quiet_runtime_logs

    quiet_runtime_logs("onnxruntime.quantization")  # one INFO line per MatMul otherwise (hundreds per model)

    model = onnx.load(str(path))
    folded = _fold_weight_transposes(model)
    quant, kept = _weight_matmuls(model, vocab)
    if not quant:
        raise ExportError(f"{path} has no MatMul with a constant weight to quantise; int4 export is not possible")
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    widths = sorted({inits[n.input[1]][0] for n in quant})
    block = choose_block(widths)
    q = MatMulNBitsQuantizer(model, bits=4, block_size=block, is_symmetric=True, accuracy_level=4,
                             nodes_to_exclude=kept)
    q.process()
    for f in path.parent.iterdir():  # the f32 external data is replaced below
        if f.name != path.name and f.suffix in (".data", ".onnx_data"):
            f.unlink()
    q.model.save_model_to_file(str(path), use_external_data_format=external)
    n_nbits = sum(1 for n in q.model.model.graph.node if n.op_type == "MatMulNBits")
    return {"block_size": block, "padded": any(k % block for k in widths), "quantized_matmuls": n_nbits,
            "float_matmuls": kept, "input_widths": widths, "transposes_folded": folded,
            "quantizer": "onnxruntime.quantization.MatMulNBitsQuantizer (symmetric, accuracy_level 4)"}

"""`edgeprune inspect` on what a build ships: a build directory, a `.gguf` file, an ONNX folder.

A user holding only an artifact wants to know what is in it (architecture, per-layer widths,
dtype, bytes, tokenizer, whether it was verified) without loading it in a runtime; these read
the files' own metadata (GGUF key/values and tensor shapes through the `gguf` package, the ONNX
graph's headers without its weights, and genai_config.json). No torch.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..errors import EdgePruneError


class InspectError(EdgePruneError):
    """An artifact inspect cannot read."""


def kind_of(p: Path) -> str | None:
    """'build' or a format's name ('gguf', 'onnx') for what this module reads; None for a
    model or a plan."""
    from exporters.formats import of_path

    if p.is_dir() and (p / "build_state.json").is_file() and (p / "model").is_dir():
        return "build"
    f = of_path(p) if p.exists() else None
    return f.name if f is not None else None


def _verified(fmt: str, artifact: Path) -> str:
    """What the verify report the format keeps for `artifact` says, in a few words."""
    from exporters.formats import get

    report = get(fmt).report_of(artifact)
    if not report.is_file():
        return "no verify report beside it"
    try:
        passed = json.loads(report.read_text()).get("passed")
    except (OSError, ValueError, AttributeError):
        return f"verify report {report.name} is unreadable"
    return "verified" if passed else "verification FAILED"


def inspect_gguf(p: Path) -> dict:
    """Architecture, per-layer widths (from the tensors' shapes), tensor types and tokenizer."""
    from gguf import GGUFReader

    try:
        r = GGUFReader(str(p))
    except Exception as e:  # noqa: BLE001 - any parse failure of a user's file is one line
        raise InspectError(f"{p} is not a readable GGUF file ({type(e).__name__}: {e}); re-export it") from None

    def field(key: str):
        f = r.fields.get(key)
        if f is None:
            return None
        v = f.parts[f.data[0]] if f.data else None
        return bytes(v).decode("utf-8", "replace") if f.types and f.types[0].name == "STRING" else (v.tolist()[0] if v is not None else None)

    arch = field("general.architecture")
    n = int(field(f"{arch}.block_count") or 0)
    head_dim = field(f"{arch}.attention.key_length") or 0
    shapes = {t.name: [int(x) for x in t.shape] for t in r.tensors}
    layers = []
    for i in range(n):
        q, k, down = (shapes.get(f"blk.{i}.{x}.weight") for x in ("attn_q", "attn_k", "ffn_down"))
        layers.append({"layer": i, "heads": q[1] // head_dim if q and head_dim else 0,
                       "kv_heads": k[1] // head_dim if k and head_dim else 0, "ffn": down[0] if down else 0})
    types = Counter(t.tensor_type.name for t in r.tensors if len(t.shape) > 1)
    out = {"kind": "gguf", "path": str(p), "bytes": p.stat().st_size, "architecture": arch, "layers": layers,
           "tensor_types": dict(types), "tokenizer": field("tokenizer.ggml.model"), "pre_tokenizer": field("tokenizer.ggml.pre"),
           "context_length": field(f"{arch}.context_length"), "verify": _verified("gguf", p)}
    text = [f"gguf: {p.name}, {out['bytes']:,} bytes, architecture {arch}, {n} layers, head_dim {head_dim}; "
            f"tensor types {dict(types)}; tokenizer {out['tokenizer']} (pre {out['pre_tokenizer']}); {out['verify']}"]
    text += [f"  layer {x['layer']:>3}: ffn {x['ffn']:>6}  heads {x['heads']:>3}  kv {x['kv_heads']:>3}" for x in layers]
    return {**out, "text": "\n".join(text)}


def inspect_onnx(p: Path) -> dict:
    """The GenAI config, the graph's per-layer KV heads (its present outputs), weight dtypes, bytes."""
    import onnx

    from exporters.names import ONNX_MODEL

    folder = p if p.is_dir() else p.parent
    model = folder / ONNX_MODEL if p.is_dir() else p
    try:
        g = onnx.load(str(model), load_external_data=False).graph
    except Exception as e:  # noqa: BLE001
        raise InspectError(f"{model} is not a readable ONNX model ({type(e).__name__}: {e}); re-export it") from None
    kv = []
    for o in g.output:
        if o.name.startswith("present") and o.name.endswith(".key"):
            dims = o.type.tensor_type.shape.dim
            kv.append(dims[1].dim_value if len(dims) > 1 and dims[1].HasField("dim_value") else None)
    dtypes = Counter(onnx.TensorProto.DataType.Name(i.data_type) for i in g.initializer if len(i.dims) > 1)
    cfg_path = folder / "genai_config.json"
    cfg = json.loads(cfg_path.read_text()).get("model", {}) if cfg_path.is_file() else {}
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    out = {"kind": "onnx", "path": str(folder), "bytes": size, "genai": bool(cfg), "model_type": cfg.get("type"),
           "kv_heads_per_layer": kv, "weight_dtypes": dict(dtypes), "verify": _verified("onnx", model)}
    text = [f"onnx: {folder}, {size:,} bytes in the folder; {'ORT GenAI package' if cfg else 'plain ONNX (no genai_config.json)'}"
            f"{', type ' + str(cfg.get('type')) if cfg else ''}; {len(kv)} layers; weight dtypes {dict(dtypes)}; {out['verify']}",
            f"  KV heads per layer (the graph's present outputs): {kv}"]
    return {**out, "text": "\n".join(text)}


def inspect_build(p: Path, model_inspector) -> dict:
    """The pruned checkpoint's widths (`model_inspector` on build/model) and each artifact."""
    from exporters.formats import of_path

    model = model_inspector(str(p / "model"))
    arts = []
    for a in sorted((p / "artifacts").glob("*")) if (p / "artifacts").is_dir() else []:
        f = of_path(a)
        if f is not None:
            arts.append(f.inspect(a))
    text = [f"build: {p}", model["text"]] + [a["text"].splitlines()[0] for a in arts]
    return {"kind": "build", "model": model, "artifacts": arts, "text": "\n".join(text)}

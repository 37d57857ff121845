"""Reading facts off a finished artifact: the bytes a decoded token reads, and the runtime
version it needs. The profile and the benchmarks ask these; only exporters open artifacts."""
from __future__ import annotations

from pathlib import Path

LLAMA_CPP_TESTED = "0.3.36"


def gguf_linear_bytes(path: Path) -> int:
    """Bytes of every linear weight a decoded token reads (lm_head included, token embedding
    excluded; a tied model's lm_head reads the embedding matrix), from the file itself."""
    import gguf

    r = gguf.GGUFReader(str(path))
    sizes = {t.name: int(t.n_bytes) for t in r.tensors}
    total = sum(b for n, b in sizes.items() if n.endswith(".weight") and "norm" not in n and n != "token_embd.weight")
    if "output.weight" not in sizes:
        total += sizes["token_embd.weight"]
    return total


def gguf_min_runtime(architecture: str | None) -> str:
    if architecture == "deci":
        return ("llama.cpp with the 'deci' architecture (DeciLM/Nemotron-NAS support, added December 2024); "
                f"tested with llama-cpp-python {LLAMA_CPP_TESTED}")
    return f"llama.cpp with the '{architecture}' architecture; tested with llama-cpp-python {LLAMA_CPP_TESTED}"


def onnx_min_runtime(path: Path) -> str:
    """The onnxruntime (and onnxruntime-genai) an ONNX artifact needs, from its opset and ops."""
    import onnx

    path = Path(path)
    m = onnx.load(str(path), load_external_data=False)
    opset = max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    table = {17: "1.13", 18: "1.14", 19: "1.16", 20: "1.17", 21: "1.20", 22: "1.20", 23: "1.22"}
    need = f"onnxruntime >= {table.get(opset, '1.22')} (graph opset {opset})"
    if any(n.op_type == "MatMulNBits" for n in m.graph.node):
        import onnxruntime

        need += (f"; int4 needs the com.microsoft MatMulNBits kernel on your execution provider "
                 f"(tested with onnxruntime {onnxruntime.__version__})")
    if (path.parent / "genai_config.json").is_file():
        need += "; as an ORT GenAI folder: onnxruntime-genai >= 0.18.0 (per-layer KV-head counts)"
    return need


def read_verify_report(artifact: Path, fix: str) -> dict:
    """The verify report an export wrote for `artifact` (where its format keeps it), checked
    against its schema, with the artifact itself still there; else one line and `fix`."""
    from edgeprune.io import schema

    from .formats import of_path

    artifact = Path(artifact)
    if not artifact.exists():
        raise schema.SchemaError(f"{artifact}, recorded as exported and verified, is missing; {fix}")
    fmt = of_path(artifact)
    if fmt is None:
        raise schema.SchemaError(f"{artifact}, recorded as exported and verified, is no artifact of any format; {fix}")
    return schema.read(fmt.report_of(artifact), schema.VERIFY, "verify report", fix)


def artifact_context(path: Path) -> tuple[int, str] | None:
    """(tokens, where it is written) of an artifact's context window, as its format records it
    (`Format.context`); None when it records none."""
    from .formats import of_path

    f = of_path(Path(path))
    return f.context(Path(path)) if f is not None else None


def gguf_context(path: Path) -> tuple[int, str] | None:
    """GGUF's `<arch>.context_length`."""
    import gguf

    r = gguf.GGUFReader(str(path))
    arch = r.fields.get("general.architecture")
    if arch is None:
        return None
    name = f"{bytes(arch.parts[-1]).decode()}.context_length"
    f = r.fields.get(name)
    return (int(f.parts[-1][0]), f"{name} in its GGUF metadata") if f is not None else None


def genai_context(path: Path) -> tuple[int, str] | None:
    """An ORT GenAI folder's `context_length`."""
    folder = path if path.is_dir() else path.parent
    cfg = folder / "genai_config.json"
    if not cfg.is_file():
        return None
    from edgeprune.io import schema

    d = schema.read(cfg, schema.GENAI_CONFIG, "onnxruntime-genai config", "re-export the ONNX artifact")
    return d["model"]["context_length"], "context_length in its genai_config.json"

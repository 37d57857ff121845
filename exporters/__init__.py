"""Exporters: ONNX (ONNX Runtime) and GGUF (llama.cpp) of dense or non-uniformly pruned
models, each verified in its runtime as part of the export.

    from exporters import export
    export("pruned/", "gguf", "model.gguf", dtype="q8_0")

The artifact is written to a temporary path, verified, and only then renamed into place
with its report `<artifact>.verify.json` beside it (for ONNX: `DIR/model.onnx.verify.json`).
A failed verification deletes the artifact and raises.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from edgeprune.errors import ExportError

from .common import DTYPES, check_dtype, check_out_path, require, staged

__all__ = ["DTYPES", "export"]


def _tokenizer(model_dir: Path):
    """The model's tokenizer, or None (verification then uses fixed random token ids)."""
    from edgeprune.pipeline import tokenizer_for

    try:
        return tokenizer_for(model_dir)
    except Exception:
        return None


def export(model, fmt: str, out: str | Path, *, dtype: str = "f32", verify: bool = True, force: bool = False,
           model_dir: str | Path | None = None) -> dict:
    """Export a model directory (or a loaded model plus `model_dir` for its tokenizer)."""
    import edgeprune

    from .gguf_writer import write_gguf
    from .onnx import check_graph, write_onnx
    from .verify import verify_artifact

    check_dtype(fmt, dtype)
    if fmt == "onnx":
        require("onnx", "onnx", "ONNX export")
        require("onnxruntime", "onnx", "ONNX export")
        require("onnxscript", "onnx", "ONNX export")
    else:
        require("gguf", "gguf", "GGUF export")
        if verify:
            require("llama_cpp", "gguf", "GGUF verification (llama-cpp-python)")
    out = Path(out).absolute()
    check_out_path(out, force)
    if isinstance(model, (str, Path)):
        model_dir = Path(model)
        model = edgeprune.load(model_dir)
    model_dir = Path(model_dir) if model_dir else None
    tok = _tokenizer(model_dir) if model_dir else None
    t0 = time.perf_counter()
    meta: dict = {}
    report: dict | None = None
    if fmt == "gguf":
        from .gguf_writer import gguf_arch

        gguf_arch(model)  # refuse inexpressible shapes before writing anything
        with staged(out, force) as tmp:
            meta = write_gguf(model, model_dir or Path("."), tmp, dtype)
            if verify:
                report = verify_artifact(model, tmp, dtype, tok)
                report.update({"format": "gguf", **{k: meta[k] for k in ("architecture", "fallbacks")}})
                _fail_if(report, out)
        artifact, report_path, size = out, out.with_name(out.name + ".verify.json"), out.stat().st_size
    else:
        with staged(out, force) as tmp:
            path = write_onnx(model, tmp, dtype)
            check_graph(path, model)
            if verify:
                report = verify_artifact(model, path, dtype, tok)
                report["format"] = "onnx"
                _fail_if(report, out)
                (tmp / "model.onnx.verify.json").write_text(json.dumps(report, indent=1))
        artifact = out / "model.onnx"
        report_path = out / "model.onnx.verify.json"
        size = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and not p.name.endswith(".json"))
    if fmt == "gguf" and report is not None:
        tmp_r = report_path.with_name("." + report_path.name + ".tmp")
        tmp_r.write_text(json.dumps(report, indent=1))
        os.replace(tmp_r, report_path)
    if not verify:
        print(f"edgeprune: WARNING: {artifact} was exported WITHOUT verification", file=sys.stderr)
    return {"format": fmt, "dtype": dtype, "path": str(artifact), "bytes": size, "seconds": time.perf_counter() - t0,
            "verify": report or {"passed": None, "skipped": True}, "verify_report": str(report_path) if report else None,
            **({k: meta[k] for k in ("architecture", "fallbacks", "tensor_types") if k in meta})}


def _fail_if(report: dict, out: Path) -> None:
    if not report["passed"]:
        raise ExportError(
            f"verification of {out.name} failed ({report['dtype']}: max abs logit diff {report['max_abs_logit_diff']:.3g}, "
            f"top-1 {report['top1_agreement']:.3f}, greedy match {report['greedy_tokens_match']}, PPL delta "
            f"{report['perplexity']['relative_delta']:.3%}); the artifact was deleted"
        )

"""Exporters: ONNX (ONNX Runtime) and GGUF (llama.cpp) of dense or non-uniformly pruned
models, each verified in its runtime as part of the export.

    from exporters import export
    export("pruned/", "gguf", "model.gguf", dtype="q8_0")

The artifact is written to a temporary path, verified, and only then renamed into place
with its report `<artifact>.verify.json` beside it (for ONNX: `DIR/model.onnx.verify.json`).
A failed verification deletes the artifact and raises.
"""
from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path

from edgeprune.errors import ExportError, OutputError

from edgeprune.guard import OutLock, refuse_overlap, set_stage

from .common import DTYPES, check_dtype, check_out_path, needed_bytes, require, staged

__all__ = ["DTYPES", "export"]
# What the writer learnt about the artifact that the verify report and the export result carry.
REPORTED = ("architecture", "fallbacks", "bits_per_weight", "int4", "imatrix_tensors")


def _tokenizer(model_dir: Path):
    """The model's tokenizer, or None when the directory has none (verification then uses
    fixed random token ids); tokenizer files that do not load are refused (`tokenizer_for`)."""
    from edgeprune.data import NoTokenizerError, tokenizer_for

    try:
        return tokenizer_for(model_dir)
    except NoTokenizerError:
        return None


def _require(fmt: str, verify: bool) -> None:
    if fmt == "onnx":
        for mod in ("onnx", "onnxruntime", "onnxscript"):
            require(mod, "onnx", "ONNX export")
    else:
        require("gguf", "gguf", "GGUF export")
        if verify:
            require("llama_cpp", "gguf", "GGUF verification (llama-cpp-python)")


def export(model, fmt: str, out: str | Path, *, dtype: str = "f32", verify: bool = True, force: bool = False,  # long: stages
           model_dir: str | Path | None = None, progress: bool = False, imatrix: dict | None = None,
           gguf_pre: str | None = None) -> dict:
    """Export a model directory (streamed: never loaded whole for GGUF or verification), or
    a loaded model plus `model_dir` for its tokenizer. Memory is measured per stage.
    `imatrix`: {GGUF tensor name: mean x^2 per input column} for llama.cpp's k-quants
    (`edgeprune.imatrix.from_calibration` builds it from a calibration set). `gguf_pre`: the
    llama.cpp pre-tokenizer name, for a tokenizer whose pre-tokenizer is not recognised."""
    from edgeprune.memory import stage_report
    from edgeprune.tensorfiles import check_free_space

    from .dtypes import get as dtype_facts
    from .gguf_writer import gguf_arch

    dtype = check_dtype(fmt, dtype)
    if imatrix is not None and not (fmt == "gguf" and dtype_facts(dtype).llama_quantizer):
        raise ExportError(f"an importance matrix is used by llama.cpp's k-quants only, not {fmt} {dtype}; "
                          "drop --imatrix or export gguf q4_k_m, q5_k_m or q6_k")
    _require(fmt, verify)
    out = Path(out).absolute()
    if fmt == "gguf" and out.suffix != ".gguf":
        raise OutputError(f"--out {out.name} for GGUF must be a file name ending in .gguf, e.g. {out.name}.gguf")
    streamed = isinstance(model, (str, Path))
    model_dir = Path(model if streamed else model_dir) if (streamed or model_dir) else None
    refuse_overlap(out, {"model": model_dir})
    check_out_path(out, force)
    view, tok = _open(model, model_dir, streamed)
    reference = model_dir if streamed else model
    if fmt == "gguf":
        gguf_arch(view)  # refuse inexpressible shapes before writing anything
        if model_dir:
            from .vocab import preflight

            preflight(model_dir, gguf_pre)  # and a vocabulary llama.cpp cannot hold as transformers does
    check_free_space(out.parent, needed_bytes(view, fmt, dtype))
    t0 = time.perf_counter()
    stages: dict = {}
    try:
        with OutLock(out, beside=True):  # a second export into the same --out is refused, naming this pid
            meta, report = _write_and_verify(fmt, dtype, out, force, view, model if not streamed else None, model_dir,
                                             reference, tok, verify, progress, stages, imatrix, gguf_pre)
    except OSError as e:
        if _disk_full(e):  # staged() has already removed the partial artifact
            from edgeprune.tensorfiles import free_bytes

            raise OutputError(f"disk full while writing {out.name} ({free_bytes(out.parent) / 1e9:.2f} GB free); "
                              "free space or choose another --out") from None
        raise
    if fmt == "gguf":
        artifact, report_path, size = out, out.with_name(out.name + ".verify.json"), out.stat().st_size
    else:
        artifact, report_path = out / "model.onnx", out / "model.onnx.verify.json"
        size = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and not p.name.endswith(".json"))
    if not verify:
        print(f"edgeprune: WARNING: {artifact} was exported WITHOUT verification", file=sys.stderr)
    return {"format": fmt, "dtype": dtype, "path": str(artifact), "bytes": size, "seconds": time.perf_counter() - t0,
            "verify": report or {"passed": None, "skipped": True}, "verify_report": str(report_path) if report else None,
            "peak_memory": stage_report(stages),
            **{k: meta[k] for k in ("tensor_types", "genai_files", *REPORTED) if k in meta}}


def _disk_full(e: OSError) -> bool:
    """ENOSPC or a quota, or numpy's `tofile` reporting the short write a full disk makes
    ("N requested and M written", without an errno): the GGUF writer writes tensors that way."""
    import re

    return e.errno in (errno.ENOSPC, errno.EDQUOT) or (e.errno is None and bool(re.search(r"requested and \d+ written", str(e))))


def _open(model, model_dir: Path | None, streamed: bool):
    """The weights view and tokenizer, checked against each other and the config before
    anything is written: a shape the config does not imply, or token ids the embedding
    cannot look up, are one line here instead of a failure inside a writer."""
    from edgeprune.streaming import CheckpointSource

    from .source import WeightsView

    if streamed:
        CheckpointSource(model_dir).check_complete()
    view = WeightsView.from_dir(model_dir) if streamed else WeightsView.from_model(model, model_dir)
    tok = _tokenizer(model_dir) if model_dir else None
    rows = int(view.adapter.vocab_size)
    if tok is not None and len(tok) > rows:
        raise ExportError(f"the tokenizer in {model_dir} has {len(tok)} tokens but the embedding has only {rows} rows: "
                          "the tokenizer belongs to another model; copy the base model's tokenizer files")
    return view, tok


def _write_and_verify(fmt, dtype, out, force, view, model, model_dir, reference, tok, verify, progress, stages,
                      imatrix=None, gguf_pre=None):
    """Write to a staged path, verify there, rename only on success; memory per stage."""
    from edgeprune.memory import PeakMemory

    from .dtypes import get as dtype_facts
    from .gguf_kquant import write_llama_quantized
    from .gguf_writer import write_gguf
    from .verify import verify_artifact

    meta: dict = {}
    report = None
    companions: list = []
    with staged(out, force, companions) as tmp:
        set_stage(f"export {fmt} write")
        with PeakMemory() as mem:
            if fmt == "gguf":
                meta = (write_llama_quantized(view, tmp, dtype, progress, imatrix, gguf_pre)
                        if dtype_facts(dtype).llama_quantizer else write_gguf(view, tmp, dtype, progress, imatrix, gguf_pre))
                path = tmp
            else:
                path = _write_onnx_package(tmp, dtype, view, model, model_dir, tok, mem, meta)
        stages["export"] = mem
        if verify:
            set_stage(f"export {fmt} verify")
            with PeakMemory() as mem:
                report = verify_artifact(reference, path, dtype, tok, progress=progress)
            stages["verify"] = mem
            report.update({"format": fmt, **{k: meta[k] for k in REPORTED if k in meta}})
            _fail_if(report, out)
        _stage_report(fmt, out, tmp, report, companions)
    return meta, report


def _stage_report(fmt: str, out: Path, tmp: Path, report: dict | None, companions: list) -> None:
    """The verify report goes in with the artifact (ONNX: inside its folder; GGUF: beside it,
    renamed just before the artifact). An unverified GGUF must not inherit the report of
    the artifact it replaces, so that one goes."""
    if fmt == "onnx":
        if report is not None:
            (tmp / "model.onnx.verify.json").write_text(json.dumps(report, indent=1))
        return
    final = out.with_name(out.name + ".verify.json")
    if report is None:
        final.unlink(missing_ok=True)
        return
    t = out.with_name(f".{out.stem}.partial-{os.getpid()}.verify.json")  # an orphan of it is cleaned by staged()
    companions.append((t, final))
    t.write_text(json.dumps(report, indent=1))


def _write_onnx_package(tmp: Path, dtype: str, view, model, model_dir, tok, mem, meta: dict) -> Path:
    """model.onnx (int4: exported in f32, then quantised), its graph checked, plus the
    onnxruntime-genai files (genai_config.json, tokenizer) in the same folder."""
    from .genai import write_package
    from .onnx import EXTERNAL_DATA_THRESHOLD, check_graph, write_onnx, write_onnx_isolated

    base = "f32" if dtype == "int4" else dtype
    if model is None:
        path, child_peak = write_onnx_isolated(model_dir, tmp, base)
        mem.include(mem.baseline_bytes + child_peak)  # both were resident
    else:
        path = write_onnx(model, tmp, base)
    if dtype == "int4":
        from .onnx_int4 import quantize_int4

        f32_bytes = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
        meta["int4"] = quantize_int4(path, int(view.adapter.vocab_size), external=f32_bytes / 6 > EXTERNAL_DATA_THRESHOLD)
    check_graph(path, view)
    meta["genai_files"] = write_package(tmp, view, tok)
    return path


def _fail_if(report: dict, out: Path) -> None:
    from .dtypes import failure_hint

    if not report.get("all_finite", True):
        raise ExportError(f"verification of {out.name} failed: NaN or Inf in the logits or perplexity "
                          "(check the model's weights for NaN); the artifact was deleted")
    from .verify import text_failure

    text = text_failure(report)
    if text:
        raise ExportError(f"verification of {out.name} failed through the text path: {text}; the artifact was deleted")
    if not report["passed"]:
        from edgeprune.errors import ToleranceError

        raise (ToleranceError if report["dtype"] != "f32" else ExportError)(
            f"verification of {out.name} failed ({report['dtype']}: max abs logit diff {report['max_abs_logit_diff']:.3g}, "
            f"top-1 {report['top1_agreement']:.3f}, greedy match {report['greedy_tokens_match']}, PPL delta "
            f"{report['perplexity']['relative_delta']:.3%}); the artifact was deleted"
            + (f"; {failure_hint(report['dtype'])}" if failure_hint(report["dtype"]) else "")
        )

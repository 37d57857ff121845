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
import sys
import time
from pathlib import Path

from edgeprune.errors import ExportError, OutputError

from edgeprune.io.guard import refuse_overlap, set_stage
from edgeprune.io.outlock import OutLock

from .common import DTYPES, check_dtype, check_imatrix, check_out_path, needed_bytes, staged

__all__ = ["DTYPES", "export"]
# What the writer learnt about the artifact that the verify report and the export result carry.
REPORTED = ("architecture", "fallbacks", "bits_per_weight", "int4", "imatrix_tensors")


def model_tokenizer(model_dir: Path):
    """The model's tokenizer, or None when the directory has none (verification then uses
    fixed random token ids); tokenizer files that do not load are refused (`tokenizer_for`)."""
    from edgeprune.calibrate.data import NoTokenizerError, tokenizer_for

    try:
        return tokenizer_for(model_dir)
    except NoTokenizerError:
        return None


def export(model, fmt: str, out: str | Path, *, dtype: str = "f32", verify: bool = True, force: bool = False,  # long: stages
           model_dir: str | Path | None = None, progress: bool = False, imatrix: dict | None = None,
           gguf_pre: str | None = None) -> dict:
    """Export a model directory (streamed: never loaded whole for GGUF or verification), or
    a loaded model plus `model_dir` for its tokenizer. Memory is measured per stage.
    `imatrix`: {GGUF tensor name: mean x^2 per input column} for llama.cpp's k-quants
    (`edgeprune.calibrate.imatrix.from_calibration` builds it from a calibration set). `gguf_pre`: the
    llama.cpp pre-tokenizer name, for a tokenizer whose pre-tokenizer is not recognised."""
    from edgeprune.measure.memory import stage_report
    from edgeprune.io.tensorfiles import check_free_space

    from .formats import get as get_format

    dtype = check_dtype(fmt, dtype)
    form = get_format(fmt)
    if imatrix is not None:
        check_imatrix(fmt, dtype)
    form.require(verify)
    out = Path(out).absolute()
    form.check_out(out)
    streamed = isinstance(model, (str, Path))
    model_dir = Path(model if streamed else model_dir) if (streamed or model_dir) else None
    refuse_overlap(out, {"model": model_dir})
    check_out_path(out, force)
    view, tok = _open(model, model_dir, streamed)
    reference = model_dir if streamed else model
    form.preflight(view, model_dir, gguf_pre)  # what the format cannot express, before writing anything
    check_free_space(out.parent, needed_bytes(view, fmt, dtype))
    t0 = time.perf_counter()
    stages: dict = {}
    try:
        with OutLock(out, beside=True):  # a second export into the same --out is refused, naming this pid
            meta, report = _write_and_verify(fmt, dtype, out, force, view, model if not streamed else None, model_dir,
                                             reference, tok, verify, progress, stages, imatrix, gguf_pre)
    except OSError as e:
        if _disk_full(e):  # staged() has already removed the partial artifact
            from edgeprune.io.tensorfiles import free_bytes

            raise OutputError(f"disk full while writing {out.name} ({free_bytes(out.parent) / 1e9:.2f} GB free); "
                              "free space or choose another --out") from None
        raise
    artifact, report_path, size = form.written(out)
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
    from edgeprune.calibrate.streaming import CheckpointSource

    from .source import WeightsView

    if streamed:
        CheckpointSource(model_dir).check_complete()
    view = WeightsView.from_dir(model_dir) if streamed else WeightsView.from_model(model, model_dir)
    tok = model_tokenizer(model_dir) if model_dir else None
    check_tokenizer_rows(tok, int(view.adapter.vocab_size), model_dir)
    return view, tok


def check_tokenizer_rows(tok, rows: int, model_dir) -> None:
    """Every token id the tokenizer can give needs an embedding row (llama.cpp and ORT GenAI
    look them up); `build` asks this before any work, `export` before anything is written."""
    if tok is None or len(tok) <= rows:
        return
    beyond = [t for t, i in tok.get_vocab().items() if i >= rows]
    named = ", ".join(sorted(beyond)[:3]) + (", ..." if len(beyond) > 3 else "")
    raise ExportError(f"the tokenizer in {model_dir} has {len(tok)} tokens but the embedding has only {rows} rows "
                      f"(no row for {named}): the tokenizer belongs to another model, or tokens were added without "
                      "resizing the embedding; copy the base model's tokenizer files, or resize the embedding "
                      "(transformers' model.resize_token_embeddings(len(tokenizer))) and save the model again")


def _write_and_verify(fmt, dtype, out, force, view, model, model_dir, reference, tok, verify, progress, stages,
                      imatrix=None, gguf_pre=None):
    """Write to a staged path, verify there, rename only on success; memory per stage."""
    from edgeprune.measure.memory import PeakMemory

    from .formats import ExportJob
    from .formats import get as get_format
    from .verify import verify_artifact

    form = get_format(fmt)
    report = None
    companions: list = []
    with staged(out, force, companions) as tmp:
        set_stage(f"export {fmt} write")
        with PeakMemory() as mem:
            job = ExportJob(dtype, tmp, view, model, model_dir, tok, mem, {}, progress, imatrix, gguf_pre)
            path = form.write(job)
        stages["export"] = mem
        if verify:
            set_stage(f"export {fmt} verify")
            with PeakMemory() as mem:
                report = verify_artifact(reference, path, dtype, tok, progress=progress)
            stages["verify"] = mem
            report.update({"format": fmt, **{k: job.meta[k] for k in REPORTED if k in job.meta}})
            _fail_if(report, out)
        form.stage_report(out, tmp, report, companions)
    return job.meta, report


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

"""ONNX for ONNX Runtime: a folder holding `model.onnx` (decoder with per-layer past KV), its
external data, the onnxruntime-genai package files and, inside it, the verify report."""
from __future__ import annotations

import json
from pathlib import Path

from .formats import Format, register
from .names import ONNX_MODEL


class ONNX(Format):
    name = "onnx"
    runtime = "onnxruntime"
    dtypes = ("f32", "f16", "int4")
    extra = "onnx"
    packages = (("onnx", "ONNX export"), ("onnxruntime", "ONNX export"), ("onnxscript", "ONNX export"))
    describe = "an ONNX model (.onnx or a directory holding model.onnx)"
    out_help = "a directory"
    # int4 probes go through ORT's MatMulNBits quantiser, exactly as the export writes them
    latency_dtypes = ("f32", "f16", "int4")
    latency_runtime = "onnxruntime-genai"
    shallow_probes = True  # ~10 s of export a layer: the full design on 2-layer probes, full depth held out

    def artifact_name(self, dtype: str) -> str:
        return f"onnx-{dtype}"

    def is_artifact(self, p: Path) -> bool:
        return p.is_dir() and (p / ONNX_MODEL).is_file() or p.is_file() and p.suffix == ".onnx"

    def verify_report(self, out: Path) -> Path:
        return out / f"{ONNX_MODEL}.verify.json"

    def report_of(self, artifact: Path) -> Path:
        """A folder's report is inside it; a bare graph file's is beside it under its own name
        (model.onnx's is the folder's: the same path; any other name has none of edgeprune's)."""
        return self.verify_report(artifact) if artifact.is_dir() else artifact.with_name(f"{artifact.name}.verify.json")

    def written(self, out: Path) -> tuple[Path, Path, int]:
        size = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and not p.name.endswith(".json"))
        return out / ONNX_MODEL, self.verify_report(out), size

    def kv_bytes(self, dtype: str) -> int:
        return 2 if dtype == "f16" else 4  # the past KV is in the graph's float type

    def intermediate_bytes(self, n: int, stored: int, dtype: str) -> int:
        return n * 4 if dtype == "int4" else 0  # exported in f32 first

    def write(self, job) -> Path:
        """model.onnx (int4: exported in f32, then quantised), its graph checked, plus the
        onnxruntime-genai files (genai_config.json, tokenizer) in the same folder."""
        from .genai import write_package
        from .onnx import EXTERNAL_DATA_THRESHOLD, check_graph, write_onnx, write_onnx_isolated

        tmp, mem = job.tmp, job.mem
        base = "f32" if job.dtype == "int4" else job.dtype
        if job.model is None:
            path, child_peak = write_onnx_isolated(job.model_dir, tmp, base)
            mem.include(mem.baseline_bytes + child_peak)  # both were resident
        else:
            path = write_onnx(job.model, tmp, base)
        if job.dtype == "int4":
            from .onnx_int4 import quantize_int4

            f32_bytes = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
            job.meta["int4"] = quantize_int4(path, int(job.view.adapter.vocab_size),
                                             external=f32_bytes / 6 > EXTERNAL_DATA_THRESHOLD)
        check_graph(path, job.view)
        job.meta["genai_files"] = write_package(tmp, job.view, job.tok)
        return path

    def stage_report(self, out: Path, tmp: Path, report: dict | None, companions: list) -> None:
        if report is not None:  # inside the folder: it goes in with the artifact
            self.verify_report(tmp).write_text(json.dumps(report, indent=1))

    def session(self, path: Path, purpose: str, *, n_ctx: int = 512, threads: int | None = None):
        from .runtimes import OnnxSession

        if purpose == "latency":
            from .genai import CONFIG, GenAISession, available

            folder = path if path.is_dir() else path.parent
            if (folder / CONFIG).is_file() and available():
                return GenAISession(folder, threads=threads)  # the generator loop an ORT GenAI user runs
        return OnnxSession(path, threads=threads, low_memory=purpose == "verify")

    def second_runtime(self, path: Path, prompts: list[list[int]], tokenizer=None):
        from .verify import genai_side

        return genai_side(path, prompts, tokenizer)  # the package's generator loop, as a GenAI user runs it

    def min_runtime(self, artifact: dict, path: Path) -> str:
        from .artifacts import onnx_min_runtime

        return onnx_min_runtime(path)

    def context(self, path: Path) -> tuple[int, str] | None:
        from .artifacts import genai_context

        return genai_context(path)

    def runtime_version(self) -> str:
        import onnxruntime

        from .genai import available

        return f"onnxruntime {onnxruntime.__version__}; onnxruntime-genai {available()}"

    def inspect(self, path: Path) -> dict:
        from edgeprune.report.inspect_artifacts import inspect_onnx

        return inspect_onnx(path)

    def write_probe(self, adapter, cfg: dict, view, out: Path, dtype: str) -> Path:
        import torch

        from edgeprune.models.pruned_modeling import CLASSES

        from .genai import write_package
        from .onnx import write_onnx
        from .source import WeightsView

        torch.manual_seed(0)
        model = CLASSES[adapter.family][1](cfg).eval()
        path = write_onnx(model, out, "f32" if dtype == "int4" else dtype)
        if dtype == "int4":  # weight-only MatMulNBits, as the export quantises it
            from .onnx_int4 import quantize_int4

            quantize_int4(path, int(adapter.vocab_size), external=False)
        write_package(out, WeightsView.from_model(model), None)
        return out


register(ONNX())

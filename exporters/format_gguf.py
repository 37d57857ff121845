"""GGUF for llama.cpp: a single `.gguf` file, written streamed by edgeprune's own writer or
(the k-quants) by llama.cpp's quantizer; its verify report sits beside it."""
from __future__ import annotations

import json
from pathlib import Path

from edgeprune.errors import OutputError

from .formats import Format, register


class GGUF(Format):
    name = "gguf"
    runtime = "llama.cpp"
    dtypes = ("f32", "f16", "bf16", "q8_0", "q4_0", "q6_k", "q5_k_m", "q4_k_m")
    extra = "gguf"
    packages = (("gguf", "GGUF export"),)
    verify_packages = (("llama_cpp", "GGUF verification (llama-cpp-python)"),)
    single_file = True
    describe = "a .gguf file"
    out_help = "the .gguf file"
    # k-quants are probed through llama.cpp's quantizer, with its fallbacks, as the export makes them
    latency_dtypes = ("f32", "f16", "bf16", "q8_0", "q4_0", "q6_k", "q5_k_m", "q4_k_m")
    latency_runtime = "llama.cpp"

    def artifact_name(self, dtype: str) -> str:
        return f"model-{dtype}.gguf"

    def is_artifact(self, p: Path) -> bool:
        return p.suffix == ".gguf" and p.is_file()

    def check_out(self, out: Path) -> None:
        if out.suffix != ".gguf":
            raise OutputError(f"--out {out.name} for GGUF must be a file name ending in .gguf, e.g. {out.name}.gguf")

    def refuse_foreign(self, out: Path) -> None:
        if out.stat().st_size >= 4:
            with open(out, "rb") as f:
                if f.read(4) != b"GGUF":
                    raise OutputError(f"{out} exists and is not a GGUF file; edgeprune will not overwrite it, "
                                      "choose another --out")

    def verify_report(self, out: Path) -> Path:
        return out.with_name(out.name + ".verify.json")

    def written(self, out: Path) -> tuple[Path, Path, int]:
        return out, self.verify_report(out), out.stat().st_size

    def preflight(self, view, model_dir: Path | None, gguf_pre: str | None) -> None:
        from .gguf_writer import gguf_arch

        gguf_arch(view)  # refuse inexpressible shapes before writing anything
        super().preflight(view, model_dir, gguf_pre)

    def preflight_tokenizer(self, model_dir: Path, gguf_pre: str | None) -> None:
        from .vocab import preflight

        preflight(model_dir, gguf_pre)  # a vocabulary llama.cpp cannot hold as transformers does

    def intermediate_bytes(self, n: int, stored: int, dtype: str) -> int:
        from .dtypes import get

        return n * stored if get(dtype).llama_quantizer else 0  # llama.cpp quantises from a GGUF in the stored dtype

    def write(self, job) -> Path:
        from .dtypes import get
        from .gguf_kquant import write_llama_quantized
        from .gguf_writer import write_gguf

        writer = write_llama_quantized if get(job.dtype).llama_quantizer else write_gguf
        job.meta.update(writer(job.view, job.tmp, job.dtype, job.progress, job.imatrix, job.gguf_pre))
        return job.tmp

    def stage_report(self, out: Path, tmp: Path, report: dict | None, companions: list) -> None:
        """Beside the artifact, renamed just before it. An unverified GGUF must not inherit
        the report of the artifact it replaces, so that one goes."""
        final = self.verify_report(out)
        if report is None:
            final.unlink(missing_ok=True)
            return
        from edgeprune.io.outdir import partial

        t = partial(out.parent, out.stem, ".verify.json")  # an orphan of it is cleaned by staged()
        companions.append((t, final))
        t.write_text(json.dumps(report, indent=1))

    def session(self, path: Path, purpose: str, *, n_ctx: int = 512, threads: int | None = None):
        from .runtimes import GGUFSession

        if purpose == "latency":  # realistic settings: default f16 KV cache and attention path
            return GGUFSession(path, n_ctx=n_ctx, threads=threads, exact=False)
        return GGUFSession(path, n_ctx=n_ctx, threads=threads)

    def text_path(self, sess):
        from .text_path import LlamaCppText

        return LlamaCppText(sess.llm, self.runtime)  # llama.cpp's tokenizer and sampler through its C API

    def weight_bytes(self, artifact: Path, dtype: str, ad) -> int:
        from .artifacts import gguf_linear_bytes

        return gguf_linear_bytes(artifact)  # read off the file: llama.cpp's mixes differ per tensor

    def min_runtime(self, artifact: dict, path: Path) -> str:
        from .artifacts import gguf_min_runtime

        return gguf_min_runtime(artifact["architecture"])

    def context(self, path: Path) -> tuple[int, str] | None:
        from .artifacts import gguf_context

        return gguf_context(path)

    def runtime_version(self) -> str:
        import llama_cpp

        return f"llama-cpp-python {llama_cpp.__version__}"

    def inspect(self, path: Path) -> dict:
        from edgeprune.report.inspect_artifacts import inspect_gguf

        return inspect_gguf(path)

    def write_probe(self, adapter, cfg: dict, view, out: Path, dtype: str) -> Path:
        from .dtypes import get

        if get(dtype).llama_quantizer:
            from .gguf_kquant import write_llama_quantized

            write_llama_quantized(view(), out.with_suffix(".gguf"), dtype)
        else:
            from .gguf_writer import write_gguf

            write_gguf(view(), out.with_suffix(".gguf"), dtype)
        return out.with_suffix(".gguf")


register(GGUF())

"""Every export format, registered with what it is: its dtypes, its artifact's layout, its
writer, the session its runtime opens, how it is verified, timed and read back, and the
packages and runtime versions it needs. `DType` is the table beside it (bytes, blocks,
GGML and torch types). Build, profile, provenance, targets, bench, latency, verify and
inspect ask this registry instead of branching on a format's name, so that a new format is
one module (a `Format` subclass calling `register`) plus its name in `MODULES`.

This module imports neither torch nor a runtime: `edgeprune bench` runs on a device
without torch, and a format's heavy imports happen inside its own methods.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.errors import ExportError

MODULES = ("format_gguf", "format_onnx")  # one line per format: its module in exporters/

_REGISTRY: dict[str, "Format"] = {}


@dataclass
class ExportJob:
    """One export's inputs, as every writer receives them (`Format.write`)."""

    dtype: str
    tmp: Path  # the staged path to write (renamed into place after verification)
    view: object  # source.WeightsView
    model: object = None  # a loaded model (the Python API), else None: streamed from model_dir
    model_dir: Path | None = None
    tok: object = None
    mem: object = None  # the write stage's memory.PeakMemory
    meta: dict = field(default_factory=dict)  # what the writer reports (tensor types, fallbacks ...)
    progress: bool = False
    imatrix: dict | None = None
    gguf_pre: str | None = None


class Format:
    """What a format declares; the defaults are the common case, a format overrides the rest.
    `packages`: (module, purpose) pairs its export needs; `verify_packages`: what verifying
    it adds; `extra`: the pip extra whose install hint the one-line error names."""

    name: str = ""
    runtime: str = ""  # the runtime's name in reports ("llama.cpp")
    dtypes: tuple[str, ...] = ()  # the dtypes it carries, in help order (facts in dtypes.TABLE)
    extra: str = ""
    packages: tuple[tuple[str, str], ...] = ()
    verify_packages: tuple[tuple[str, str], ...] = ()
    kv_element_bytes: int = 2  # bytes per KV-cache element its runtime keeps by default (llama.cpp: f16)
    single_file: bool = False  # the artifact is one file (an --out that is a file may be one to overwrite)
    describe: str = ""  # what its artifact looks like, for the error naming every format
    out_help: str = ""  # what `export --out` names for it, for the flag's help
    latency_dtypes: tuple[str, ...] = ()  # the dtypes the latency model can probe and fit
    latency_runtime: str = ""  # the runtime the latency model times (its cache key)
    shallow_probes: bool = False  # each probe layer costs an export: time the full design on 2-layer probes

    # ---- layout ------------------------------------------------------------------------
    def artifact_name(self, dtype: str) -> str:
        """The artifact's name inside a build's artifacts/ and reference/ folders."""
        raise NotImplementedError

    def is_artifact(self, p: Path) -> bool:
        """Whether `p` is an artifact of this format (inspect, bench, the runtimes)."""
        raise NotImplementedError

    def check_out(self, out: Path) -> None:
        """Refuse an --out this format cannot write (one line), before any work."""

    def refuse_foreign(self, out: Path) -> None:
        """Refuse to overwrite an existing single-file `out` that this format did not write."""

    def verify_report(self, out: Path) -> Path:
        """Where the verify report of the artifact at `out` is kept (beside it, or inside a folder)."""
        raise NotImplementedError

    def report_of(self, artifact: Path) -> Path:
        """The verify report of an artifact path as `written` returns it (inspect, resume)."""
        return self.verify_report(artifact)

    def written(self, out: Path) -> tuple[Path, Path, int]:
        """(artifact path, verify report path, bytes on disk) once `out` is in place."""
        raise NotImplementedError

    # ---- writing and verifying -----------------------------------------------------------
    def require(self, verify: bool) -> None:
        from .runtime_imports import require

        for mod, purpose in self.packages + (self.verify_packages if verify else ()):
            require(mod, self.extra, purpose)

    def preflight(self, view, model_dir: Path | None, gguf_pre: str | None) -> None:
        """Refuse what the format cannot express, before anything is written."""
        if model_dir:
            self.preflight_tokenizer(model_dir, gguf_pre)

    def preflight_tokenizer(self, model_dir: Path, gguf_pre: str | None) -> None:
        """Refuse a vocabulary the runtime cannot hold (the build asks before any work)."""

    def write(self, job) -> Path:
        """Write `job.tmp` (an `exporters.ExportJob`); returns the path a session opens."""
        raise NotImplementedError

    def stage_report(self, out: Path, tmp: Path, report: dict | None, companions: list) -> None:
        """Put the verify report where this format keeps it, staged with the artifact."""
        raise NotImplementedError

    def kv_bytes(self, dtype: str) -> int:
        return self.kv_element_bytes

    def intermediate_bytes(self, n: int, stored: int, dtype: str) -> int:
        """Scratch bytes the writer needs beyond the artifact, for `n` weights stored at
        `stored` bytes each (checked against free space before writing)."""
        return 0

    # ---- running -------------------------------------------------------------------------
    def session(self, path: Path, purpose: str, *, n_ctx: int = 512, threads: int | None = None):
        """The one place a runtime session is opened for an artifact. `purpose`: "verify"
        (exact settings, low memory), "eval" (perplexity) or "latency" (the runtime's own
        defaults, the loop a user runs). Runtime logs are quiet unless -v (`runtime_imports.require`)."""
        raise NotImplementedError

    @property
    def has_second_runtime(self) -> bool:
        """Whether the format overrides `second_runtime` (its package is verified in a second
        runtime too): what a table of every format asks before giving that runtime a row."""
        return type(self).second_runtime is not Format.second_runtime

    def second_runtime(self, path: Path, prompts: list[list[int]], tokenizer=None):
        """(greedy tokens, why skipped, text-path runs) through a second runtime the artifact
        is packaged for (ONNX: onnxruntime-genai's generator), verified beside the first;
        (None, None, None) when there is none."""
        return None, None, None

    def text_path(self, sess):
        """The runtime's own tokenizer and text generation over an open session (verification
        at the user's interface, `text_path.py`), or None when the runtime takes ids only."""
        return None

    def weight_bytes(self, artifact: Path, dtype: str, ad) -> int:
        """Bytes of every linear weight a decoded token reads (lm_head in, embedding out)."""
        from edgeprune.models import expected_nonembedding

        from edgeprune.dtypes import get

        non_emb = expected_nonembedding(ad, ad.layer_shapes())
        norms = 2 * ad.hidden_size * len(ad.layer_shapes()) + ad.hidden_size
        return int((non_emb - norms + ad.vocab_size * ad.hidden_size) * get(dtype).bytes_per_weight)

    def min_runtime(self, artifact: dict, path: Path) -> str:
        """The runtime version an artifact (its profile record and path) needs."""
        raise NotImplementedError

    def runtime_version(self) -> str:
        """The installed runtime, for the latency model's cache key."""
        raise NotImplementedError

    def inspect(self, path: Path) -> dict:
        raise NotImplementedError

    def context(self, path: Path) -> tuple[int, str] | None:
        """(tokens, where it is recorded) of the artifact's context window, or None."""
        return None

    def write_probe(self, adapter, cfg: dict, view, out: Path, dtype: str) -> Path:
        """A random-weight latency probe artifact (latency_probe), by this format's writer;
        `view()` makes its random-weight `WeightsView` for a writer that streams one."""
        raise NotImplementedError


def register(fmt: Format) -> Format:
    _REGISTRY[fmt.name] = fmt
    return fmt


def _load() -> dict[str, Format]:
    if not _REGISTRY:
        for m in MODULES:
            importlib.import_module(f"{__package__}.{m}")
    return _REGISTRY


def names() -> tuple[str, ...]:
    return tuple(_load())


def get(name: str) -> Format:
    """The registered format, or the one-line error naming the choices."""
    reg = _load()
    if name not in reg:
        raise ExportError(f"unknown format '{name}'; choose {' or '.join(reg)}")
    return reg[name]


def kinds(word: str = "or") -> str:
    """Every format's artifact described, joined by `word` (an error or a help naming them all)."""
    return f" {word} ".join(f.describe for f in _load().values())


def of_path(path: str | Path) -> Format | None:
    """The format whose artifact `path` is, or None."""
    p = Path(path)
    return next((f for f in _load().values() if f.is_artifact(p)), None)


def for_path(path: str | Path) -> Format:
    """`of_path`, or the one-line error when `path` is missing or no format's artifact."""
    p = Path(path)
    if not p.exists():
        raise ExportError(f"artifact {p} does not exist")
    f = of_path(p)
    if f is None:
        raise ExportError(f"{p} is neither {kinds('nor')}")
    return f

"""A measured latency model per runtime and dtype: decode ms/token of any per-layer shape plan.

    lm = latency_model(adapter, "gguf", "q8_0", context=128, threads=2)
    lm.model_ms(shapes)        # shapes: a LayerShape per layer, None where a layer is dropped
    lm.relative_error          # median |predicted - measured| / measured on held-out shapes

Built by timing random-weight artifacts of the model's widths in the real runtime
(`latency_probe.py`) and fitting fixed + sum of per-layer terms (`latency_fit.py`), so the
search can spend its budget where the target's runtime actually spends time. Tables are
cached in `$EDGEPRUNE_CACHE/latency/` by (runtime, version, dtype, widths, context, threads,
host); `edgeprune bench --latency-table OUT.json` writes the same table on the device, and
`latency_model(..., table=OUT.json)` uses it instead of the build host's.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..io.atomic import write_text
from ..errors import EdgePruneError
from .latency import DEFAULT_NEW_TOKENS
from .latency_fit import TERMS, active_terms, design_row, fit, layer_features, relative_errors
from ..models import LayerShape

MODEL_VERSION = 3  # a cached table made by another version is measured again (3: ORT fits its full-depth dense probe)
REPS = 7  # more than a speedup check's latency.DEFAULT_REPS: a probe is one point of a fit, and the fit's error is reported
NEW_TOKENS = DEFAULT_NEW_TOKENS


class LatencyTableError(EdgePruneError):
    pass


@dataclass
class LatencyModel:
    """Decode ms/token = fixed + sum over present layers of coef . terms(shape) (latency_fit)."""

    runtime: str  # "llama.cpp" | "onnxruntime-genai"
    fmt: str  # "gguf" | "onnx"
    dtype: str  # e.g. "f32", "q8_0", "f16"
    context: int  # tokens already in the KV cache when decoding
    threads: int
    key: dict  # what it was measured for: runtime, version, dtype, widths, context, threads, host
    source: str  # "host" (measured here) or "table" (read from a file made on the device)
    relative_error: float  # median |pred - measured| / measured on held-out shapes (not fitted on)
    coefficients: dict = field(default_factory=dict)  # {"fixed": ms, term: ms per unit}
    fitted: list = field(default_factory=list)  # [{name, shapes, measured_ms, predicted_ms}]
    held_out: list = field(default_factory=list)
    build_seconds: float = 0.0
    runtime_description: str = ""

    def _feats(self, heads: int, kv_heads: int, ffn: int) -> dict[str, float]:
        return layer_features(self.key["widths"], self.fmt, self.dtype, self.context, heads, kv_heads, ffn)

    def layer_ms(self, heads: int, kv_heads: int, ffn: int) -> float:
        """Decode ms/token of one present layer of that shape (quantisation fallbacks included)."""
        f = self._feats(heads, kv_heads, ffn)
        return float(sum(self.coefficients.get(t, 0.0) * f[t] for t in TERMS))

    def fixed_ms(self) -> float:
        """Embedding, final norm, lm_head and the runtime's per-token overhead."""
        return float(self.coefficients["fixed"])

    def model_ms(self, shapes: list[LayerShape | None]) -> float:
        """Predicted decode ms/token of a model with these layers (None: a dropped layer)."""
        return self.fixed_ms() + sum(self.layer_ms(s.num_heads, s.num_kv_heads, s.intermediate_size)
                                     for s in shapes if s is not None)

    @property
    def max_relative_error(self) -> float:
        """The largest |pred - measured| / measured over the held-out shapes. A shallow design
        (ORT) holds out the full-depth dense model among shallow mixes: the median can hide the
        error of the one extrapolation in depth that every real prediction makes."""
        errs = [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in self.held_out
                if r.get("measured_ms")]
        return max(errs) if errs else float("nan")

    def to_json(self) -> dict:
        return {"edgeprune_latency_model": MODEL_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, d: dict) -> "LatencyModel":
        if not isinstance(d, dict) or d.get("edgeprune_latency_model") != MODEL_VERSION:
            raise LatencyTableError(f"not an edgeprune latency model of version {MODEL_VERSION}")
        names = cls.__dataclass_fields__
        missing = [k for k in ("runtime", "fmt", "dtype", "context", "threads", "key", "coefficients") if k not in d]
        if missing:
            raise LatencyTableError(f"latency model lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k in names})


def widths_of(adapter) -> dict:
    """What the probes' artifacts share with the model: family, widths, vocabulary, dense shape."""
    s = adapter.layer_shapes()[0] if not getattr(adapter.config, "edgeprune_layers", None) else None
    dense = s or max(adapter.layer_shapes(), key=lambda x: (x.intermediate_size, x.num_heads))
    return {"family": adapter.family, "hidden_size": adapter.hidden_size, "head_dim": adapter.head_dim,
            "vocab_size": adapter.vocab_size, "num_layers": adapter.num_layers,
            "tied": bool(getattr(adapter.config, "tie_word_embeddings", False)),
            "attention_bias": adapter.has_attention_bias(), "dense": dense.as_dict()}


def host_id() -> str:
    from .latency import host_info

    h = host_info()
    return hashlib.sha256(json.dumps([h["cpu"], h["cores"], h["machine"], h["gpu"]]).encode()).hexdigest()[:12]


def runtime_version(fmt: str) -> str:
    from exporters.formats import get

    return get(fmt).runtime_version()


def runtime_of(fmt: str) -> str:
    from exporters.formats import get

    return get(fmt).latency_runtime


def _shallow(fmt: str) -> bool:
    from exporters.formats import get

    return get(fmt).shallow_probes


def supported() -> dict[str, tuple[str, ...]]:
    """The (format, dtypes) a latency model can be measured for: each format's `latency_dtypes`."""
    from exporters.formats import get, names

    return {f: get(f).latency_dtypes for f in names() if get(f).latency_dtypes}


def make_key(adapter, fmt: str, dtype: str, context: int, threads: int) -> dict:
    return {"version": MODEL_VERSION, "runtime": runtime_of(fmt), "runtime_version": runtime_version(fmt),
            "fmt": fmt, "dtype": dtype, "widths": widths_of(adapter), "context": int(context),
            "threads": int(threads), "host": host_id()}


def cache_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"{key['fmt']}-{key['dtype']}-{digest}.json"


def default_cache_dir() -> Path:
    from ..io.demo import cache_dir

    return cache_dir() / "latency"


def check_request(fmt: str, dtype: str) -> None:
    """One line before any work for a format/dtype the latency model cannot time yet."""
    if dtype not in supported().get(fmt, ()):
        raise LatencyTableError(f"no latency model for {fmt} {dtype} yet (supported: "
                                + "; ".join(f"{f} {', '.join(d)}" for f, d in supported().items()) + "); budget by --ratio")


def latency_model(adapter, fmt: str, dtype: str, context: int, threads: int, table: Path | None = None,
                  cache_dir: Path | None = None, progress: bool | Callable[[str], None] | None = None) -> LatencyModel:
    """The model for this format/dtype at the model's widths: from `table` (made on the device;
    refused when its key does not match), else from the cache, else measured here and cached."""
    check_request(fmt, dtype)
    if table is not None:
        return from_table(Path(table), adapter, fmt, dtype, context)
    key = make_key(adapter, fmt, dtype, context, threads)
    path = cache_path(Path(cache_dir) if cache_dir else default_cache_dir(), key)
    if path.is_file():
        try:
            lm = LatencyModel.from_json(json.loads(path.read_text()))
            if lm.key == key:
                return lm
        except (ValueError, UnicodeDecodeError, TypeError, LatencyTableError) as e:
            print(f"edgeprune: WARNING: ignoring the corrupt latency cache {path} ({type(e).__name__}: {e}); "
                  "measuring again", file=sys.stderr)
    lm = measure_model(adapter, fmt, dtype, context, threads, key, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(lm.to_json(), indent=1))
    return lm


def _ticker(progress, total: int, desc: str) -> tuple[Callable[[str], None], Callable[[], None]]:
    """A step callback: a tqdm bar with ETA (progress=True), the caller's own callback, or nothing."""
    if callable(progress) and progress is not True:
        return progress, lambda: None
    if not progress:
        return (lambda _s: None), lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False)

    def tick(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    return tick, bar.close


def measure_model(adapter, fmt: str, dtype: str, context: int, threads: int, key: dict,
                  progress=None) -> LatencyModel:
    """Time the probes here and fit; the held-out probes only score the fit."""
    from edgeprune.dtypes import get

    from . import latency_probe

    t0 = time.perf_counter()
    w = key["widths"]
    dense = LayerShape.from_dict(w["dense"])
    layer_bytes = 4 * adapter.layer_param_count(dense)
    probes = latency_probe.design(dense, w["num_layers"], get(dtype).block, layer_bytes, few=False,
                                 shallow=_shallow(fmt))
    tick, close = _ticker(progress, len(probes) + 1, f"latency model {fmt} {dtype}")
    try:
        times, runtime = latency_probe.run(adapter, fmt, dtype, probes, context, threads, REPS, NEW_TOKENS, tick)
    finally:
        close()
    lm = LatencyModel(runtime_of(fmt), fmt, dtype, int(context), int(threads), key, "host", float("nan"))
    fit_model(lm, [(p.name, p.shapes, times[p.name], p.held_out) for p in probes])
    lm.runtime_description = runtime
    lm.build_seconds = time.perf_counter() - t0
    return lm


def fit_model(lm: LatencyModel, timed: list[tuple[str, list[LayerShape], float, bool]]) -> None:
    """Fit `lm`'s coefficients on the non-held-out timings and score it on the held-out ones."""
    feats = [[lm._feats(s.num_heads, s.num_kv_heads, s.intermediate_size) for s in shapes] for _, shapes, _, _ in timed]
    terms = active_terms([f for f, t in zip(feats, timed) if not t[3]])
    X = np.array([design_row(f, terms) for f in feats])
    y = np.array([t[2] for t in timed])
    train = np.array([not t[3] for t in timed])
    coef = fit(X[train], y[train])
    lm.coefficients = {"fixed": float(coef[0]), **{t: float(c) for t, c in zip(terms, coef[1:])}}
    pred = X @ coef
    rows = [{"name": n, "shapes": [s.as_dict() for s in shapes], "measured_ms": float(m), "predicted_ms": float(p)}
            for (n, shapes, m, _), p in zip(timed, pred)]
    lm.fitted = [r for r, t in zip(rows, train) if t]
    lm.held_out = [r for r, t in zip(rows, train) if not t]
    errs = relative_errors(X[~train], y[~train], coef)
    lm.relative_error = float(np.median(errs)) if errs.size else float("nan")


def from_table(path: Path, adapter, fmt: str, dtype: str, context: int) -> LatencyModel:
    """The model for (fmt, dtype) from a table made by `edgeprune bench --latency-table`;
    one line when the file is unreadable or no entry matches this model's widths."""
    models = read_table(path)
    want = widths_of(adapter)
    for lm in models:
        if (lm.fmt, lm.dtype) == (fmt, dtype) and lm.key.get("widths") == want and lm.context == int(context):
            lm.source = "table"
            return lm
    have = "; ".join(f"{m.fmt} {m.dtype} at context {m.context}, hidden {m.key.get('widths', {}).get('hidden_size')}"
                     for m in models) or "nothing"
    raise LatencyTableError(f"{path} has no latency model for {fmt} {dtype} at context {context} and this model's widths "
                            f"(it holds: {have}); re-run `edgeprune bench --latency-table` on the device with this model and target")


def read_table(path: Path) -> list[LatencyModel]:
    """Every model in a table file, or one line saying what is wrong with the file."""
    fix = "write it again with `edgeprune bench --latency-table OUT.json --model M --target T` on the device"
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LatencyTableError(f"latency table {path} does not exist; {fix}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise LatencyTableError(f"latency table {path} is not valid JSON ({type(e).__name__}); {fix}") from None
    if not isinstance(d, dict) or d.get("edgeprune_latency_table") != MODEL_VERSION or not isinstance(d.get("models"), list):
        raise LatencyTableError(f"{path} is not an edgeprune latency table of version {MODEL_VERSION}; {fix}")
    try:
        return [LatencyModel.from_json(m) for m in d["models"]]
    except (LatencyTableError, TypeError) as e:
        raise LatencyTableError(f"{path}: {e}; {fix}") from None


def write_table(path: Path, models: list[LatencyModel]) -> None:
    """The file `edgeprune bench --latency-table OUT.json` writes (read by `from_table`)."""
    path = Path(path)
    write_text(path, json.dumps({"edgeprune_latency_table": MODEL_VERSION, "models": [m.to_json() for m in models]}, indent=1))

"""Where a build's numbers come from: versions, data hashes, licence, runtime requirements,
and the rule that a profile never holds NaN or Inf."""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("edgeprune", "torch", "transformers", "onnxruntime", "onnxruntime_genai", "onnx", "gguf", "llama_cpp_python"):
        try:
            out[name] = md.version(name.replace("_", "-"))
        except md.PackageNotFoundError:
            out[name] = None
    return out


def license_of(model_dir: Path, cfg) -> str | None:
    readme = model_dir / "README.md"
    if readme.is_file():
        for line in readme.read_text(errors="replace").splitlines()[:30]:
            if line.lower().startswith("license:"):
                return line.split(":", 1)[1].strip()
    return getattr(cfg, "license", None)


def min_runtime_versions(artifacts: list[dict], out_dir: Path) -> dict:
    from exporters.formats import get

    return {a["path"]: get(a["format"]).min_runtime(a, out_dir / a["path"]) for a in artifacts}


def commands(state: dict, command: str) -> dict:
    """provenance's `command` (the one that started the build) and `resumes` (each --resume
    after it, with its time), from build_state.json's record of every run."""
    runs = state.get("commands") or [{"command": command, "time": None}]
    return {"command": runs[0]["command"], "resumes": runs[1:]}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def non_finite(x, path: str = "") -> list[str]:
    if isinstance(x, float) and not math.isfinite(x):
        return [path or "."]
    if isinstance(x, dict):
        return [p for k, v in x.items() for p in non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(x, list):
        return [p for i, v in enumerate(x) for p in non_finite(v, f"{path}[{i}]")]
    return []


def finite(x):
    """NaN/Inf -> None, recursively (the fields are listed in `non_finite_fields`)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x

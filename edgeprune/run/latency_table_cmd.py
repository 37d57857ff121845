"""`edgeprune bench --latency-table OUT.json --model M --target T`: the latency model measured
on the device itself, for `build --latency-table OUT.json` to plan with.

The same probes and fit as on the build host (`latency_model.measure_model`), for every
(format, dtype) of the target that the latency model supports, at the target's context and
this machine's free cores. Writing the probe artifacts needs torch (edgeprune's writers);
running them needs only the runtimes. Everything is checked before anything is measured.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import EdgePruneError


def _model_dir(model: str | None, path: str | None) -> Path:
    """The dense model: --model, or a build directory's base model (its profile names it)."""
    src = model or path
    if not src:
        raise EdgePruneError("--latency-table needs the model whose widths to time: --model M (or a build directory)")
    p = Path(src)
    prof = p / "profile.json"
    if prof.is_file() and not (p / "config.json").is_file():
        base = Path(json.loads(prof.read_text()).get("checkpoint", {}).get("base_model", ""))
        if not (base / "config.json").is_file():
            raise EdgePruneError(f"{p} names its base model {base}, which is not on this machine; pass --model with "
                                 "the dense model (only its config.json is read)")
        return base
    if not (p / "config.json").is_file():
        raise EdgePruneError(f"{p} has no config.json; pass --model with a model directory (only config.json is read)")
    return p


def latency_table(out: str, model: str | None, path: str | None, target: str | None, threads: int | None,
                  context: int | None = None) -> dict:
    """Measure and write the table; returns {"table": path, "models": [...], "text": summary}."""
    from ..io.checkpoint import load_config
    from ..measure.latency_model import latency_model, runtime_of, supported, write_table
    from ..models import get_adapter
    from ..measure.latency import free_cores
    from .targets import load_target

    out_p = Path(out)
    if out_p.suffix != ".json" or out_p.is_dir() or not out_p.parent.is_dir():
        raise EdgePruneError(f"--latency-table {out} must be a .json file in an existing folder")
    if not target:
        raise EdgePruneError("--latency-table needs --target T (its formats, dtypes and context are timed)")
    tgt = load_target(target)
    adapter = get_adapter(load_config(_model_dir(model, path)))
    wanted = [(f["format"], f["dtype"]) for f in tgt.formats]
    todo = [w for w in wanted if w[1] in supported().get(w[0], ())]
    for f, d in wanted:
        if (f, d) not in todo:
            print(f"edgeprune: note: no latency model for {f} {d} yet; skipped", file=sys.stderr)
    if not todo:
        raise EdgePruneError(f"none of {tgt.name}'s formats has a latency model yet; supported: {supported()}")
    ctx = context or tgt.context
    threads = threads or free_cores()
    import tempfile

    with tempfile.TemporaryDirectory() as fresh:  # on the device: measured, never read from a cache
        models = [latency_model(adapter, f, d, ctx, threads, cache_dir=Path(fresh), progress=True) for f, d in todo]
    write_table(out_p, models)
    text = "\n".join(f"{runtime_of(m.fmt)} {m.dtype}: fixed {m.fixed_ms():.3f} ms, held-out error {m.relative_error:.1%} "
                     f"({len(m.fitted)} shapes fitted, {len(m.held_out)} held out, {m.build_seconds:.0f}s)" for m in models)
    return {"table": str(out_p), "models": [m.to_json() for m in models], "text": text + f"\nwrote {out_p}"}

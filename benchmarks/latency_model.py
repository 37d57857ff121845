"""The latency model's build cost and its error on held-out shapes, per runtime and dtype.

    python benchmarks/latency_model.py [--model DIR] [--target cpu-x86] [--threads N]

Builds (never reads from the cache) the latency model of each of the target's formats for the
model (default: the demo model) at the target's context, and prints runtime, dtype, shapes
fitted, held-out shapes, the median relative error on the held-out ones, and build seconds.
The error is a measurement on whatever machine runs it: on a shared VM it includes the noise
of other processes (the table says the load average).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, pin_threads, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--target", default="cpu-x86")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    pin_threads(1)
    from edgeprune.io.checkpoint import load_config
    from edgeprune.io.demo import ensure_demo_model
    from edgeprune.measure.latency_model import latency_model, supported
    from edgeprune.models import get_adapter
    from edgeprune.measure.latency import free_cores
    from edgeprune.run.targets import load_target

    model = Path(a.model) if a.model else ensure_demo_model()
    tgt = load_target(a.target)
    ad = get_adapter(load_config(model))
    ctx = tgt.context
    threads = a.threads or free_cores()
    load = os.getloadavg()[0]
    rows, models = [], []
    with tempfile.TemporaryDirectory() as cache:
        for f in tgt.formats:
            if f["dtype"] not in supported().get(f["format"], ()):
                continue
            lm = latency_model(ad, f["format"], f["dtype"], ctx, threads, cache_dir=Path(cache), progress=True)
            models.append(lm.to_json())
            rows.append({"runtime": lm.runtime, "dtype": lm.dtype, "fitted": len(lm.fitted), "held_out": len(lm.held_out),
                         "relative_error": lm.relative_error, "max_held_out_error": max(
                             abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in lm.held_out),
                         "build_s": lm.build_seconds})
    cols = [("runtime", "runtime"), ("dtype", "dtype"), ("fitted", "shapes fitted"), ("held_out", "held-out shapes"),
            ("relative_error", "median held-out error"), ("max_held_out_error", "max held-out error"),
            ("build_s", "build s")]
    title = (f"Latency model on {model.name} (hidden {ad.hidden_size}, {ad.num_layers} layers), target {tgt.name}, "
             f"context {ctx}, {threads} threads; load average {load:.1f} at the start (a shared machine: noisy)")
    table = title + "\n\n" + markdown_table(rows, cols)
    print(table)
    print(write_results("latency_model", {"model": str(model), "target": tgt.name, "context": ctx, "threads": threads,
                                          "load_average": load, "rows": rows, "models": models}, table))


if __name__ == "__main__":
    main()

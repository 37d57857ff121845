"""Why did llama.cpp f16 reach only 0.88 of its ideal speedup? One pruned/dense pair (COMP
30% of the 134M shape, as in benchmarks/speedup.py), measured under the settings that could
explain it: thread count, KV-cache type and attention path. Dense and pruned repetitions are
interleaved; each row gives the paired speedup with its bootstrap interval (edgeprune.measure.speedup).

    python benchmarks/f16_probe.py          # ~10 min on 2 cores; results/f16_probe.{md,json}
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, pin_threads, write_results  # noqa: E402
from benchmarks.speedup import WORK, make_dense  # noqa: E402

SETTINGS = [  # (label, threads, type_k/type_v (1 = f16, 0 = f32), flash attention)
    ("llama-cpp-python defaults: 2 threads, f16 KV, flash attention off", 2, 1, None),
    ("1 thread", 1, 1, None),
    ("f32 KV cache", 2, 0, None),
    ("flash attention on", 2, 1, True),
    ("the defaults again (run-to-run noise)", 2, 1, None),
]
CONTEXT, NEW, REPS = 128, 32, 10


def artifacts(dtype: str) -> dict[str, Path]:
    import torch

    import edgeprune
    from edgeprune.methods import PruneRequest
    from edgeprune.run.pipeline import make_plan
    from edgeprune.apply.surgery import apply_plan
    from exporters import export, formats

    dense = make_dense(576, 30, 1536, 9, 3, 49152)
    pruned = WORK / "pruned-576x30-0.3"
    if not (pruned / "edgeprune.json").is_file():
        calib = torch.randint(0, 49152, (16, 128), generator=torch.Generator().manual_seed(0))
        plan, _ = make_plan(dense, "comp", PruneRequest(ratio=0.3, layers="auto", align=32, progress=False), calib)
        edgeprune.save(apply_plan(edgeprune.load(dense), plan), pruned, plan=plan, force=True)
    out = {}
    for name, d in (("dense", dense), ("pruned", pruned)):
        path = WORK / "artifacts" / f"{d.name}-{dtype}.gguf"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not formats.get("gguf").verify_report(path).is_file():
            export(d, "gguf", path, dtype=dtype, force=True)
        out[name] = path
    return out


def run(paths: dict[str, Path], threads: int, kv_type: int, flash) -> dict[str, list[float]]:
    import numpy as np

    from exporters.runtimes import _llama_cpp

    lc = _llama_cpp()
    kw = {"type_k": kv_type, "type_v": kv_type}
    if flash is not None:
        kw["flash_attn"] = flash
    llms = {k: lc.Llama(model_path=str(p), n_ctx=CONTEXT + NEW + 8, n_batch=CONTEXT, n_threads=threads,
                        verbose=False, seed=0, **kw) for k, p in paths.items()}
    ids = np.random.default_rng(0).integers(3, 49152, size=CONTEXT).tolist()
    runs: dict[str, list[float]] = {k: [] for k in llms}
    for rep in range(REPS + 1):
        for k, llm in llms.items():
            llm.reset()
            llm.eval(ids)
            t0 = time.perf_counter()
            for _ in range(NEW):
                llm.eval([ids[-1]])
            if rep:  # the first round is the warm-up
                runs[k].append((time.perf_counter() - t0) / NEW * 1000)
    return runs


def main() -> None:
    from edgeprune.report.profile import linear_weight_bytes
    from edgeprune.io.checkpoint import load_config
    from edgeprune.measure.latency import host_info
    from edgeprune.models import get_adapter
    from edgeprune.measure.speedup import check

    pin_threads(2)
    rows = []
    for dtype in ("f16", "q8_0"):
        paths = artifacts(dtype)
        ideal = (linear_weight_bytes(paths["dense"], "gguf", dtype, get_adapter(load_config(make_dense(576, 30, 1536, 9, 3, 49152))))
                 / linear_weight_bytes(paths["pruned"], "gguf", dtype, get_adapter(load_config(WORK / "pruned-576x30-0.3"))))
        for label, threads, kv, flash in SETTINGS if dtype == "f16" else SETTINGS[:1]:
            r = run(paths, threads, kv, flash)
            sp = check(r["dense"], r["pruned"], ideal)
            rows.append({"dtype": dtype, "setting": label, "dense_ms": min(r["dense"]), "pruned_ms": min(r["pruned"]),
                         "speedup": sp["decode_measured"], "interval": "[{:.2f}, {:.2f}]".format(*sp["decode_interval"]),
                         "ideal": ideal, "vs_ideal": sp["decode_measured"] / ideal, "status": sp["status"]})
            print(rows[-1], flush=True)
    table = markdown_table(rows, [("dtype", "dtype"), ("setting", "llama.cpp setting"), ("dense_ms", "dense ms/tok (min)"),
                                  ("pruned_ms", "pruned ms/tok (min)"), ("speedup", "speedup (median paired)"),
                                  ("interval", "95% interval"), ("ideal", "ideal"), ("vs_ideal", "measured/ideal"),
                                  ("status", "check")])
    table += (f"\n\nCOMP 30% of the 134M shape (hidden 576, 30 layers, FFN 1536, 9/3 heads); context {CONTEXT}, "
              f"{NEW} new tokens, {REPS} interleaved repetitions; host {host_info()['cpu']}. `python benchmarks/f16_probe.py`")
    print(table)
    write_results("f16_probe", {"rows": rows, "host": host_info()}, table)


if __name__ == "__main__":
    main()

"""COMP on CUDA vs CPU, and the GPU's prune-time memory on a large layer-streamed model.

1. The same calibration windows pruned by COMP on the CPU and on CUDA (torch Cholesky)
   and, when CuPy is installed, on CUDA with `--solver lsmr`: kept sets must be identical,
   re-fitted masks within a stated tolerance.
2. A random-weight Llama of TinyLlama-1.1B's shape (or --big-layers/--big-hidden) saved to
   disk and pruned on CUDA: `max_memory_allocated` vs the model's size.

    python benchmarks/cuda_check.py --model DIR --calib FILE --out results/
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, pin_threads  # noqa: E402

TOL = 1e-4  # max abs difference of re-fitted masks between devices/solvers


def compare(model: str, calib: str, ratio: float) -> list[dict]:
    from edgeprune.methods import PruneRequest, get_method
    from edgeprune.run.pipeline import calibration
    from edgeprune.calibrate.streaming import open_source

    windows = calibration(model, calib, 16, 128, 0)
    plans = {}
    rows = []
    for label, device, solver in (("cpu cholesky", "cpu", "cholesky"), ("cuda cholesky", "cuda", "cholesky"), ("cuda lsmr", "cuda", "lsmr")):
        if solver == "lsmr":
            try:
                import cupy  # noqa: F401
            except ImportError:
                rows.append({"run": label, "note": "cupy not installed"})
                continue
        req = PruneRequest(ratio=ratio, layers=0, progress=False, solver=solver)
        t0 = time.perf_counter()
        plan = get_method("comp")(open_source(model, device), windows, req)
        dt = time.perf_counter() - t0
        plans[label] = plan
        base = plans["cpu cholesky"]
        same = all(plan.layers[i].ffn_keep == base.layers[i].ffn_keep and plan.layers[i].kv_keep == base.layers[i].kv_keep
                   for i in base.layers)
        diff = max((float((plan.tensors[k].cpu() - base.tensors[k]).abs().max()) for k in base.tensors), default=0.0)
        rows.append({"run": label, "seconds": dt, "kept_sets_equal_cpu": same, "max_abs_mask_diff_vs_cpu": diff,
                     "within_tol": diff <= TOL})
    return rows


def big_model(root: Path, layers: int, hidden: int, ffn: int, heads: int, kv: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgeprune.io.checkpoint import save

    cfg = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048)
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = LlamaForCausalLM(cfg)
    m = m.cpu()
    return save(m, root / "big", tokenizer_from=None), sum(p.numel() * 4 for p in m.parameters())


def big_prune(model_dir: Path, ratio: float) -> dict:
    from edgeprune.measure.memory import PeakMemory
    from edgeprune.methods import PruneRequest, get_method
    from edgeprune.calibrate.streaming import open_source

    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, 32000, (32, 128), generator=g)
    torch.cuda.empty_cache()
    t0 = time.perf_counter()
    with PeakMemory("cuda") as mem:
        plan = get_method("comp")(open_source(model_dir, "cuda"), windows, PruneRequest(ratio=ratio, layers=2, progress=False))
    return {"seconds": time.perf_counter() - t0, "peak_cuda_bytes": mem.peak_bytes, "removed_layers": plan.removed_layers}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--big-layers", type=int, default=22)
    ap.add_argument("--big-hidden", type=int, default=2048)
    ap.add_argument("--big-ffn", type=int, default=5632)
    ap.add_argument("--work", default="/tmp/edgeprune-cuda-check")
    a = ap.parse_args()
    pin_threads(4)
    rows = compare(a.model, a.calib, a.ratio)
    print(markdown_table(rows, [("run", "run"), ("seconds", "s"), ("kept_sets_equal_cpu", "kept sets = CPU"),
                                ("max_abs_mask_diff_vs_cpu", "max |Δmask| vs CPU"), ("within_tol", f"≤ {TOL}"), ("note", "note")]))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    d, nbytes = big_model(work, a.big_layers, a.big_hidden, a.big_ffn, 32, 4)
    big = {"model_bytes_fp32": nbytes, "save_seconds": time.perf_counter() - t0, **big_prune(d, a.ratio)}
    big["peak_over_model"] = big["peak_cuda_bytes"] / nbytes
    print(f"\nbig model ({a.big_layers} layers, hidden {a.big_hidden}, ffn {a.big_ffn}; {nbytes / 2**30:.2f} GiB fp32): "
          f"COMP {a.ratio} on CUDA in {big['seconds']:.1f} s, peak max_memory_allocated {big['peak_cuda_bytes'] / 2**30:.3f} GiB "
          f"= {big['peak_over_model']:.3f} x the model")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cuda_check.json").write_text(json.dumps({"compare": rows, "big": big, "gpu": torch.cuda.get_device_name(),
                                                     "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()

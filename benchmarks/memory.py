"""Prune-time memory: COMP on a several-hundred-MB model, layer-streamed from safetensors.

A random-weight Llama (default: hidden 1024, 12 layers, FFN 2816, 16 heads / 4 KV heads,
vocab 32000, about 740 MB in fp32) is saved to disk, then pruned in a fresh process. The
planning stage's peak RSS above the process's baseline after imports is compared with the
model's size and with one layer + calibration activations + the largest solver matrices.

    python benchmarks/memory.py --ratio 0.2
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, pin_threads, write_results  # noqa: E402

WORK = Path(__file__).resolve().parent / "work" / "memory"

CHILD = r"""
import json, sys, torch
torch.set_num_threads({threads})
from edgeprune.run.pipeline import make_plan
from edgeprune.methods import PruneRequest
g = torch.Generator().manual_seed(0)
calib = torch.randint(0, {vocab}, ({n}, {seq}), generator=g)
plan, rep = make_plan("{model}", "comp", PruneRequest(ratio={ratio}, layers={layers}, offload={offload}, progress=False), calib)
print(json.dumps(rep))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    pin_threads(a.threads)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgeprune.io.checkpoint import save

    d = WORK / f"llama-{a.hidden}x{a.layers}"
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                      num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048)
    if not (d / "edgeprune.json").is_file():
        torch.manual_seed(0)
        m = LlamaForCausalLM(cfg)
        WORK.mkdir(parents=True, exist_ok=True)
        save(m, d, force=True)
        del m
    model_bytes = sum(p.stat().st_size for p in d.glob("*.safetensors"))
    layer_bytes = 4 * (2 * a.hidden * a.hidden + 2 * a.hidden * a.hidden // 4 + 3 * a.hidden * a.ffn)
    acts = a.nsamples * a.seq * a.hidden * 4
    rows = []
    for offload in (False, True):
        code = CHILD.format(threads=a.threads, vocab=a.vocab, n=a.nsamples, seq=a.seq, model=d, ratio=a.ratio,
                            layers="'auto'", offload=offload)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rep = json.loads(out.stdout.strip().splitlines()[-1])
        peak = rep["peak_memory"]["above_baseline_bytes"]
        rows.append({"activations": "disk" if offload else "memory", "model_MiB": model_bytes / 2**20,
                     "layer_MiB": layer_bytes / 2**20, "calib_acts_MiB": acts / 2**20,
                     "solver_matrix_MiB": a.ffn * a.ffn * 8 / 2**20,
                     "peak_above_baseline_MiB": peak / 2**20, "peak_over_model": peak / model_bytes,
                     "ratio_achieved": rep["ratio_achieved"], "prune_s": rep["wall_seconds"]})
    cols = [("activations", "calibration activations"), ("model_MiB", "model MiB (fp32 on disk)"), ("layer_MiB", "one layer MiB"),
            ("calib_acts_MiB", "one activation set MiB"), ("solver_matrix_MiB", "one n×n fp64 solver matrix MiB"),
            ("peak_above_baseline_MiB", "peak RSS above baseline MiB"), ("peak_over_model", "peak / model"),
            ("ratio_achieved", "ratio achieved"), ("prune_s", "prune s")]
    table = (f"COMP --ratio {a.ratio} --layers auto on a random Llama (hidden {a.hidden}, {a.layers} layers, FFN {a.ffn}), "
             f"{a.nsamples} x {a.seq} calibration tokens, CPU, {a.threads} threads; RSS high-water mark of the planning stage.\n\n"
             + markdown_table(rows, cols))
    print(table)
    write_results("memory", {"args": vars(a), "rows": rows}, table)


if __name__ == "__main__":
    main()

"""The one script to run when a GPU is lent: per-layer prune time and peak of the default
(search), SlimGPT and COMP at 8B width on `--device cuda`, extrapolated to the full depth.

Random-weight checkpoints of the shape (edgeprune.io.synthetic) at 1 and 2 layers are pruned
in this process on the device; the difference between the two depths is one layer's time
(and peak growth), extrapolated to FULL_DEPTH layers: t(L) = t(2) + (L - 2)·(t(2) − t(1)).
Peak is `max_memory_allocated` on CUDA, RSS on the CPU. Prints the table and writes
`<out>/cuda_layers.json` with the device's name. On the CPU with small widths it is the
suite's smoke test (tests/test_cuda_layers.py):

    python benchmarks/cuda_layers.py --device cuda --shape llama-3.1-8b --out benchmarks/results
    python benchmarks/cuda_layers.py --device cpu --shape tiny --nsamples 4 --seq-len 16 --search-evals 4
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table  # noqa: E402

# a small Llama for the CPU smoke test (every method's code path, seconds not hours)
TINY = dict(model_type="llama", hidden_size=64, intermediate_size=256, num_attention_heads=8, num_key_value_heads=2,
            head_dim=8, vocab_size=512, tie_word_embeddings=False, rope_theta=10000.0, rms_norm_eps=1e-5,
            max_position_embeddings=256)


def prune_once(model: Path, method: str, device: str, a) -> tuple[float, int]:
    """(seconds, peak bytes) of one method's plan on `device`."""
    from edgeprune.measure.memory import PeakMemory
    from edgeprune.methods import PruneRequest, get_method
    from edgeprune.calibrate.streaming import open_source

    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    windows = torch.randint(0, vocab, (a.nsamples, a.seq_len), generator=torch.Generator().manual_seed(0))
    req = PruneRequest(ratio=a.ratio, progress=False, search_evals=a.search_evals)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    with PeakMemory(device) as mem:
        get_method(method)(open_source(model, device), windows, req)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return time.perf_counter() - t0, mem.peak_bytes


def main() -> None:
    from edgeprune.io.synthetic import FULL_DEPTH, config_for, write_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", default="llama-3.1-8b", help="a shape of edgeprune.io.synthetic, or 'tiny'")
    p.add_argument("--methods", default="search,slimgpt,comp")
    p.add_argument("--ratio", type=float, default=0.2)
    from edgeprune import defaults
    from edgeprune.methods.registry import SEARCH_EVALS

    p.add_argument("--nsamples", type=int, default=defaults.NSAMPLES)
    p.add_argument("--seq-len", type=int, default=defaults.SEQ_LEN)
    p.add_argument("--search-evals", type=int, default=SEARCH_EVALS.default)
    p.add_argument("--full-depth", type=int, default=None, help="layers to extrapolate to (default: the shape's)")
    p.add_argument("--work", default="/tmp/edgeprune-cuda-layers")
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("edgeprune: error: --device cuda but torch sees no CUDA device; run with --device cpu for the smoke test")
    torch.set_num_threads(1)
    shape = TINY if a.shape == "tiny" else a.shape
    full = a.full_depth or FULL_DEPTH.get(a.shape, 32)
    models = {}
    for depth in (1, 2):
        d = Path(a.work) / f"{a.shape}-L{depth}"
        if not (d / "config.json").is_file():
            write_checkpoint(d, config_for(shape, depth), max_shard_bytes=2 * 10**9)
        models[depth] = d
    rows = []
    for method in a.methods.split(","):
        (t1, m1), (t2, m2) = (prune_once(models[k], method, a.device, a) for k in (1, 2))
        per_t, per_m = max(0.0, t2 - t1), max(0, m2 - m1)
        rows.append(dict(method=method, s_1=t1, s_2=t2, s_per_layer=per_t, s_full=t2 + (full - 2) * per_t,
                         peak_2=m2 / 2**30, peak_full=(m2 + (full - 2) * per_m) / 2**30))
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    md = markdown_table(rows, [("method", "method"), ("s_1", "s @1L"), ("s_2", "s @2L"), ("s_per_layer", "s/layer"),
                               ("s_full", f"s, {full} layers (extrapolated)"), ("peak_2", "peak GiB @2L"),
                               ("peak_full", f"peak GiB, {full} layers")])
    print(f"{a.shape} width on {name} ({a.device}), {a.nsamples} x {a.seq_len} windows, ratio {a.ratio}\n{md}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cuda_layers.json").write_text(json.dumps({"command": " ".join(sys.argv), "device": name, "args": vars(a),
                                                      "full_depth": full, "rows": rows, "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()

"""Speed proof: structured pruning makes a model faster in ONNX Runtime and llama.cpp.

A Llama-shaped model with random weights (shapes are what matter for speed; default: the
SmolLM-135M shape, 30 layers, hidden 576, FFN 1536, 9 heads / 3 KV heads, vocab 49152,
tied embeddings) is pruned by COMP at each ratio on random calibration tokens, which gives
realistic non-uniform plans (layers removed, per-layer FFN widths, whole KV groups), with
FFN widths aligned to 32 so q8_0 needs no fallback. Every model is exported (verified) to
GGUF f32/f16/q8_0 and ONNX f32, and decode/prefill latency is measured with dense and
pruned repetitions interleaved; min and median are reported with the ideal speedup
(dense/pruned bytes of linear weights read per decoded token, lm_head included).

    python benchmarks/speedup.py --ratios 0.2,0.3,0.5 --threads 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, pin_threads, write_results  # noqa: E402

WORK = Path(__file__).resolve().parent / "work" / "speedup"


def make_dense(hidden: int, layers: int, ffn: int, heads: int, kv: int, vocab: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgeprune.io.checkpoint import save

    d = WORK / f"dense-{hidden}x{layers}-{ffn}"
    if (d / "edgeprune.json").is_file():
        return d
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():  # keep activations in range across 30 random layers
        for name, p in m.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    WORK.mkdir(parents=True, exist_ok=True)
    return save(m, d, force=True)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", default="0.2,0.3,0.5")
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--formats", default="gguf:f32,gguf:f16,gguf:q8_0,onnx:f32")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args()


def _pruned(a: argparse.Namespace, dense: Path) -> tuple[dict, dict]:
    """COMP's checkpoint at each ratio (kept from an earlier run), and its plan."""
    import torch

    import edgeprune
    from edgeprune.apply.surgery import apply_plan
    from edgeprune.methods import PruneRequest
    from edgeprune.run.pipeline import make_plan

    models, plans = {"dense": dense}, {}
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, a.vocab, (16, 128), generator=g)
    for r in [float(x) for x in a.ratios.split(",")]:
        d = WORK / f"pruned-{a.hidden}x{a.layers}-{r}"
        if not (d / "edgeprune.json").is_file():
            plan, rep = make_plan(dense, "comp", PruneRequest(ratio=r, layers="auto", align=32, progress=False), calib)
            edgeprune.save(apply_plan(edgeprune.load(dense), plan), d, plan=plan, force=True)
        models[f"{r:.0%}"] = d
        plans[f"{r:.0%}"] = edgeprune.Plan.load(d)
    return models, plans


def _artifacts(a: argparse.Namespace, models: dict) -> dict[tuple[str, str], dict[str, Path]]:
    """Every model in every format (verified exports, kept from an earlier run)."""
    from exporters import export, formats

    arts: dict[tuple[str, str], dict[str, Path]] = {}
    for spec in a.formats.split(","):
        fmt, dtype = spec.split(":")
        form = formats.get(fmt)
        for name, d in models.items():
            # the names of earlier runs' artifacts: the model's, the dtype and the format's suffix
            path = WORK / "artifacts" / f"{d.name}-{dtype}{Path(form.artifact_name(dtype)).suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not form.verify_report(path).is_file():
                print(f"export {name} {fmt} {dtype}", file=sys.stderr)
                export(d, fmt, path, dtype=dtype, force=True)
            arts.setdefault((fmt, dtype), {})[name] = form.written(path)[0]
    return arts


def _rows(a: argparse.Namespace, arts: dict, models: dict, plans: dict) -> list[dict]:
    """Per runtime and dtype: dense and pruned measured interleaved, each pruned model's
    speedup check against its ideal."""
    from edgeprune.io.checkpoint import load_config
    from edgeprune.measure.latency import measure
    from edgeprune.measure.speedup import check as speedup_check
    from edgeprune.models import get_adapter
    from edgeprune.report.profile import linear_weight_bytes

    ad = get_adapter(load_config(models["dense"]))
    rows = []
    for (fmt, dtype), paths in arts.items():
        t0 = time.perf_counter()
        lat = measure(paths, a.context, a.new_tokens, a.reps, a.threads, vocab=a.vocab)
        b_dense = linear_weight_bytes(paths["dense"], fmt, dtype, ad)
        for name, p in paths.items():
            if name == "dense":
                continue
            ideal = b_dense / linear_weight_bytes(p, fmt, dtype, get_adapter(load_config(models[name])))
            ld, lp = lat["dense"], lat[name]
            sp = speedup_check(ld["decode_ms_per_token_runs"], lp["decode_ms_per_token_runs"], ideal)
            rows.append({
                "runtime": lp["protocol"]["runtime"].split(" (")[0], "dtype": dtype, "ratio": name,
                "layers_removed": len(plans[name].removed_layers),
                "decode_dense_med": ld["decode_ms_per_token_median"], "decode_pruned_med": lp["decode_ms_per_token_median"],
                "speedup": sp["decode_measured"], "interval": "[{:.2f}, {:.2f}]".format(*sp["decode_interval"]),
                "ideal": ideal, "vs_ideal": sp["decode_measured"] / ideal, "status": sp["status"], "reps": sp["repetitions"],
                "prefill_speedup": lp["prefill_tokens_per_s_max"] / ld["prefill_tokens_per_s_max"],
            })
        print(f"measured {fmt} {dtype} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return rows


def main() -> None:
    a = _args()
    pin_threads(a.threads)
    import edgeprune
    from edgeprune.measure.latency import host_info

    dense = make_dense(a.hidden, a.layers, a.ffn, a.heads, a.kv, a.vocab)
    models, plans = _pruned(a, dense)
    rows = _rows(a, _artifacts(a, models), models, plans)
    cols = [("runtime", "runtime"), ("dtype", "dtype"), ("ratio", "ratio"), ("layers_removed", "layers removed"),
            ("decode_dense_med", "decode ms/tok dense (median)"), ("decode_pruned_med", "pruned (median)"),
            ("speedup", "speedup (median of paired ratios)"), ("interval", "95% interval"), ("ideal", "ideal"),
            ("vs_ideal", "measured/ideal"), ("status", "check"), ("reps", "reps"), ("prefill_speedup", "prefill speedup")]
    n = sum(p.numel() for p in edgeprune.load(dense).parameters())
    header = (f"Random-weight Llama shape: hidden {a.hidden}, {a.layers} layers, FFN {a.ffn}, {a.heads} heads / {a.kv} KV, "
              f"vocab {a.vocab}, tied ({n / 1e6:.1f}M params); COMP plans (FFN aligned to 32). Batch 1, context {a.context}, "
              f"{a.new_tokens} new tokens, {a.reps} interleaved repetitions, {a.threads} threads; host {host_info()['cpu']}.\n\n")
    table = header + markdown_table(rows, cols)
    print(table)
    write_results("speedup", {"args": vars(a), "rows": rows, "host": host_info()}, table)


if __name__ == "__main__":
    main()

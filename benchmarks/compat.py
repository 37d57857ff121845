"""The compatibility table: every artifact kind x every model shape, each cell verified.

Rows are artifact kinds (GGUF at each dtype, ONNX f32/f16/int4, ORT GenAI); columns are
model shapes (dense, uniform-pruned and non-uniform-pruned Llama, non-uniform Qwen2 with
q/k/v biases, uniform and non-uniform Qwen3). Each cell is what `exporters.export` verified
(the GGUF architecture chosen, max |logit diff| for f32, the perplexity delta otherwise,
fallback tensors for k-quants) or the refusal it gave. The models are random-weight with
k-quant-friendly widths (hidden 512, FFN 1536, 8 query / 4 KV heads of 64, 2 layers, the
pruned widths multiples of 256): the table shows that each runtime reads each file right;
quality per dtype is measured on trained models in benchmarks/quality.py.

    python benchmarks/compat.py        # ~10 min on 2 cores; writes results/compat.{md,json}
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import pin_threads, write_results  # noqa: E402

SHAPE = dict(hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
             vocab_size=1024, tie_word_embeddings=False, rope_theta=10000.0, rms_norm_eps=1e-5,
             max_position_embeddings=1024)
UNIFORM = {i: dict(kv_keep=[0, 2], heads_keep=[0, 1, 4, 5], ffn_keep=list(range(1024))) for i in range(2)}
NONUNIFORM = {0: dict(kv_keep=[1, 3], heads_keep=[2, 3, 6, 7], ffn_keep=list(range(1280))),
              1: dict(ffn_keep=list(range(0, 1536, 2)))}
COLUMNS = [("dense", "llama", None), ("uniform", "llama", UNIFORM), ("non-uniform", "llama", NONUNIFORM),
           ("Qwen2 non-uniform (q/k/v biases)", "qwen2", NONUNIFORM), ("Qwen3 uniform", "qwen3", UNIFORM),
           ("Qwen3 non-uniform", "qwen3", NONUNIFORM)]


def make_models(root: Path) -> dict[str, Path]:
    import torch

    import edgeprune
    from edgeprune.plan import LayerPlan, Plan
    from edgeprune.io.synthetic import config_for, write_checkpoint

    dense: dict[str, Path] = {}
    out = {}
    for name, family, layers in COLUMNS:
        if family not in dense:
            cfg = config_for({**SHAPE, "model_type": family}, 2, torch.float32)
            dense[family] = write_checkpoint(root / f"dense-{family}", cfg, seed=1)
        if layers is None:
            out[name] = dense[family]
            continue
        plan = Plan("compat", family, 2, layers={i: LayerPlan(**kw) for i, kw in layers.items()})
        model = edgeprune.apply_plan(edgeprune.load(dense[family]), plan)
        out[name] = edgeprune.save(model, root / f"{name.split()[0].lower()}-{family}-{len(out)}",
                                   tokenizer_from=dense[family], plan=plan)
    return out


def cell(res: dict | None, err: str | None) -> str:
    if err is not None:
        return f"refused: {err}"
    v = res["verify"]
    arch = f"{res['architecture']}, " if res.get("architecture") else ""
    if not v.get("passed"):
        return f"FAILED ({arch.rstrip(', ')})"
    if res["dtype"] == "f32":
        core = f"{arch}max Δlogit {v['max_abs_logit_diff']:.1e}"
    else:
        core = f"{arch}PPL Δ {v['perplexity']['relative_delta']:+.2%}"
    fb = res.get("fallbacks") or []
    if res.get("bits_per_weight"):
        core += f", {res['bits_per_weight']:.2f} bpw"
    if fb:
        core += f", {len(fb)} fallback tensor(s)"
    if res.get("int4"):
        core += f", block {res['int4']['block_size']}"
    return "✓ " + core


def run_cell(model: Path, fmt: str, dtype: str, out: Path) -> tuple[dict | None, str | None]:
    from edgeprune.errors import EdgePruneError
    from exporters import export

    try:
        return export(model, fmt, out, dtype=dtype, force=True), None
    except EdgePruneError as e:
        return None, str(e).split(";")[0][:110]


def main() -> None:  # long: one loop over the table
    from exporters import formats

    pin_threads(2)
    t0 = time.time()
    rows: dict[str, dict[str, str]] = {}
    raw: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = make_models(root)
        for col, model in models.items():
            for fmt in formats.names():  # every format at every dtype it carries
                for dtype in formats.get(fmt).dtypes:
                    out = root / "art" / f"{len(raw)}-{formats.get(fmt).artifact_name(dtype)}"
                    out.parent.mkdir(exist_ok=True)
                    res, err = run_cell(model, fmt, dtype, out)
                    rows.setdefault(f"{fmt.upper()} {dtype}", {})[col] = cell(res, err)
                    raw.append({"column": col, "format": fmt, "dtype": dtype, "error": err,
                                "verify": res and res["verify"], "architecture": res and res.get("architecture"),
                                "fallbacks": res and res.get("fallbacks"), "bits_per_weight": res and res.get("bits_per_weight")})
                    if formats.get(fmt).has_second_runtime and dtype == "f32":  # the package's second runtime
                        g = ((res or {}).get("verify") or {}).get("genai") or {}
                        rows.setdefault("ORT GenAI (f32 folder, og.Generator)", {})[col] = (
                            f"refused: {err}" if err else f"skipped: {g['skipped']}" if "skipped" in g else
                            ("✓ greedy tokens = PyTorch" if g.get("greedy_tokens_match") else "FAILED greedy tokens"))
                    print(f"{col:34s} {fmt} {dtype:7s} {rows[f'{fmt.upper()} {dtype}'][col]}", flush=True)
    cols = [c for c, _, _ in COLUMNS]
    table = "| artifact | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    for kind, cells in rows.items():
        table += f"| {kind} | " + " | ".join(cells.get(c, "-") for c in cols) + " |\n"
    import onnxruntime
    import llama_cpp

    versions = f"llama-cpp-python {llama_cpp.__version__}, onnxruntime {onnxruntime.__version__}"
    try:
        import onnxruntime_genai as og

        versions += f", onnxruntime-genai {og.__version__}"
    except ImportError:
        pass
    table += (f"\nRandom-weight models, hidden 512, FFN 1536, 8/4 heads of 64, 2 layers ({versions}); "
              f"{time.time() - t0:.0f} s. `python benchmarks/compat.py`\n")
    print(table)
    write_results("compat", {"rows": rows, "cells": raw, "shape": SHAPE}, table)


if __name__ == "__main__":
    main()

"""Every method end to end: prune -> physical surgery -> export GGUF and ONNX -> verify.

Runs on stories260K (Llama, GQA, tied embeddings) and on a Qwen2-style GQA model with q/k/v
biases: the one trained by `train_gutenberg.py --arch qwen2 --small` when it is in
benchmarks/work, else random weights built here (shapes and verification only). Perplexity is
measured through each artifact's runtime; a refused export records its reason.

    python benchmarks/methods_e2e.py --ratio 0.2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, pin_threads, write_results  # noqa: E402

WORK = Path(__file__).resolve().parent / "work" / "e2e"
STORIES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "models" / "stories260K" / "hf"


TRAINED_QWEN2 = WORK.parent / "gutenberg-qwen2"
GUTENBERG = STORIES.parents[2] / "corpus" / "gutenberg"


def qwen2_model() -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from edgeprune.io.checkpoint import save

    d = WORK / "qwen2-gqa"
    if (d / "edgeprune.json").is_file():
        return d
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=6, num_attention_heads=8,
                      num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
    return save(Qwen2ForCausalLM(cfg), d, tokenizer_from=STORIES, force=True)


def _export_row(out: Path, row: dict, ev) -> dict:
    """Export the pruned checkpoint to GGUF and ONNX (verified) and read each one's PPL in its runtime."""
    from edgeprune.errors import EdgePruneError
    from edgeprune.measure.artifact_eval import runtime_perplexity
    from exporters import export, formats

    for fmt in formats.names():
        try:
            res = export(out, fmt, out.with_name(f"{out.name}-{formats.get(fmt).artifact_name('f32')}"), force=True)
            row[f"{fmt}_verified"] = res["verify"]["passed"]
            row[f"{fmt}_max_diff"] = res["verify"]["max_abs_logit_diff"]
            row[f"{fmt}_ppl"] = runtime_perplexity(Path(res["path"]), ev)
            if "architecture" in res:  # the writer's architecture (GGUF's llama / qwen2 / deci)
                row[f"{fmt}_arch"] = res["architecture"]
        except EdgePruneError as e:
            row[f"{fmt}_verified"] = "refused"
            row["note"] = str(e)[:110]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--methods", default="comp,slimgpt,shortgpt,wanda-sp,flap,taylor,magnitude")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    pin_threads(a.threads)
    import shutil

    import edgeprune
    from edgeprune.calibrate import data
    from edgeprune.errors import EdgePruneError
    from edgeprune.methods import PruneRequest
    from edgeprune.run.pipeline import calibration, make_plan, tokenizer_for
    from edgeprune.apply.surgery import apply_plan

    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    if (TRAINED_QWEN2 / "edgeprune.json").is_file():
        qwen = ("qwen2-gqa (gutenberg-trained)", TRAINED_QWEN2, str(GUTENBERG / "pg834.txt"), str(GUTENBERG / "829-0.txt"))
    else:
        qwen = ("qwen2-gqa (random)", qwen2_model(), "tinystories", "tinystories")
    for mname, model, calib_src, eval_src in (("stories260K", STORIES, "tinystories", "tinystories"), qwen):
        calib = calibration(model, calib_src, 32, 128, 0)
        ev = data.evaluation_set(tokenizer_for(model), eval_src, 256, 8)
        for method in a.methods.split(","):
            layers = "auto" if method == "comp" else None
            req = PruneRequest(ratio=a.ratio, layers=layers, progress=False, protect=(0, -1))
            row = {"model": mname, "method": method}
            try:
                plan, rep = make_plan(model, method, req, calib)
            except EdgePruneError as e:
                rows.append({**row, "note": str(e)[:80]})
                continue
            out = WORK / f"{mname.split()[0]}-{method}"
            shutil.rmtree(out, ignore_errors=True)
            edgeprune.save(apply_plan(edgeprune.load(model), plan), out, tokenizer_from=model, plan=plan)
            row["achieved"] = rep["ratio_achieved"]
            rows.append(_export_row(out, row, ev))
            print(row, file=sys.stderr)
    cols = [("model", "model"), ("method", "method"), ("achieved", "ratio achieved"), ("gguf_arch", "GGUF arch"),
            ("gguf_verified", "GGUF verified"), ("gguf_max_diff", "GGUF max |Δlogit|"), ("gguf_ppl", "PPL via llama.cpp"),
            ("onnx_verified", "ONNX verified"), ("onnx_max_diff", "ONNX max |Δlogit|"), ("onnx_ppl", "PPL via ORT"), ("note", "note")]
    table = (f"Ratio {a.ratio}, f32 artifacts, calibration 32 x 128 tokens, perplexity through each runtime on 8 windows of "
             f"256 tokens. stories260K: tinystories calibration and eval portions; {qwen[0]}: calibration {Path(qwen[2]).name}, "
             f"evaluation {Path(qwen[3]).name}.\n\n"
             + markdown_table(rows, cols))
    print(table)
    write_results("methods_e2e", {"args": vars(a), "rows": rows}, table)


if __name__ == "__main__":
    main()

"""Quality benchmark: method x ratio on one model, dense vs pruned, in one run.

Every method prunes the same model on the same calibration windows; every pruned model
is physically applied and evaluated with the same protocol (non-overlapping windows of
--seq-len on each --eval text). Prints a Markdown table and writes JSON + .md beside it
in benchmarks/results/.

    python benchmarks/quality.py --model ../shared/data/models/stories260K/hf \
        --calib tinystories --eval tinystories,wikitext2 --ratios 0.1,0.2 --layers 0 --name stories260K

Method specs: comp (OBS importance, identical inputs), comp-diag (the default reading), comp-pruned-inputs,
comp-oneshot, comp-nomask, shortgpt, magnitude, slimgpt, wanda-sp.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, pin_threads, write_results  # noqa: E402

SPECS = {
    "comp": ("comp", {"importance": "obs"}),
    "comp-diag": ("comp", {"importance": "diag"}),
    "comp-pruned-inputs": ("comp", {"identical_inputs": False}),
    "comp-oneshot": ("comp", {"iterative_layers": False}),
    "comp-nomask": ("comp", {"mask_tuning": False}),
    "shortgpt": ("shortgpt", {}),
    "magnitude": ("magnitude", {}),
    "slimgpt": ("slimgpt", {}),
    "wanda-sp": ("wanda-sp", {}),
    "taylor": ("taylor", {}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", required=True, help="comma-separated named sets or files")
    ap.add_argument("--methods", default="comp,comp-diag,comp-pruned-inputs,shortgpt,magnitude")
    ap.add_argument("--ratios", default="0.2,0.3,0.5")
    ap.add_argument("--layers", default="auto", help="COMP's layer stage: N or auto")
    ap.add_argument("--seq-len", default="128", help="evaluation window(s), comma-separated: e.g. 128,512")
    ap.add_argument("--gguf", action="store_true", help="also export each model to GGUF f32 (verified) and measure PPL through llama.cpp")
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--calib-seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default=None)
    a = ap.parse_args()
    pin_threads(a.threads)

    import torch

    from edgeprune import data
    from edgeprune.checkpoint import load
    from edgeprune.errors import EdgePruneError
    from edgeprune.evaluate import perplexity
    from edgeprune.pipeline import calibration, make_plan, tokenizer_for
    from edgeprune.methods import PruneRequest
    from edgeprune.surgery import apply_plan

    tok = tokenizer_for(a.model)
    seq_lens = [int(x) for x in str(a.seq_len).split(",")]
    evals = {f"{e}@{L}": data.evaluation_set(tok, e, L, a.max_windows) for L in seq_lens for e in a.eval.split(",")}
    first_eval = next(iter(evals))
    windows = calibration(a.model, a.calib, a.nsamples, a.calib_seq_len, 0)
    layers = a.layers if a.layers == "auto" else int(a.layers)

    def ppl(model) -> dict:
        return {e: perplexity(model, w, batch_size=8, progress=False)["perplexity"] for e, w in evals.items()}

    import tempfile

    from edgeprune.build import runtime_perplexity
    from edgeprune.checkpoint import save

    work = Path(tempfile.mkdtemp(prefix="edgeprune-quality-"))

    def gguf_ppl(model_dir: Path) -> float:
        from exporters import export

        res = export(model_dir, "gguf", work / "m.gguf", force=True)
        return runtime_perplexity(Path(res["path"]), evals[first_eval])

    dense = ppl(load(a.model))
    rows = [{"method": "dense", "ratio": 0.0, **{f"ppl:{e}": v for e, v in dense.items()}}]
    if a.gguf:
        rows[0]["gguf_ppl"] = gguf_ppl(Path(a.model))
    for ratio in [float(r) for r in a.ratios.split(",")]:
        for spec in a.methods.split(","):
            method, extra = SPECS[spec]
            req = PruneRequest(ratio=ratio, layers=layers if method == "comp" else None, progress=False, **extra)
            row = {"method": spec, "ratio": ratio}
            try:
                torch.manual_seed(0)
                plan, rep = make_plan(a.model, method, req, windows)
            except EdgePruneError as e:
                row["note"] = str(e)[:90]
                rows.append(row)
                print(f"{spec} {ratio}: {e}", file=sys.stderr)
                continue
            model = apply_plan(load(a.model), plan)
            p = ppl(model)
            row.update({
                "achieved": rep["ratio_achieved"], "params_kept": rep["params_pruned_nonembedding"],
                "layers_removed": len(plan.removed_layers), "prune_s": rep["wall_seconds"],
                "peak_mib": rep["peak_memory"]["above_baseline_bytes"] / 2**20,
                **{f"ppl:{e}": v for e, v in p.items()},
                **{f"ratio:{e}": p[e] / dense[e] for e in p},
            })
            if a.gguf:
                d = save(model, work / "pruned", tokenizer_from=a.model, plan=plan, force=True)
                row["gguf_ppl"] = gguf_ppl(d)
            rows.append(row)
            print(f"{spec} {ratio}: " + ", ".join(f"{e} {v:.3f}" for e, v in p.items()), file=sys.stderr)
    cols = [("method", "method"), ("ratio", "ratio"), ("achieved", "achieved")]
    for e in evals:
        name, L = e.rsplit("@", 1)
        cols += [(f"ppl:{e}", f"PPL {Path(name).name} @{L}"), (f"ratio:{e}", "x dense")]
    if a.gguf:
        cols += [("gguf_ppl", f"PPL via llama.cpp (GGUF f32, {first_eval})")]
    cols += [("params_kept", "non-emb params kept"), ("layers_removed", "layers removed"), ("prune_s", "prune s"),
             ("peak_mib", "peak MiB above baseline"), ("note", "note")]
    header = (f"Model `{a.model}`; calibration {a.calib} ({a.nsamples} x {a.calib_seq_len} tokens, seed 0); "
              f"evaluation: non-overlapping windows of {a.seq_len} tokens (each protocol a column)"
              + (f", first {a.max_windows} windows" if a.max_windows else ", every window")
              + f" of the eval portion; COMP --layers {a.layers}; {a.threads} CPU threads.\n\n")
    table = header + markdown_table(rows, cols)
    print(table)
    name = a.name or Path(a.model).name
    write_results(f"quality-{name}-seq{a.seq_len.replace(',', '-')}", {"args": vars(a), "rows": rows}, table)


if __name__ == "__main__":
    main()

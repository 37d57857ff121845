"""Quality benchmark: method x ratio on one model, dense vs pruned, in one run.

Every method prunes the same model on the same calibration windows; every pruned model
is physically applied and evaluated with the same protocol (non-overlapping windows of
--seq-len on each --eval text). Prints a Markdown table and writes JSON + .md beside it
in benchmarks/results/.

    python benchmarks/quality.py --model ../shared/data/models/stories260K/hf \
        --calib tinystories --eval tinystories,wikitext2 --ratios 0.1,0.2 --layers 0 --name stories260K

Method specs: comp (the defaults: diagonal importance, identical inputs, iterative layer
order, mask tuning), the COMP ablations comp-obs, comp-pruned-inputs, comp-oneshot,
comp-nomask (each flips one default; they go to a second table), and slimgpt, shortgpt,
wanda-sp, flap, taylor, magnitude. `--seq-len 128,max` evaluates both protocols (max = the
model's max_position_embeddings); `--max-tokens` gives every protocol the same token budget.
`--gguf` adds the exported GGUF's perplexity (llama.cpp), `--tasks` lm-eval zero-shot scores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, pin_threads, write_results  # noqa: E402

SPECS = {
    "comp": ("comp", {}),
    "comp-obs": ("comp", {"importance": "obs"}),
    "comp-pruned-inputs": ("comp", {"identical_inputs": False}),
    "comp-oneshot": ("comp", {"iterative_layers": False}),
    "comp-nomask": ("comp", {"mask_tuning": False}),
    "search": ("search", {}),
    # the fitness's vocabulary sample forced onto small vocabularies (the largest sample each takes:
    # a quarter of it, with the top 64): 4x to 16x fewer rows than at Llama-3 width, so a harder test
    "search-kl64": ("search", {"search_kl_vocab": 64}),
    "search-kl192": ("search", {"search_kl_vocab": 192}),
    "slimgpt": ("slimgpt", {}),
    "comp-slimgpt": ("comp-slimgpt", {}),
    "shortgpt": ("shortgpt", {}),
    "wanda-sp": ("wanda-sp", {}),
    "flap": ("flap", {}),
    "taylor": ("taylor", {}),
    "magnitude": ("magnitude", {}),
}
ABLATIONS = ("comp", "comp-obs", "comp-pruned-inputs", "comp-oneshot", "comp-nomask")


def ablation_switches(spec: str) -> dict[str, str]:
    """The four COMP switches of an ablation row, as the table prints them."""
    extra = SPECS[spec][1]
    return {
        "identical_inputs": "on" if extra.get("identical_inputs", True) else "off",
        "importance": extra.get("importance", "diag"),
        "layer_order": "iterative" if extra.get("iterative_layers", True) else "one-shot",
        "mask_tuning": "on" if extra.get("mask_tuning", True) else "off",
    }


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", required=True, help="comma-separated named sets or files")
    ap.add_argument("--methods", default=",".join(SPECS))
    ap.add_argument("--ratios", default="0.2,0.3,0.5")
    ap.add_argument("--layers", default="auto", help="COMP's layer stage: N or auto")
    ap.add_argument("--comp-protect", default=None, help="COMP's protected layers, e.g. 0,-1 (default: COMP's 0,1,-1)")
    ap.add_argument("--seq-len", default="128,max", help="evaluation window(s), comma-separated; max = the model's context")
    ap.add_argument("--gguf", action="store_true", help="also export each model to GGUF f32 (verified) and measure PPL through llama.cpp")
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=None, help="cap each protocol at this many tokens (windows = N // seq_len)")
    ap.add_argument("--tasks", default=None, help="lm-eval tasks to add as columns, e.g. tinystories_cloze (the eval extra)")
    ap.add_argument("--task-limit", type=float, default=None, help="lm-eval items per task")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--calib-seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default=None)
    return ap.parse_args()


class Judge:
    """One evaluation protocol for every model of the run: perplexity on each --eval text at
    each window length (the same windows for all), lm-eval tasks, and the GGUF's perplexity."""

    def __init__(self, a: argparse.Namespace):
        import tempfile

        from edgeprune.calibrate import data
        from edgeprune.io.checkpoint import load_config
        from edgeprune.run.pipeline import tokenizer_for

        self.a, self.tok = a, tokenizer_for(a.model)
        ctx = int(load_config(a.model).max_position_embeddings)
        self.seq_lens = [ctx if x == "max" else int(x) for x in str(a.seq_len).split(",")]
        self.evals = {f"{e}@{L}": data.evaluation_set(self.tok, e, L, self._n_windows(L))
                      for L in self.seq_lens for e in a.eval.split(",")}
        self.tasks = a.tasks.split(",") if a.tasks else []
        self.first_eval = next(iter(self.evals))
        self.work = Path(tempfile.mkdtemp(prefix="edgeprune-quality-"))

    def _n_windows(self, L: int) -> int | None:
        caps = [c for c in (self.a.max_windows, self.a.max_tokens // L if self.a.max_tokens else None) if c]
        return min(caps) if caps else None

    def ppl(self, model) -> dict:
        from edgeprune.measure.evaluate import perplexity

        out = {f"ppl:{e}": perplexity(model, w, batch_size=8, progress=False)["perplexity"] for e, w in self.evals.items()}
        if self.tasks:
            from edgeprune.measure.zeroshot import run_tasks

            zs = run_tasks(model, self.tok, self.tasks, limit=self.a.task_limit)
            out.update({f"task:{t}": m.get("acc") for t, m in zs["tasks"].items()})
        return out

    def gguf_ppl(self, model_dir: Path) -> float:
        from edgeprune.measure.artifact_eval import runtime_perplexity
        from exporters import export

        res = export(model_dir, "gguf", self.work / "m.gguf", force=True)
        return runtime_perplexity(Path(res["path"]), self.evals[self.first_eval])


def _method_row(a: argparse.Namespace, judge: Judge, spec: str, ratio: float, windows, dense: dict) -> dict:
    """One method at one ratio: its plan on the shared windows, applied, judged (a refusal is
    a row with its note)."""
    import torch

    from edgeprune.apply.surgery import apply_plan
    from edgeprune.errors import EdgePruneError
    from edgeprune.io.checkpoint import load, save
    from edgeprune.methods import PruneRequest
    from edgeprune.run.pipeline import make_plan

    method, extra = SPECS[spec]
    if method == "comp" and a.comp_protect is not None:
        extra = {**extra, "protect": tuple(int(x) for x in a.comp_protect.split(","))}
    layers = a.layers if a.layers == "auto" else int(a.layers)
    req = PruneRequest(ratio=ratio, layers=layers if method in ("comp", "comp-slimgpt") else None, progress=False, **extra)
    row = {"method": spec, "ratio": ratio, **(ablation_switches(spec) if spec in ABLATIONS else {})}
    try:
        torch.manual_seed(0)
        plan, rep = make_plan(a.model, method, req, windows)
    except EdgePruneError as e:
        row["note"] = str(e).split(";")[0]
        print(f"{spec} {ratio}: {e}", file=sys.stderr)
        return row
    model = apply_plan(load(a.model), plan)
    p = judge.ppl(model)
    row.update({
        "achieved": rep["ratio_achieved"], "params_kept": rep["params_pruned_nonembedding"],
        "layers_removed": len(plan.removed_layers), "prune_s": rep["wall_seconds"],
        "peak_mib": rep["peak_memory"]["above_baseline_bytes"] / 2**20,
        **p,
        **{f"ratio:{e}": p[f"ppl:{e}"] / dense[f"ppl:{e}"] for e in judge.evals},
    })
    if a.gguf:
        d = save(model, judge.work / "pruned", tokenizer_from=a.model, plan=plan, force=True)
        try:
            row["gguf_ppl"] = judge.gguf_ppl(d)
        except EdgePruneError as e:  # e.g. per-layer Qwen2 widths: no GGUF route
            row["gguf_ppl"] = "no GGUF"
            row["note"] = str(e).split(";")[0][:100]
    print(f"{spec} {ratio}: " + ", ".join(f"{e} {v:.3f}" for e, v in p.items() if v is not None), file=sys.stderr)
    return row


def _tables(a: argparse.Namespace, judge: Judge, rows: list[dict]) -> str:
    """The main table (with its header) and, when COMP variants ran, the ablation table."""
    ppl_cols = []
    for e in judge.evals:
        name, L = e.rsplit("@", 1)
        ppl_cols += [(f"ppl:{e}", f"PPL {Path(name).name} @{L}"), (f"ratio:{e}", "x dense")]
    if a.gguf:
        ppl_cols += [("gguf_ppl", f"GGUF PPL (llama.cpp f32, {Path(judge.first_eval).name})")]
    ppl_cols += [(f"task:{t}", f"{t} acc") for t in judge.tasks]
    cols = [("method", "method"), ("ratio", "ratio"), ("achieved", "achieved"), *ppl_cols,
            ("params_kept", "non-emb params kept"), ("layers_removed", "layers removed"), ("prune_s", "prune s"),
            ("peak_mib", "peak MiB above baseline"), ("note", "note")]
    windows_text = ", ".join(f"{L}: {next(w for e, w in judge.evals.items() if e.endswith(f'@{L}')).shape[0]} windows"
                             for L in judge.seq_lens)
    tasks = judge.tasks
    header = (f"Model `{a.model}`; calibration {a.calib} ({a.nsamples} x {a.calib_seq_len} tokens, seed 0); "
              f"evaluation: non-overlapping windows of the eval portion, protocols seq_len {windows_text} "
              f"(each protocol its own columns); COMP --layers {a.layers}"
              + (f", COMP --protect {a.comp_protect}" if a.comp_protect is not None else "") + f"; {a.threads} CPU threads"
              + (f"; zero-shot: lm-eval {', '.join(tasks)}, 0-shot, acc" + (f", {a.task_limit:g} items" if a.task_limit else "") if tasks else "")
              + ".\n\n")
    main_rows = [r for r in rows if r["method"] not in ABLATIONS[1:]]
    table = header + markdown_table(main_rows, cols)
    abl_rows = [r for r in rows if r["method"] in ABLATIONS]
    if len({r["method"] for r in abl_rows}) > 1:
        abl_cols = [("method", "variant"), ("ratio", "ratio"), ("identical_inputs", "identical inputs"),
                    ("importance", "importance"), ("layer_order", "layer order"), ("mask_tuning", "mask tuning"),
                    *ppl_cols, ("prune_s", "prune s"), ("note", "note")]
        table += "\n\nCOMP ablation (each variant flips one default of `comp`):\n\n" + markdown_table(
            sorted(abl_rows, key=lambda r: (r["ratio"], ABLATIONS.index(r["method"]))), abl_cols)
    return table


def main() -> None:
    a = _args()
    pin_threads(a.threads)
    from edgeprune.io.checkpoint import load
    from edgeprune.run.pipeline import calibration

    judge = Judge(a)
    windows = calibration(a.model, a.calib, a.nsamples, a.calib_seq_len, 0)
    dense = judge.ppl(load(a.model))
    rows = [{"method": "dense", "ratio": 0.0, **dense}]
    if a.gguf:
        rows[0]["gguf_ppl"] = judge.gguf_ppl(Path(a.model))
    for ratio in [float(r) for r in a.ratios.split(",")]:
        rows += [_method_row(a, judge, spec, ratio, windows, dense) for spec in a.methods.split(",")]
    table = _tables(a, judge, rows)
    print(table)
    name = a.name or Path(a.model).name
    write_results(f"quality-{name}-seq{'-'.join(map(str, judge.seq_lens))}", {"args": vars(a), "rows": rows}, table)


if __name__ == "__main__":
    main()

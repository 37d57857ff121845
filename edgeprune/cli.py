"""Command line: argument parsing only. Calls the API, prints, maps errors to exit codes.

Exit codes: 0 success, 2 a user error (one line on stderr: `edgeprune: error: ...`),
130 interrupted. Machine-readable output (`--json`) goes to stdout alone; progress and
logs go to stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings


def _ratio(s: str) -> float:
    try:
        r = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a number; pass a fraction such as 0.2") from None
    if math.isnan(r) or not 0 < r < 1:
        raise argparse.ArgumentTypeError(f"{s} is outside (0, 1); it is the fraction of non-embedding parameters removed, e.g. 0.2")
    return r


def _layers(s: str) -> int | str:
    if s == "auto":
        return s
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a whole number or 'auto'") from None
    if n < 0:
        raise argparse.ArgumentTypeError("--layers must be >= 0")
    return n


def _positive(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a whole number") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{s} must be a positive whole number")
    return n


def _setup_torch(threads: int | None, device: str = "cpu") -> None:
    import torch

    if not threads:  # cores other processes are not using now: oversubscribed threads spin-wait
        from .speedup import free_cores

        threads = min(free_cores(), 8)
    torch.set_num_threads(threads)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        from .errors import EdgePruneError

        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise EdgePruneError(f"--device {device}: {why}; use --device cpu, or install a CUDA build of torch on a GPU machine")
    if str(device) not in ("cpu",) and not str(device).startswith("cuda"):
        from .errors import EdgePruneError

        raise EdgePruneError(f"--device {device} is not supported; use cpu or cuda")


def _model_arg(model: str | None) -> str:
    if model:
        return model
    from .demo import ensure_demo_model

    print("edgeprune: no --model given; using the embedded demo model (trained once, then cached)", file=sys.stderr)
    return str(ensure_demo_model())


def _data_default(model: str, given: str | None) -> str:
    if given:
        return given
    from .demo import demo_model_dir

    return "demo" if str(model) == str(demo_model_dir()) else "wikitext2"


# ---- commands ---------------------------------------------------------------------
def cmd_eval(a) -> int:
    """Perplexity (unless only --tasks is asked for) and lm-eval zero-shot tasks."""
    _setup_torch(a.threads, getattr(a, 'device', 'cpu'))
    from . import data
    from .checkpoint import load
    from .evaluate import perplexity
    from .pipeline import tokenizer_for

    model_dir = _model_arg(a.model)
    tasks = a.tasks.split(",") if a.tasks is not None else None
    if tasks is not None:
        from .zeroshot import require_lm_eval

        require_lm_eval()  # fail before loading anything
    model = load(model_dir, device=a.device)
    ctx = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if ctx and a.seq_len > ctx:
        warnings.warn(f"--seq-len {a.seq_len} is beyond the model's context ({ctx} tokens, max_position_embeddings); "
                      "perplexity past it measures extrapolation, not the model. Use --seq-len <= "
                      f"{ctx}", stacklevel=1)
    tok = tokenizer_for(model_dir)
    res: dict = {"model": str(model_dir)}
    lines = []
    if tasks is None or a.data:
        src = _data_default(model_dir, a.data)
        windows = data.evaluation_set(tok, src, a.seq_len, a.max_windows, a.data_dir)
        res.update(perplexity(model, windows, a.batch_size, a.device, progress=not a.json))
        res["protocol"].update({"data": src, "portion": "eval"})
        p = res["protocol"]
        lines.append(f"perplexity {res['perplexity']:.4f} on {src} (eval portion; seq_len {p['seq_len']}, "
                     f"{p['windows']} windows, {p['tokens']} predicted tokens)")
    if tasks is not None:
        from .zeroshot import run_tasks

        zs = run_tasks(model, tok, tasks, tasks_dir=a.tasks_dir, limit=a.limit, num_fewshot=a.num_fewshot,
                       batch_size=a.batch_size, device=a.device, data_dir=a.data_dir)
        res["zero_shot"] = zs
        for t, m in zs["tasks"].items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if not k.endswith("_stderr"))
            lines.append(f"{t}: {shown} ({zs['samples'].get(t, '?')} items, {zs['protocol']['num_fewshot']}-shot, {zs['protocol']['harness']})")
    if a.json:
        print(json.dumps(res))
    else:
        print("\n".join(lines))
    return 0


def _print_prune_report(rep: dict) -> None:
    d, p = rep["params_dense_nonembedding"], rep["params_pruned_nonembedding"]
    print(f"{rep['method']}: removed {rep['ratio_achieved']:.4f} of non-embedding parameters "
          f"({d:,} -> {p:,}; requested {rep['ratio_requested']}); total parameters "
          f"{rep['params_dense_total']:,} -> {rep['params_pruned_total']:,}; layers removed {rep['layers_removed']}; "
          f"peak memory {rep['peak_memory']['peak_bytes'] / 2**20:.1f} MiB (whole process; "
          + ", ".join(f"{k} {v['peak_bytes'] / 2**20:.0f}" for k, v in rep['peak_memory']['stages'].items())
          + f" MiB per stage); {rep['wall_seconds']:.1f} s")


def _request_kwargs(a) -> dict:
    kw = dict(align=a.align, importance=a.importance, identical_inputs=not a.pruned_inputs,
              offload=a.offload, progress=not a.quiet, solver=a.solver, batch_size=a.batch_size,
              iterative_layers=not a.one_shot_layers, mask_tuning=not a.no_mask_tuning)
    if a.protect is not None:
        kw["protect"] = tuple(int(x) for x in a.protect.split(",") if x.strip())
    return kw


def cmd_prune(a) -> int:
    _setup_torch(a.threads, getattr(a, 'device', 'cpu'))
    from .pipeline import prune

    model_dir = _model_arg(a.model)
    res = prune(model_dir, a.method, ratio=a.ratio, layers=a.layers, calib=_data_default(model_dir, a.calib),
                n_samples=a.nsamples, seq_len=a.seq_len, seed=a.seed, device=a.device, data_dir=a.data_dir,
                out=a.out, force=a.force, resume=a.resume, dtype=a.dtype, **_request_kwargs(a))
    rep = res.report
    if a.json:
        print(json.dumps(rep))
    else:
        _print_prune_report(rep)
        print(f"saved to {a.out}")
    return 0


def cmd_inspect(a) -> int:
    from .inspect_cmd import inspect_path

    out = inspect_path(a.path, plot=a.plot)
    print(json.dumps(out, indent=1) if a.json else out["text"])
    return 0


def cmd_export(a) -> int:
    _setup_torch(a.threads, getattr(a, 'device', 'cpu'))
    from exporters import export

    imatrix = _imatrix_for(a) if a.imatrix else None
    res = export(a.model, a.format, a.out, dtype=a.dtype, verify=not a.no_verify, force=a.force,
                 progress=not a.quiet, imatrix=imatrix)
    if a.no_verify:
        print("edgeprune: WARNING: --no-verify: the artifact was NOT checked against PyTorch", file=sys.stderr)
    print(json.dumps(res) if a.json else f"wrote {res['path']} ({res['bytes']:,} bytes); verify: {res.get('verify', {}).get('passed', 'skipped')}")
    return 0


def _imatrix_for(a) -> dict:
    """Refuse a wrong request before the (streamed, whole-model) calibration pass, then build it."""
    from pathlib import Path

    from exporters.common import check_dtype, check_out_path
    from exporters.dtypes import get

    from .errors import ExportError
    from .imatrix import from_calibration

    dtype = check_dtype(a.format, a.dtype)
    if a.format != "gguf" or not get(dtype).llama_quantizer:
        raise ExportError(f"--imatrix weights llama.cpp's k-quants only, not {a.format} {dtype}; "
                          "drop --imatrix or export --format gguf --dtype q4_k_m (or q5_k_m, q6_k)")
    check_out_path(Path(a.out).absolute(), a.force)
    data, desc = from_calibration(a.model, a.imatrix, a.nsamples, a.seq_len, data_dir=a.data_dir, progress=not a.quiet)
    print(f"importance matrix: {desc['tensors']} tensors from {desc['windows']} windows of {desc['seq_len']} tokens "
          f"of {a.imatrix} (calibration portion)", file=sys.stderr)
    return data


def cmd_build(a) -> int:
    _setup_torch(a.threads, getattr(a, 'device', 'cpu'))
    from .build import build

    res = build(model=a.model, target=a.target, ratio=a.ratio, method=a.method, calib=a.calib, out=a.out,
                force=a.force, resume=a.resume, data_dir=a.data_dir, nsamples=a.nsamples, seq_len=a.seq_len,
                seed=a.seed, device=a.device, command=" ".join(sys.argv))
    print(res["summary"])
    return 0


def cmd_bench(a) -> int:
    from .bench import bench

    res = bench(a.path, context=a.context, new_tokens=a.new_tokens, reps=a.reps, threads=a.threads)
    print(json.dumps(res) if a.json else res.get("text", json.dumps(res, indent=1)))
    return 0


def cmd_targets(a) -> int:
    from .targets import list_targets

    for t in list_targets():
        print(f"{t['name']:<18} {', '.join(t['aliases']) or '-':<12} {t['description']}")
    return 0


# ---- parser -----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeprune", description="Prune, export, verify and profile LLMs for edge devices.",
        epilog="environment: EDGEPRUNE_CACHE (where the demo model is cached, default ~/.cache/edgeprune); "
               "EDGEPRUNE_DATA (folder of named datasets, default ../shared/data when present)")
    p.add_argument("--version", action="version", version="edgeprune 0.1.0")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def common(sp, data=True):
        sp.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
        sp.add_argument("--threads", type=_positive, default=None, help="torch threads (default: the cores no other process is busy on, max 8)")
        if data:
            sp.add_argument("--data-dir", default=None, help="folder with named datasets (default $EDGEPRUNE_DATA or ../shared/data)")

    e = sub.add_parser("eval", help="perplexity and zero-shot task accuracy of a dense or pruned model")
    e.add_argument("--model", help="model directory (default: the embedded demo model)")
    e.add_argument("--data", help="named set (wikitext2, ptb, c4, tinystories, alpaca, shakespeare, demo) or a file/dir")
    e.add_argument("--seq-len", type=_positive, default=512, help="window length (default 512)")
    e.add_argument("--max-windows", type=_positive, default=None, help="cap the number of windows (default: all)")
    e.add_argument("--batch-size", type=_positive, default=4)
    e.add_argument("--tasks", default=None, help="lm-eval zero-shot tasks, e.g. boolq,piqa,hellaswag (the 'eval' extra); "
                   "tinystories_cloze is a local one. Perplexity then runs only if --data is given")
    e.add_argument("--tasks-dir", default=None, help="folder of your own lm-eval task YAMLs (e.g. over local files)")
    e.add_argument("--limit", type=float, default=None, help="lm-eval: items per task (int) or fraction (<1)")
    e.add_argument("--num-fewshot", type=int, default=None, help="lm-eval: few-shot examples (default 0)")
    e.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    common(e)
    e.set_defaults(fn=cmd_eval)

    pr = sub.add_parser("prune", help="prune a model and save the physically smaller checkpoint")
    pr.add_argument("--model", help="model directory or hub id (default: the embedded demo model)")
    from .methods import DEFAULT, REGISTRY, help_text

    pr.add_argument("--method", default=DEFAULT, help=help_text())
    pr.add_argument("--ratio", type=_ratio, help="fraction of non-embedding parameters to remove")
    pr.add_argument("--layers", type=_layers, help="layers to remove (shortgpt), or COMP's layer stage: N or auto")
    pr.add_argument("--calib", help="calibration set: named set or file (default wikitext2; demo for the demo model)")
    pr.add_argument("--nsamples", type=_positive, default=32, help="calibration windows (default 32)")
    pr.add_argument("--seq-len", type=_positive, default=128, help="calibration window length (default 128)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the calibration windows (default 0)")
    pr.add_argument("--align", type=_positive, default=1, help="round kept FFN widths, and attention widths (whole KV groups) where the dense width "
                    "allows, to a multiple: 256 for k-quants, 32 for q8_0 (default 1: none)")
    pr.add_argument("--importance", choices=("obs", "diag"), default="diag", help="COMP neuron importance reading (default diag: see README)")
    pr.add_argument("--pruned-inputs", action="store_true", help="COMP: prune each layer on the pruned model's inputs (ablation)")
    pr.add_argument("--one-shot-layers", action="store_true", help="COMP: score layers once instead of iteratively (ablation)")
    pr.add_argument("--no-mask-tuning", action="store_true", help="COMP: skip the least-squares mask re-fit (ablation)")
    pr.add_argument("--protect", default=None, help="layers kept free of pruning, e.g. 0,1,-1 (the COMP paper's set at 32 layers); "
                         "COMP's default scales that set to the model's depth (none at 5 layers or fewer)")
    pr.add_argument("--solver", choices=("cholesky", "lsmr"), default="cholesky", help="mask solver (lsmr: CuPy on CUDA)")
    pr.add_argument("--offload", action="store_true", help="keep calibration activations on disk")
    pr.add_argument("--batch-size", type=_positive, default=8)
    pr.add_argument("--dtype", choices=("bf16", "f16", "f32"), default=None,
                    help="dtype of the saved checkpoint (default: the input's, e.g. bf16 stays bf16)")
    pr.add_argument("--out", required=True, help="output directory")
    pr.add_argument("--force", action="store_true", help="overwrite a finished result in --out")
    pr.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    pr.add_argument("--json", action="store_true")
    common(pr)
    pr.set_defaults(fn=cmd_prune)

    ex = sub.add_parser("export", help="export to ONNX or GGUF, then verify in the runtime")
    ex.add_argument("model", help="model directory (dense or pruned)")
    ex.add_argument("--format", required=True, help="onnx or gguf")
    from exporters.dtypes import ALIASES, allowed

    ex.add_argument("--dtype", default="f32", help=f"gguf: {', '.join(allowed('gguf'))}; onnx: {', '.join(allowed('onnx'))} "
                    f"(default f32; aliases: {', '.join(f'{k}={v}' for k, v in ALIASES.items())})")
    ex.add_argument("--out", required=True, help="GGUF: the .gguf file; ONNX: a directory")
    ex.add_argument("--no-verify", action="store_true", help="skip verification (loudly)")
    ex.add_argument("--force", action="store_true", help="overwrite an existing artifact at --out")
    ex.add_argument("--quiet", action="store_true", help="no progress bars (per tensor, per layer)")
    ex.add_argument("--json", action="store_true")
    ex.add_argument("--imatrix", default=None, metavar="CALIB",
                    help="k-quants only: weigh llama.cpp's rounding by this set's activations (a named set such as "
                         "wikitext2, or a text file; its calibration portion), like llama-imatrix")
    ex.add_argument("--nsamples", type=_positive, default=32, help="--imatrix windows (default 32)")
    ex.add_argument("--seq-len", type=_positive, default=256, help="--imatrix window length (default 256)")
    common(ex)
    ex.set_defaults(fn=cmd_export)

    b = sub.add_parser("build", help="prune, export, verify and profile for a device target")
    b.add_argument("--model", help="model directory (default: the embedded demo model)")
    b.add_argument("--target", default="cpu-x86", help="target name or TOML path (default cpu-x86; see `edgeprune targets`)")
    b.add_argument("--ratio", type=_ratio, default=None, help="override the target's default ratio")
    b.add_argument("--method", default=None, help=f"override the target's method: {', '.join(REGISTRY)}")
    b.add_argument("--calib", default=None, help="calibration (and evaluation) set: named set or file "
                   "(default wikitext2; demo for the demo model)")
    b.add_argument("--nsamples", type=_positive, default=32, help="calibration windows (default 32)")
    b.add_argument("--seq-len", type=_positive, default=128, help="calibration window length (default 128)")
    b.add_argument("--seed", type=int, default=0, help="seed of the calibration windows (default 0)")
    b.add_argument("--out", default="build", help="build directory (default build/)")
    b.add_argument("--force", action="store_true", help="replace a finished build in --out (only one edgeprune wrote)")
    b.add_argument("--resume", action="store_true", help="continue an interrupted build with the same arguments")
    common(b)
    b.set_defaults(fn=cmd_build)

    be = sub.add_parser("bench", help="measure latency of an artifact or build dir with its runtime (no torch)")
    be.add_argument("path")
    be.add_argument("--context", type=_positive, default=None, help="prompt tokens (default: the target's, else 128)")
    be.add_argument("--new-tokens", type=_positive, default=32, help="decoded tokens per repetition (default 32)")
    be.add_argument("--reps", type=_positive, default=5, help="repetitions (default 5)")
    be.add_argument("--threads", type=_positive, default=None, help="runtime threads (default: all cores)")
    be.add_argument("--json", action="store_true")
    be.set_defaults(fn=cmd_bench)

    i = sub.add_parser("inspect", help="show a model's or plan's per-layer widths")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    i.add_argument("--plot", default=None, help="write a PNG of layer importance and kept widths")
    i.set_defaults(fn=cmd_inspect)

    t = sub.add_parser("targets", help="list the device targets")
    t.set_defaults(fn=cmd_targets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import EdgePruneError

    warnings.formatwarning = lambda msg, cat, *_a, **_k: f"edgeprune: warning: {msg}\n"
    try:
        return args.fn(args) or 0
    except EdgePruneError as e:
        print(f"edgeprune: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, OSError) as e:
        print(f"edgeprune: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgeprune: interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The command line's arguments: one function per subcommand, every option with its help and
default. Torch-free (the help must work where only the runtimes are installed)."""
from __future__ import annotations

import argparse
from typing import Callable

from .. import defaults
from .argtypes import floats as _floats, int_list as _int_list, layers as _layers
from .argtypes import number as _number, positive as _positive, ratio as _ratio
from ..measure.latency import DEFAULT_CONTEXT, DEFAULT_NEW_TOKENS, DEFAULT_REPS, DEFAULT_RUNTIME

ENVIRONMENT = ("environment: EDGEPRUNE_CACHE (where the demo model is cached, default ~/.cache/edgeprune); "
               "EDGEPRUNE_DATA (folder of named datasets, default ../shared/data when present)")


def _budget_args(sp, build: bool) -> None:
    """The budget, exactly one of three (argparse refuses two in one line)."""
    g = sp.add_mutually_exclusive_group()
    where = ("every artifact runtime and dtype of the target (the slowest to speed up binds), at its context" if build else
             f"--latency-runtime at {DEFAULT_CONTEXT} tokens of context")
    g.add_argument("--ratio", type=_ratio, default=None, help="fraction of non-embedding parameters to remove (the parameter budget"
                   + ("; default: the target's value)" if build else ")"))
    g.add_argument("--speedup", type=_number, default=None, metavar="S",
                   help=f"decode speedup over the dense model to reach, predicted by a latency model of {where}, measured "
                        "on this build host unless --latency-table is given (e.g. 1.3)")
    g.add_argument("--latency-ms", type=_number, default=None, metavar="X",
                   help=f"decode milliseconds per token to reach, in {where} (predicted as for --speedup)")
    sp.add_argument("--latency-table", default=None, metavar="FILE",
                    help="a latency table measured on the device (`edgeprune bench --latency-table`), used in place of "
                         "measuring on this host")
    if not build:
        from exporters.formats import get, names

        runtimes = " or ".join(f"{n}:DTYPE ({get(n).latency_runtime})" for n in names() if get(n).latency_dtypes)
        sp.add_argument("--latency-runtime", default=DEFAULT_RUNTIME, metavar="FORMAT:DTYPE",
                        help=f"the runtime and dtype a --speedup / --latency-ms budget is predicted in: {runtimes}, "
                             f"on this build host (default {DEFAULT_RUNTIME})")


class OneLineParser(argparse.ArgumentParser):
    """argparse's refusals as the one line every other refusal is (not 12 lines of usage)."""

    def error(self, message: str):
        import sys

        sys.stderr.write(f"edgeprune: error: {message}; see `{self.prog} --help`\n")
        sys.exit(2)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, once: appended as "(default: X)" unless the help
    already says what the default is (a target's value, an input's dtype)."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "default" in h or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return h
        return f"{h} (default: %(default)s)"


def _sub(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose --help opens with what it does and shows every default."""
    return sub.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                          formatter_class=HelpFormatter, epilog=ENVIRONMENT)


def _verbose(sp) -> None:
    sp.add_argument("-v", "--verbose", action="store_true",
                    help="show third-party log lines (onnxruntime, llama.cpp, transformers), quiet otherwise")


def _common(sp, data: bool = True) -> None:
    sp.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    sp.add_argument("--threads", type=_positive, default=None, help="torch threads (default: the cores no other process is busy on, max 8)")
    if data:
        sp.add_argument("--data-dir", default=None, help="folder with named datasets (default $EDGEPRUNE_DATA or ../shared/data)")
    _verbose(sp)


def _eval_args(sub) -> argparse.ArgumentParser:
    e = _sub(sub, "eval", "perplexity and zero-shot task accuracy of a dense or pruned model")
    e.add_argument("--model", help="model directory (default: the embedded demo model)")
    e.add_argument("--data", help="named set (wikitext2, ptb, c4, tinystories, alpaca, shakespeare, demo) or a file/dir "
                   "(default wikitext2; demo for the demo model)")
    e.add_argument("--seq-len", type=_positive, default=512, help="window length (default 512)")
    e.add_argument("--max-windows", type=_positive, default=None, help="cap the number of windows (default: all)")
    e.add_argument("--batch-size", type=_positive, default=4, help="windows per forward pass")
    e.add_argument("--tasks", default=None, help="lm-eval zero-shot tasks, e.g. boolq,piqa,hellaswag (the 'eval' extra); "
                   "tinystories_cloze is a local one. Perplexity then runs only if --data is given")
    e.add_argument("--tasks-dir", default=None, help="folder of your own lm-eval task YAMLs (e.g. over local files)")
    e.add_argument("--limit", type=float, default=None, help="lm-eval: items per task (int) or fraction (<1)")
    e.add_argument("--num-fewshot", type=int, default=None, help="lm-eval: few-shot examples (default 0)")
    e.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    _common(e)
    return e


def _calibration_args(sp, calib_help: str) -> None:
    """The calibration windows, alike for prune and build (defaults: edgeprune/defaults.py)."""

    sp.add_argument("--calib", default=None, help=calib_help)
    sp.add_argument("--nsamples", type=_positive, default=defaults.NSAMPLES, help="calibration windows")
    sp.add_argument("--seq-len", type=_positive, default=defaults.SEQ_LEN, help="calibration window length")
    sp.add_argument("--seed", type=int, default=defaults.SEED, help="seed of the calibration windows (default %(default)s)")


def _method_options(sp, build: bool) -> None:
    """The methods' own options, generated from their declarations (methods/registry.py)."""
    from ..methods import OPTIONS, READERS
    from ..methods.options import add_flags

    add_flags(sp, OPTIONS, READERS, build)


def _prune_args(sub) -> argparse.ArgumentParser:
    pr = _sub(sub, "prune", "prune a model and save the physically smaller checkpoint")
    pr.add_argument("--model", help="model directory or hub id (default: the embedded demo model)")
    from ..methods import DEFAULT, help_text

    pr.add_argument("--method", default=DEFAULT, help=help_text())
    _budget_args(pr, build=False)
    pr.add_argument("--layers", type=_layers, help="layers to remove (shortgpt), or COMP's layer stage: N or auto")
    _calibration_args(pr, "calibration set: named set or file (default wikitext2; demo for the demo model)")
    pr.add_argument("--align", type=_positive, default=defaults.ALIGN, help="round kept FFN widths, and attention widths (whole KV groups) where the dense width "
                    "allows, to a multiple: 256 for k-quants, 32 for q8_0 (default 1: none)")
    pr.add_argument("--protect", type=_int_list, default=None, help="layers kept free of pruning, e.g. 0,1,-1 (the COMP paper's set at 32 layers); "
                         "COMP's default scales that set to the model's depth (none at 5 layers or fewer)")
    _method_options(pr, build=False)
    pr.add_argument("--offload", action="store_true", help="keep calibration activations on disk")
    pr.add_argument("--batch-size", type=_positive, default=defaults.BATCH_SIZE, help="calibration windows per forward pass")
    pr.add_argument("--dtype", choices=("bf16", "f16", "f32"), default=None,
                    help="dtype of the saved checkpoint (default: the input's, e.g. bf16 stays bf16)")
    pr.add_argument("--out", required=True, help="output directory")
    pr.add_argument("--force", action="store_true", help="overwrite a finished result in --out")
    pr.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    pr.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    _common(pr)
    return pr


def _export_args(sub) -> argparse.ArgumentParser:
    from exporters.dtypes import ALIASES, allowed
    from exporters.formats import get, names


    ex = _sub(sub, "export", f"export to {' or '.join(names())}, then verify in the runtime")
    ex.add_argument("model", help="model directory (dense or pruned)")
    ex.add_argument("--format", required=True, help=" or ".join(names()))
    ex.add_argument("--dtype", default="f32", help="; ".join(f"{f}: {', '.join(allowed(f))}" for f in names()) + " "
                    f"(default f32; aliases: {', '.join(f'{k}={v}' for k, v in ALIASES.items())})")
    ex.add_argument("--out", required=True, help="; ".join(f"{n}: {get(n).out_help}" for n in names()))
    ex.add_argument("--no-verify", action="store_true", help="skip verification (loudly)")
    ex.add_argument("--force", action="store_true", help="overwrite an existing artifact at --out")
    ex.add_argument("--quiet", action="store_true", help="no progress bars (per tensor, per layer)")
    ex.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    ex.add_argument("--imatrix", default=None, metavar="CALIB",
                    help="k-quants only: weigh llama.cpp's rounding by this set's activations (a named set such as "
                         "wikitext2, or a text file; its calibration portion), like llama-imatrix")
    ex.add_argument("--nsamples", type=_positive, default=defaults.IMATRIX_NSAMPLES,
                    help="--imatrix windows (default %(default)s)")
    ex.add_argument("--seq-len", type=_positive, default=defaults.IMATRIX_SEQ_LEN,
                    help="--imatrix window length (default %(default)s)")
    ex.add_argument("--gguf-pre", default=None, metavar="NAME",
                    help="GGUF: llama.cpp's pre-tokenizer name, for a byte-level tokenizer whose pre-tokenizer edgeprune "
                         "does not recognise (it refuses rather than guess); the text check still verifies it")
    _common(ex)
    return ex


def _runtime_threads(sp, sweep: bool = False) -> None:
    """llama.cpp's / ORT's threads, fixed once so that the latency model and the speedup check
    (and, in a sweep, every point) are measured alike."""
    sp.add_argument("--runtime-threads", type=_positive, default=None, metavar="N",
                    help="threads of the artifact runtimes for the latency model and the speedup check (default: the "
                         "cores no other process is busy on when the " + ("sweep" if sweep else "build") + " starts, "
                         "kept for every measurement of it" + (" and every point" if sweep else "") + ")")


def _build_args(sub) -> argparse.ArgumentParser:
    from ..methods import REGISTRY

    b = _sub(sub, "build", "prune, export, verify and profile for a device target",
             "Prune a model, export it in the target's formats, verify every artifact in its runtime against "
             "PyTorch and profile it (perplexity, latency dense vs pruned, speedup check, device estimate).")
    b.add_argument("--model", help="model directory (default: the embedded demo model)")
    b.add_argument("--target", default="cpu-x86", help="target name or TOML path (default cpu-x86; see `edgeprune targets`)")
    _budget_args(b, build=True)
    b.add_argument("--method", default=None, help=f"{', '.join(REGISTRY)} (default: the target's value; `edgeprune targets --json` shows each target's)")
    b.add_argument("--formats", default=None, metavar="FMT:DTYPE,...", help="replace the target's artifact list, e.g. "
                   "gguf:q8_0,onnx:f32 (default: the target's value)")
    _calibration_args(b, "calibration (and evaluation) set: named set or file (default wikitext2; demo for the demo model)")
    _method_options(b, build=True)
    b.add_argument("--align", type=_positive, default=None, help="kept widths are rounded to a multiple of it "
                   "(see prune --align; 1: none; default: the target's value)")
    _runtime_threads(b)
    b.add_argument("--out", default="build", help="build directory (default build/)")
    b.add_argument("--force", action="store_true", help="replace a finished build in --out (only one edgeprune wrote)")
    b.add_argument("--resume", action="store_true", help="continue an interrupted build with the same arguments")
    b.add_argument("--gguf-pre", default=None, metavar="NAME",
                    help="GGUF: llama.cpp's pre-tokenizer name, for a byte-level tokenizer whose pre-tokenizer edgeprune "
                         "does not recognise (it refuses rather than guess); the text check still verifies it")
    b.add_argument("--dry-run", action="store_true", help="resolve target, budget, method, formats and dtypes, "
                   "estimate memory and time, and create nothing")
    b.add_argument("--json", action="store_true", help="print exactly one JSON object (the summary and profile) on stdout")
    b.add_argument("--quiet", action="store_true", help="no progress bars or stage lines (warnings still show)")
    _common(b)
    return b


def _bench_args(sub) -> argparse.ArgumentParser:
    be = _sub(sub, "bench", "measure latency of an artifact or build dir with its runtime (no torch)",
              "Re-measure a build on the device itself, dense vs pruned, interleaved, with the build's speedup check; "
              "on a build directory it updates profile.json and report.md. Needs only numpy and the runtime. "
              "With --latency-table it instead times the latency model's probe shapes here, for build --latency-table.")
    from exporters.formats import kinds

    be.add_argument("path", nargs="?", default=None, help=f"a build directory, {kinds()} "
                    "(with --latency-table: a build directory whose base model is here, or use --model)")
    be.add_argument("--context", type=_positive, default=None, help=f"prompt tokens (default: the target's, else {DEFAULT_CONTEXT})")
    be.add_argument("--new-tokens", type=_positive, default=DEFAULT_NEW_TOKENS,
                    help=f"decoded tokens per repetition (default {DEFAULT_NEW_TOKENS})")
    be.add_argument("--reps", type=_positive, default=DEFAULT_REPS, help=f"repetitions (default {DEFAULT_REPS})")
    be.add_argument("--threads", type=_positive, default=None, help="runtime threads (default: the cores no other process is busy on)")
    be.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    _verbose(be)
    be.add_argument("--latency-table", default=None, metavar="OUT.json",
                    help="measure the latency model (decode ms/token per layer shape) here, on the device, for "
                         "`build --latency-table`; needs --model and --target, and torch to write the probes")
    be.add_argument("--model", default=None, help="with --latency-table: the dense model directory (its config.json)")
    be.add_argument("--target", default=None, help="with --latency-table: the target whose formats and context to time")
    return be


def _inspect_args(sub) -> argparse.ArgumentParser:
    from exporters.formats import kinds

    i = _sub(sub, "inspect", f"show the per-layer widths of a model, plan, build directory, {kinds()}")
    i.add_argument("path", help=f"a model directory (dense or pruned), a plan file, a build directory, {kinds()}")
    i.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    i.add_argument("--plot", default=None, help="write a PNG of each layer's dense and kept widths (query heads, KV heads, FFN channels)")
    return i


def _sweep_args(sub) -> argparse.ArgumentParser:
    sw = _sub(sub, "sweep", "build at several budgets (one ladder build shared) and draw PPL against measured speed",
              "Build the model at several speed and parameter budgets for one target, sharing the search's ladders and "
              "the dense reference exports, and write sweep.json, sweep.md and pareto.png (perplexity against measured "
              "decode ms/token).")
    sw.add_argument("--model", help="model directory (default: the embedded demo model)")
    sw.add_argument("--target", default="cpu-x86", help="target name or TOML path (default cpu-x86)")
    sw.add_argument("--speedups", type=_floats, default=[1.1, 1.2, 1.3, 1.4], help="decode speedups to build at (default 1.1,1.2,1.3,1.4)")
    sw.add_argument("--ratios", type=_floats, default=[], help="parameter ratios to build at beside them, e.g. 0.1,0.2 (default none)")
    sw.add_argument("--method", default=None, help="one method for every budget (default: the target's value)")
    sw.add_argument("--calib", default=None, help="calibration (and evaluation) set, as for build")
    sw.add_argument("--latency-table", default=None, metavar="FILE", help="a latency table measured on the device")
    _method_options(sw, build=True)
    _runtime_threads(sw, sweep=True)
    sw.add_argument("--out", default="sweep", help="sweep directory (default sweep/)")
    sw.add_argument("--force", action="store_true", help="replace a finished sweep in --out")
    sw.add_argument("--resume", action="store_true", help="continue an interrupted sweep (finished budgets are kept)")
    _common(sw)
    return sw


def _targets_args(sub) -> argparse.ArgumentParser:
    t = _sub(sub, "targets", "list the device targets",
             "List the built-in device targets (name, aliases, description); --target also takes a TOML path.")
    t.add_argument("--json", action="store_true", help="print every target's settings as one JSON object")
    return t


SUBCOMMANDS = {"eval": _eval_args, "prune": _prune_args, "export": _export_args, "build": _build_args,
               "bench": _bench_args, "inspect": _inspect_args, "targets": _targets_args, "sweep": _sweep_args}


def build_parser(handlers: dict[str, Callable]) -> argparse.ArgumentParser:
    """The parser; `handlers` maps each subcommand to the function that runs it."""
    p = OneLineParser(prog="edgeprune", description="Prune, export, verify and profile LLMs for edge devices.",
                      epilog=ENVIRONMENT, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version="edgeprune 0.1.0")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, add in SUBCOMMANDS.items():
        add(sub).set_defaults(fn=handlers[name])
    return p

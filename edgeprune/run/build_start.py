"""A build's checks and decisions before any work (target, budget, ratio, dtypes, tokenizer,
resume arguments and input hashes), then its directory created or reopened: every refusal
comes before anything exists on disk. `dry_run` reuses the same checks."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .. import defaults
from ..report import profile as prof
from ..calibrate.data import local_path
from .build_context import QUIET, Build, BuildError, log
from ..io.checkpoint import load_config
from ..io.outdir import INCOMPLETE, check_output_dir, claim
from ..io.guard import fingerprint, refuse_other_run, refuse_overlap
from ..models import get_adapter
from .targets import Target, load_target

AUTO_LADDER = [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7]


def fitted(target: Target, chosen: dict[str, dict]) -> list[dict]:
    """The target's formats, each with the dtype the dense widths leave it (`_check_dtypes`):
    what sizes and KV caches are estimated for (a requested dtype that falls back is not)."""
    return [{**f, "dtype": chosen[f"{f['format']}-{f['dtype']}"]["chosen"]} for f in target.formats]


def choose_ratio(target: Target, ad, requested: float | None, chosen: dict[str, dict]) -> tuple[float, str]:
    """--ratio, else the target's ratio, else ("auto") the smallest ratio on `AUTO_LADDER` whose
    largest artifact (at the dtype `chosen` leaves each format) and its KV cache fit the budget."""
    if requested is not None:
        return requested, "from --ratio"
    if target.ratio != "auto":
        return float(target.ratio), f"the {target.name} target's default"
    non_emb, emb = prof.sizes(ad)
    per = [(prof.bytes_per_weight(f["dtype"]), prof.kv_cache_bytes(ad, target.context, f["format"], f["dtype"]))
           for f in fitted(target, chosen)]
    bpp = max(b for b, _ in per)

    def need(r: float) -> float:  # the largest artifact + the KV cache its runtime keeps
        return max((emb + (1 - r) * non_emb) * b + kv for b, kv in per)

    budget = target.budget_bytes
    if need(0.0) <= budget:
        return AUTO_LADDER[0], (f"auto: the dense model already fits ({need(0.0) / 1e9:.3f} GB of {budget / 1e9:.1f} GB), "
                                f"so the smallest ratio on the ladder, {AUTO_LADDER[0]}, is used")
    for r in AUTO_LADDER:
        if need(r) <= budget:
            return r, f"auto: smallest ratio whose artifact + KV cache fits: {need(r) / 1e9:.3f} GB <= budget {budget / 1e9:.1f} GB"
    raise BuildError(
        f"even ratio {AUTO_LADDER[-1]} needs {need(AUTO_LADDER[-1]) / 1e9:.2f} GB (weights at {bpp:.2f} B/param + KV cache "
        f"at context {target.context}), over {target.name}'s budget of {budget / 1e9:.1f} GB; choose a smaller model, "
        "a more compact dtype in a custom target, or a bigger device"
    )


def _warn_alignment(tgt: Target, ad, align: int, chosen: dict[str, dict]) -> None:
    """A quantised format whose block the build's alignment does not respect falls back to a
    bigger type (llama.cpp does so silently for k-quants): say so before the work, for the
    dtype the dense widths leave each format (`_check_dtypes`)."""
    from edgeprune.dtypes import get

    for f in fitted(tgt, chosen):
        block = get(f["dtype"]).block
        if block > 1 and align % block:
            log(f"WARNING: align {align} is not a multiple of {f['dtype']}'s block {block}: pruned widths "
                f"may fall back to a bigger type (listed in the verify report); set align = {block} in the target")
        elif block > 1 and ad.hidden_size % block:
            log(f"note: hidden size {ad.hidden_size} is not a multiple of {f['dtype']}'s block {block}: some tensors "
                "will fall back whatever the pruning does (listed in the verify report)")


def _check_dtypes(tgt: Target, ad, align: int) -> dict[str, dict]:
    """What the dense widths already decide (a hidden size off the block makes most weights
    fall back whatever the pruning does), said before any work; refused when no dtype of a
    format's list fits. `stage_dtypes` decides on the pruned widths before exporting."""
    from ..measure import dtype_fit

    try:
        return dtype_fit.decide(tgt.formats, ad, ad, align, log, rules=("fallback",))
    except dtype_fit.DTypeError as e:
        raise BuildError(str(e)) from None


def check_align(align, tgt: Target) -> int:
    """--align, validated as prune's is (a positive whole number), else the target's."""
    if align is None:
        return tgt.align
    if isinstance(align, bool) or not isinstance(align, int) or align < 1:
        raise BuildError(f"--align must be a positive whole number (got {align!r}); e.g. --align 32, or 1 for none")
    return align


def method_options(tgt: Target, given: dict) -> dict:
    """The method options a build passes to the prune: given, else the target's, else the default."""
    from ..methods import BUILD_OPTIONS
    from ..methods.options import for_target

    return for_target(tgt.data["pruning"], given, BUILD_OPTIONS)


def _read_state(path: Path) -> dict:
    """build_state.json as written by `save_state`, and every artifact it records as exported
    still there with a valid verify report (the export stage would skip it), or one line."""
    from exporters.artifacts import read_verify_report

    from ..io import schema

    st = schema.read(path, schema.BUILD_STATE, "build state", "the build cannot be resumed; pass --force to start over")
    for res in st["done"].get("export", {}).values():
        read_verify_report(Path(res["path"]), "pass --force to rebuild")
    return st


@dataclass
class Resolved:
    """What a build decides before any work, from its arguments and the model's config alone."""

    tgt: Target
    align: int
    out_dir: Path
    model_dir: Path
    ad: object  # the family adapter of the dense model
    dense_fit: dict  # each format's dtype as the dense widths leave it (`_check_dtypes`)
    calib: str
    defaulted: bool  # no --calib given
    method: str
    budget: object | None  # a speed budget (`measure.budget.Budget`), else None: a parameter ratio
    ratio: float | None
    why: str  # where the ratio (or the budget) came from


def resolve(tgt: Target, model_dir: Path, demo: bool, ratio, method, calib, out, force: bool, resume: bool,
            opts: dict) -> Resolved:
    """Every check and decision of a build that needs nothing but the arguments and the config,
    in the order the build makes them; `build` and `build --dry-run` both call it, so a dry run
    refuses exactly what a build refuses (the dry run passes force and resume: what --out holds
    is reported there, not refused)."""
    from ..calibrate.data import calib_input, warn_if_overlap

    align = check_align(opts.get("align"), tgt)
    out_dir = Path(out).absolute()
    refuse_overlap(out_dir, {"--model": model_dir, "--calib": calib_input(calib), "--target": tgt.path})
    check_output_dir(out_dir, force=force, resume=resume)
    ad = get_adapter(load_config(model_dir))
    dense_fit = _check_dtypes(tgt, ad, align)  # before any directory exists
    defaulted = calib is None
    calib = defaults.calib_for(demo, calib)
    if defaulted and not demo:
        import warnings

        warnings.warn(f"no --calib given: calibrating on {calib}'s calibration portion and evaluating on its evaluation "
                      "portion (general English text). If your model's domain differs (code, stories, chat), pass --calib "
                      "with in-domain text", stacklevel=4)
    warn_if_overlap(calib, calib)  # build evaluates on the calibration source's eval portion
    from exporters import check_tokenizer_rows, model_tokenizer
    from exporters.formats import get as get_format

    check_tokenizer_rows(model_tokenizer(model_dir), int(ad.vocab_size), model_dir)  # every format looks ids up: first
    for fmt in dict.fromkeys(f["format"] for f in tgt.formats):
        get_format(fmt).preflight_tokenizer(model_dir, opts.get("gguf_pre"))  # a vocabulary its runtime cannot hold: first
    from .budget_stages import choose

    budget, why = choose(tgt, ratio, *opts.get("speed", (None, None)))
    if budget is not None and not budget.is_speed:
        budget = None  # --ratio: today's path
    the_ratio, why = choose_ratio(tgt, ad, ratio, dense_fit) if budget is None else (None, why)
    return Resolved(tgt, align, out_dir, model_dir, ad, dense_fit, calib, defaulted, method or tgt.method, budget,
                    the_ratio, why)


def _start(model, target, ratio, method, calib, out, force, resume, opts: dict) -> Build:
    """Check everything, then create (or reopen) the build directory: refusals come first."""
    from ..io.demo import ensure_demo_model

    tgt = target if isinstance(target, Target) else load_target(target)
    check_align(opts.get("align"), tgt)  # a bad --align is refused before a demo model is trained
    demo = model is None
    r = resolve(tgt, Path(ensure_demo_model()) if demo else Path(model), demo, ratio, method, calib, out, force, resume,
                opts)
    b = Build(tgt, r.out_dir, r.model_dir, demo, r.calib, r.defaulted, r.method, r.ratio, r.why, opts, align=r.align,
              budget=r.budget, options=method_options(tgt, opts.get("options") or {}))
    resuming = _open_state(b, resume)
    if r.budget is not None:  # the latency model, then the budget refused when out of reach, before the directory
        from .budget_stages import build_budget

        build_budget(b, r.ad, r.dense_fit)
    _create(b, force, resume, resuming)
    from .budget_stages import budget_words

    log(f"target {tgt.name}; method {r.method}; {budget_words(b)}; align {r.align}"
        + (" (--align)" if opts.get("align") is not None else " (the target's)"))
    _warn_alignment(tgt, r.ad, r.align, r.dense_fit)
    log(f"calibration data: {r.calib} (calibration portion); evaluation data: {r.calib} (held-out evaluation portion)"
        + (" [default]" if r.defaulted else ""))
    return b


def _open_state(b: Build, resume: bool) -> bool:
    """The build's arguments and input hashes in `b.state`; on --resume, the recorded state
    instead (refused when the arguments or inputs changed), with this run appended to its
    commands. Else the prune's own checks run (nothing exists yet). True when resuming."""
    from .pipeline import preflight

    args = {"model": str(b.model_dir), "target": b.tgt.name, "ratio": b.ratio, "method": b.method, "calib": b.calib,
            "nsamples": b.opts["nsamples"], "seq_len": b.opts["seq_len"], "seed": b.opts["seed"], "align": b.align,
            "formats": [[f["format"], f["dtype"]] for f in b.tgt.formats], "options": b.options}
    if b.budget is not None:
        args.update(budget=b.budget.to_json(), latency_table=str(b.opts.get("latency_table") or ""))
    if b.opts.get("runtime_threads"):  # given: a resume must give the same; else decided once below
        args["runtime_threads"] = int(b.opts["runtime_threads"])
    inputs = fingerprint(b.model_dir, local_path(b.calib, b.opts["data_dir"]), b.tgt.path)
    run = {"command": b.opts["command"], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    b.state = {"args": args, "inputs": inputs, "done": {}, "commands": [run]}
    state_path = b.out_dir / "build_state.json"
    if resume and state_path.is_file():
        old = _read_state(state_path)
        refuse_other_run(b.out_dir, old["args"], args, old.get("inputs"), inputs)
        b.state = old
        # the command that started the build stays first; each resume is appended (provenance)
        old.setdefault("commands", [{"command": None, "time": None, "note": "not recorded by the edgeprune that started it"}])
        old["commands"].append({**run, "resumed": True})
        log(f"resuming; finished stages: {', '.join(old['done']) or 'none'}")
    else:
        preflight(b.model_dir, b.method, b.calib, b.opts["nsamples"], b.opts["seq_len"], b.opts["seed"], b.opts["data_dir"],
                  progress=not QUIET["on"])  # --quiet: no "checking weights" bar either
    if "runtime_threads" not in b.state:  # one thread count for the latency models and every speedup check
        from ..measure.latency import free_cores

        b.state["runtime_threads"] = int(args.get("runtime_threads") or free_cores())
    return resume and state_path.is_file()


def _create(b: Build, force: bool, resume: bool, resuming: bool) -> None:
    """Create (or reopen) the build directory, locked and marked incomplete, with its state."""
    b.lock, b.created = claim(b.out_dir, force, resume, resuming)  # the --out checks again, under its lock
    (b.out_dir / INCOMPLETE).write_text("edgeprune build in progress\n")
    b.save_state()  # the arguments and input hashes, before any stage: a resume compares them

"""The handlers of the commands that build (`build`, `sweep`) and measure (`bench`, `targets`),
beside `commands.py`'s prune/export/eval ones; the same contract: call the API, print its
result, `--json` alone on stdout.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys

from .commands import _join, _setup_torch


def _build_options(a) -> dict:
    """The method options given on a build / sweep command line (the rest: the target's, else defaults)."""
    from ..methods import BUILD_OPTIONS
    from ..methods.options import given

    return given(a, BUILD_OPTIONS)


def command_line() -> str:
    """The command as the user would type it again (provenance): `edgeprune build ...`, not the
    path of __main__.py that `python -m edgeprune` leaves in argv[0]; arguments shell-quoted."""
    import shlex

    return shlex.join(["edgeprune", *sys.argv[1:]])


@contextlib.contextmanager
def _stdout_to_stderr(on: bool):
    """Send everything written to stdout (Python's and the C libraries' file descriptor 1:
    torch.onnx, llama.cpp, onnxruntime) to stderr while the block runs."""
    if not on:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def cmd_build(a) -> int:
    if a.dry_run:  # torch-free up to the config: creates nothing
        from ..run.dry_run import dry_run, text

        res = dry_run(a.model, a.target, a.ratio, a.method, a.calib, a.out, formats=a.formats, align=a.align,
                      nsamples=a.nsamples, seq_len=a.seq_len, options=_build_options(a), speedup=a.speedup,
                      latency_ms=a.latency_ms)
        print(json.dumps(res) if a.json else text(res))
        return 0
    _setup_torch(a.threads, getattr(a, 'device', 'cpu'))
    _join(a)
    from .. import dist
    from ..run.build import build, follow

    if not dist.is_writer():  # the other ranks take part in the prune stage only
        follow(a.device)
        return 0

    with _stdout_to_stderr(a.json):  # --json: stdout holds the one document, whatever a runtime prints
        res = build(model=a.model, target=a.target, ratio=a.ratio, speedup=a.speedup, latency_ms=a.latency_ms,
                    latency_table=a.latency_table, method=a.method, calib=a.calib, out=a.out,
                    force=a.force, resume=a.resume, data_dir=a.data_dir, nsamples=a.nsamples, seq_len=a.seq_len,
                    seed=a.seed, device=a.device, options=_build_options(a), align=a.align,
                    command=command_line(), gguf_pre=a.gguf_pre, formats=a.formats, quiet=a.quiet or a.json,
                    runtime_threads=a.runtime_threads)
    print(json.dumps({"out": str(a.out), "summary": res["summary"], "profile": res["profile"]}) if a.json else res["summary"])
    return 0


def cmd_sweep(a) -> int:
    _setup_torch(a.threads, getattr(a, 'device', 'cpu'))
    from ..run.sweep import markdown, sweep

    res = sweep(a.model, a.target, a.speedups, a.ratios, a.out, force=a.force, resume=a.resume, method=a.method,
                calib=a.calib, data_dir=a.data_dir, device=a.device, options=_build_options(a),
                latency_table=a.latency_table, command=command_line(), runtime_threads=a.runtime_threads)
    print(markdown(res) + f"sweep: {a.out}/sweep.json, sweep.md, pareto.png ({res['wall_seconds']:.0f} s)")
    return 0


def cmd_bench(a) -> int:
    from ..run.bench import bench

    if a.latency_table:
        from ..run.latency_table_cmd import latency_table

        res = latency_table(a.latency_table, a.model, a.path, a.target, a.threads, a.context)
        print(json.dumps(res) if a.json else res["text"])
        return 0
    if not a.path:
        from ..errors import EdgePruneError

        raise EdgePruneError("bench needs a path: an artifact (.gguf, ONNX folder) or a build directory")
    res = bench(a.path, context=a.context, new_tokens=a.new_tokens, reps=a.reps, threads=a.threads)
    print(json.dumps(res) if a.json else res.get("text", json.dumps(res, indent=1)))
    return 0


def cmd_targets(a) -> int:
    from ..run.targets import describe, list_targets, load_target

    if a.json:
        print(json.dumps({"targets": [describe(load_target(t["path"])) for t in list_targets()]}))
        return 0
    for t in list_targets():
        print(f"{t['name']:<18} {', '.join(t['aliases']) or '-':<12} {t['description']}")
    return 0

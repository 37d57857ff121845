"""The command line's handlers: one per subcommand (`cmd_<name>`), each calling the API and
printing its result (`main` maps their errors to exit codes; `args` declares their flags).
Machine-readable output (`--json`) goes to stdout alone; progress and logs go to stderr.
"""
from __future__ import annotations

import json
import sys
import warnings


def _setup_torch(threads: int | None, device: str = "cpu") -> None:
    import torch

    if not threads:  # cores other processes are not using now: oversubscribed threads spin-wait
        from ..measure.latency import free_cores

        threads = min(free_cores(), 8)
    torch.set_num_threads(threads)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        from ..errors import EdgePruneError

        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise EdgePruneError(f"--device {device}: {why}; use --device cpu, or install a CUDA build of torch on a GPU machine")
    if str(device) not in ("cpu",) and not str(device).startswith("cuda"):
        from ..errors import EdgePruneError

        raise EdgePruneError(f"--device {device} is not supported; use cpu or cuda")


def _model_arg(model: str | None) -> str:
    if model:
        return model
    from ..io.demo import ensure_demo_model

    print("edgeprune: no --model given; using the embedded demo model (trained once, then cached)", file=sys.stderr)
    return str(ensure_demo_model())


def _data_default(model: str, given: str | None) -> str:
    from .. import defaults
    from ..io.demo import demo_model_dir

    return defaults.calib_for(str(model) == str(demo_model_dir()), given)


# ---- commands ---------------------------------------------------------------------
def cmd_eval(a) -> int:
    """Perplexity (unless only --tasks is asked for) and lm-eval zero-shot tasks."""
    _setup_torch(a.threads, getattr(a, 'device', 'cpu'))
    from ..calibrate import data
    from ..io.checkpoint import load
    from ..measure.evaluate import perplexity
    from ..run.pipeline import tokenizer_for

    model_dir = _model_arg(a.model)
    tasks = a.tasks.split(",") if a.tasks is not None else None
    if tasks is not None:
        from ..measure.zeroshot import require_lm_eval

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
        from ..measure.zeroshot import run_tasks

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
          f"({d:,} -> {p:,}; requested {_requested(rep)}); total parameters "
          f"{rep['params_dense_total']:,} -> {rep['params_pruned_total']:,}; layers removed {rep['layers_removed']}; "
          f"peak memory {rep['peak_memory']['peak_bytes'] / 2**20:.1f} MiB (whole process; "
          + ", ".join(f"{k} {v['peak_bytes'] / 2**20:.0f}" for k, v in rep['peak_memory']['stages'].items())
          + f" MiB per stage); {rep['wall_seconds']:.1f} s")


def _requested(rep: dict) -> str:
    """The budget as asked, and for a speed budget the decode time predicted for the plan."""
    b, p = rep.get("budget"), rep.get("latency_predicted")
    if not b or b["kind"] == "ratio":
        return str(rep["ratio_requested"])
    asked = f"--speedup {b['requested']:g}" if b["kind"] == "speedup" else f"--latency-ms {b['requested']:g}"
    return (f"{asked}: predicted {p['dense_ms_per_token']:.3f} -> {p['pruned_ms_per_token']:.3f} ms/token, "
            f"{p['speedup']:.2f}x in {p['model'].get('runtime')} {p['model'].get('dtype')}")


def _request_kwargs(a) -> dict:
    from ..methods import OPTIONS
    from ..methods.options import given

    kw = dict(align=a.align, offload=a.offload, progress=not a.quiet, batch_size=a.batch_size, **given(a, OPTIONS))
    if a.protect is not None:
        kw["protect"] = a.protect
    return kw


def _join(a) -> None:
    """Under torchrun (WORLD_SIZE > 1): join the process group, take this rank's device
    (cuda:LOCAL_RANK), and keep every rank but 0 quiet (rank 0 prints and logs)."""
    from .. import dist

    if not dist.requested():
        return
    a.device = dist.init(a.device)
    if not dist.is_writer():
        warnings.simplefilter("ignore")
        a.quiet = True


def cmd_prune(a) -> int:
    _setup_torch(a.threads, getattr(a, 'device', 'cpu'))
    _join(a)
    from .. import dist
    from ..run.pipeline import prune

    model_dir = _model_arg(a.model)
    res = prune(model_dir, a.method, ratio=a.ratio, speedup=a.speedup, latency_ms=a.latency_ms,
                latency_runtime=a.latency_runtime, latency_table=a.latency_table,
                layers=a.layers, calib=_data_default(model_dir, a.calib),
                n_samples=a.nsamples, seq_len=a.seq_len, seed=a.seed, device=a.device, data_dir=a.data_dir,
                out=a.out, force=a.force, resume=a.resume, dtype=a.dtype, **_request_kwargs(a))
    if not dist.is_writer():
        return 0
    rep = res.report
    if a.json:
        print(json.dumps(rep))
    else:
        _print_prune_report(rep)
        print(f"saved to {a.out}")
    return 0


def cmd_inspect(a) -> int:
    from ..report.inspect_cmd import inspect_path

    out = inspect_path(a.path, plot=a.plot)
    print(json.dumps(out, indent=1) if a.json else out["text"])
    return 0


def cmd_export(a) -> int:
    _setup_torch(a.threads, getattr(a, 'device', 'cpu'))
    from exporters import export

    imatrix = _imatrix_for(a) if a.imatrix else None
    res = export(a.model, a.format, a.out, dtype=a.dtype, verify=not a.no_verify, force=a.force,
                 progress=not a.quiet, imatrix=imatrix, gguf_pre=a.gguf_pre)
    if a.no_verify:
        print("edgeprune: WARNING: --no-verify: the artifact was NOT checked against PyTorch", file=sys.stderr)
    print(json.dumps(res) if a.json else f"wrote {res['path']} ({res['bytes']:,} bytes); verify: {res.get('verify', {}).get('passed', 'skipped')}")
    return 0


def _imatrix_for(a) -> dict:
    """Refuse a wrong request before the (streamed, whole-model) calibration pass, then build it."""
    from pathlib import Path

    from exporters.common import check_dtype, check_imatrix, check_out_path

    from ..calibrate.imatrix import from_calibration

    check_imatrix(a.format, check_dtype(a.format, a.dtype))
    check_out_path(Path(a.out).absolute(), a.force)
    from ..io.checkpoint import load_config, read_config_dict
    from ..run.preflight import check_windows

    load_config(a.model)  # every config field checked before its context and width are used
    check_windows(read_config_dict(a.model), a.nsamples, a.seq_len)  # prune's bounds on the windows
    data, desc = from_calibration(a.model, a.imatrix, a.nsamples, a.seq_len, data_dir=a.data_dir, progress=not a.quiet)
    print(f"importance matrix: {desc['tensors']} tensors from {desc['windows']} windows of {desc['seq_len']} tokens "
          f"of {a.imatrix} (calibration portion)", file=sys.stderr)
    return data

"""`build --dry-run`: everything a build would decide (target, budget, method, formats and
dtypes) and rough estimates of its memory and time, from the config alone. It runs the
build's own checks, so a dry run refuses what the build would refuse, and it creates
nothing: no --out, no lock, no demo model (an uncached demo model is reported, not trained)."""
from __future__ import annotations

from pathlib import Path

from .. import defaults
from .build import check_align, method_options
from .build_start import fitted, resolve
from .target_formats import with_formats
from .targets import load_target


def dry_run(model: str | None, target: str, ratio: float | None, method: str | None, calib: str | None, out: str,
            formats: str | None = None, align: int | None = None, nsamples: int = defaults.NSAMPLES,
            seq_len: int = defaults.SEQ_LEN,
            options: dict | None = None, speedup: float | None = None, latency_ms: float | None = None) -> dict:
    from ..report import profile as prof
    from ..io.demo import demo_model_dir
    from ..methods import get

    tgt = with_formats(load_target(target), formats) if formats else load_target(target)
    align = check_align(align, tgt)
    method = get(method or tgt.method).name
    out_dir = Path(out).absolute()
    res = {"dry_run": True, "out": str(out_dir), "target": tgt.name, "method": method, "align": align,
           "formats": [{"format": f["format"], "dtype": f["dtype"], "fallback": f.get("fallback", [])} for f in tgt.formats]}
    model_dir = demo_model_dir() if model is None else Path(model)
    if model is None and not (model_dir / "edgeprune.json").is_file():
        res.update(model=None, note="the demo model is not cached; a build trains it first (a few minutes), so the "
                   "sizes are unknown until then")
        return res
    rs = resolve(tgt, model_dir, model is None, ratio, method, calib, out, True, True,  # what --out holds: reported
                {"align": align, "speed": (speedup, latency_ms)})
    ad, chosen, why, r = rs.ad, rs.dense_fit, rs.why, rs.ratio
    if rs.budget is not None:  # the ratio comes from the latency model, measured in the build
        why = (f"{rs.budget.words()} ({why}): the parameter ratio is decided in the build by the latency model "
               "(probes in each artifact runtime: minutes the first time, then cached); sizes below are the dense ones, "
               "an upper bound")
        res["budget"] = rs.budget.to_json()
    non_emb, emb = prof.sizes(ad)
    arts = []
    for f in fitted(tgt, chosen):
        dtype = f["dtype"]
        nbytes = int((emb + (1 - (r or 0.0)) * non_emb) * prof.bytes_per_weight(dtype))
        kv_f = prof.kv_cache_bytes(ad, tgt.context, f["format"], dtype)
        arts.append({"format": f["format"], "dtype": dtype, "estimated_bytes": nbytes, "kv_cache_bytes": kv_f,
                     "fits_budget": nbytes + kv_f <= tgt.budget_bytes})
    kv = max(a["kv_cache_bytes"] for a in arts)  # the largest runtime's KV cache at the target's context
    widest = max(max(s.intermediate_size for s in ad.layer_shapes()), ad.hidden_size)
    work = 2 * widest**2 * 8 + 4 * non_emb // max(ad.num_layers, 1) + 2 * nsamples * seq_len * ad.hidden_size * 4
    passes = 2 + (method_options(tgt, options or {})["search_evals"] if get(method).evaluates_candidates else 0)
    res.update(model=str(model_dir), calib=defaults.calib_for(model is None, calib), ratio=r,
               ratio_reason=why, params_nonembedding=non_emb, params_embedding=emb, kv_cache_bytes=kv,
               budget_bytes=tgt.budget_bytes, artifacts=arts,
               estimate={"prune_workspace_bytes": work, "calibration_passes": passes,
                         "plan_flop": int(2 * non_emb * nsamples * seq_len * passes),
                         "note": "rough: one layer's float64 Gram and inverse of the widest FFN, one layer's weights "
                                 "and the calibration activations; time scales with plan_flop"},
               out_exists=out_dir.exists())
    return res


def text(res: dict) -> str:
    """The dry run as a person reads it."""
    lines = [f"dry run: nothing was created. target {res['target']}; method {res['method']}; align {res['align']}"]
    if res.get("model") is None:
        return "\n".join(lines + [res["note"]])
    mib = 2**20
    lines += [f"model {res['model']}: {res['params_nonembedding']:,} non-embedding + {res['params_embedding']:,} "
              f"embedding parameters; ratio {res['ratio']} ({res['ratio_reason']}); calibration {res['calib']}"]
    for a in res["artifacts"]:
        lines.append(f"  {a['format']} {a['dtype']}: ~{a['estimated_bytes'] / mib:,.1f} MiB + KV cache "
                     f"{a['kv_cache_bytes'] / mib:,.1f} MiB ({'fits' if a['fits_budget'] else 'over'} the budget of "
                     f"{res['budget_bytes'] / mib:,.0f} MiB)")
    e = res["estimate"]
    lines.append(f"  prune: ~{e['prune_workspace_bytes'] / mib:,.0f} MiB workspace above the model's one layer, "
                 f"{e['calibration_passes']} calibration passes (~{e['plan_flop'] / 1e9:,.1f} GFLOP)")
    lines.append(f"  --out {res['out']} " + ("exists (a build needs --force or --resume)" if res["out_exists"] else "does not exist"))
    return "\n".join(lines)

"""`edgeprune bench`: measure an artifact (or a build's artifacts) on the device itself.

Needs only numpy and the runtime (llama-cpp-python or onnxruntime): torch and transformers
are never imported, so `pip install --no-deps edgeprune` plus the runtime is enough.
On a build directory it appends a `measured_on_device` entry to profile.json, re-decides the
verdict with it (`verdict.refresh`: the newest measurement of a pair decides its speed), redraws
latency.png with it beside the build's and the estimate, and rewrites report.md.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..io.atomic import write_text
from ..errors import EdgePruneError
from ..measure.latency import DEFAULT_CONTEXT, DEFAULT_NEW_TOKENS, DEFAULT_REPS, host_info, measure
from ..measure.speedup import check


def read_profile(path: Path) -> dict:
    """profile.json as the build wrote it, or one line naming what is wrong (truncated,
    edited, or from another tool): bench reads these fields and nothing else."""
    from ..io import schema

    return schema.read(path, schema.PROFILE, "build profile",
                       "re-run the build (edgeprune build ... --force), or bench one artifact by its path")


def check_context(paths, context: int, new_tokens: int) -> None:
    """A context the artifact was not built for measures llama.cpp's (or ORT's) behaviour past
    it, or fails inside the runtime: refused first, naming the artifact's own limit."""
    from exporters.artifacts import artifact_context

    for path in paths:
        got = artifact_context(Path(path))
        if got is not None and context + new_tokens > got[0]:
            raise EdgePruneError(f"--context {context} plus --new-tokens {new_tokens} is beyond the context of {path}, "
                                 f"{got[0]} tokens ({got[1]}); use --context <= {max(1, got[0] - new_tokens)}")


def bench(path: str, context: int | None = None, new_tokens: int | None = None, reps: int | None = None,
          threads: int | None = None) -> dict:
    """Measure a build directory's pairs (recorded into its profile) or one artifact by its path."""
    from exporters.formats import kinds, of_path

    p = Path(path)
    if not p.exists():
        raise EdgePruneError(f"{p} does not exist; pass a build directory, {kinds()}")
    reps = reps or DEFAULT_REPS
    new_tokens = new_tokens or DEFAULT_NEW_TOKENS
    if p.is_dir() and (p / "profile.json").is_file():
        return _bench_build(p, context, new_tokens, reps, threads)
    if p.is_dir() and of_path(p) is None:
        raise EdgePruneError(f"{p} is neither a build directory (no profile.json) nor {kinds('nor')}")
    check_context([p], context or DEFAULT_CONTEXT, new_tokens)
    lat = measure({"artifact": p}, context or DEFAULT_CONTEXT, new_tokens, reps, threads)["artifact"]
    res = {"artifact": str(p), "latency": lat, "host": host_info()}
    res["text"] = (f"{p}: decode {lat['decode_ms_per_token_min']:.3f} ms/token min, {lat['decode_ms_per_token_median']:.3f} median; "
                   f"prefill {lat['prefill_tokens_per_s_max']:.0f} tokens/s max ({lat['protocol']})")
    return res


def _bench_build(p: Path, context: int | None, new_tokens: int, reps: int, threads: int | None) -> dict:
    """Every dense/pruned pair of a build, interleaved as in the build, appended to its
    profile (which then re-decides the verdict and redraws its plots and report)."""
    prof_path = p / "profile.json"
    profile = read_profile(prof_path)
    ctx = context or int(profile["target"]["latency"]["context"])
    missing = [a["path"] for a in profile["artifacts"] if not (p / a["path"]).exists()]
    if missing:
        raise EdgePruneError(f"{p}: artifact {missing[0]} listed in profile.json is missing (deleted?); re-run the "
                             "build with --force, or bench a remaining artifact by its path")
    check_context([p / q for a in profile["artifacts"] for q in (a["path"], a["reference_dense"]["path"])], ctx, new_tokens)
    entries, skipped = _measure_pairs(p, profile, ctx, new_tokens, reps, threads)
    host = host_info()
    same_host = host == profile["provenance"].get("host")
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": host, "same_host_as_build": same_host,
              "artifacts": entries, "skipped": skipped}
    profile.setdefault("measured_on_device", []).append(record)
    from ..report.markdown import write_report
    from ..report.plots import draw
    from ..report.verdict import refresh

    refresh(profile, f"bench on {host['cpu']} at {record['time']}")  # the newest measurement decides speed
    for plot in draw(p, profile):  # redrawn with this measurement beside the build's
        if plot not in profile.setdefault("plots", []):
            profile["plots"].append(plot)
    write_text(prof_path, json.dumps(profile, indent=1))
    write_report(p, profile)
    text = "\n".join(_summary(host, same_host, entries, profile) + [f"appended to {prof_path}; report.md and latency.png updated"])
    return {"build": str(p), "measured_on_device": record, "text": text}


def _measure_pairs(p: Path, profile: dict, ctx: int, new_tokens: int, reps: int,
                   threads: int | None) -> tuple[list[dict], list[dict]]:
    """Each artifact against its dense reference, with the build's own speedup check; an
    artifact whose runtime is not installed here (a device may carry only one) is skipped."""
    from ..errors import MissingExtraError

    entries, skipped = [], []
    for a in profile["artifacts"]:
        pair = {"dense": p / a["reference_dense"]["path"], "pruned": p / a["path"]}
        try:  # dense and pruned interleaved, as in the build: the check needs both sides
            lat = measure(pair, ctx, new_tokens, reps, threads)
        except MissingExtraError as e:
            skipped.append({"format": a["format"], "dtype": a["dtype"], "path": a["path"], "skipped": str(e)})
            print(f"edgeprune: note: skipping {a['path']}: {e}", file=sys.stderr)
            continue
        ideal = a["speedup"].get("bytes_ideal", a["speedup"]["decode_ideal"])
        requested = a["speedup"]["decode_ideal"] if a["speedup"].get("reference") == "requested speedup" else None
        sp = check(lat["dense"]["decode_ms_per_token_runs"], lat["pruned"]["decode_ms_per_token_runs"], ideal, requested)
        entries.append({"format": a["format"], "dtype": a["dtype"], "path": a["path"], "latency": lat["pruned"],
                        "latency_dense": lat["dense"], "speedup": sp})
    if not entries:
        raise EdgePruneError("no artifact of this build could be run here: " + "; ".join(s["skipped"] for s in skipped))
    return entries, skipped


def _summary(host: dict, same_host: bool, entries: list[dict], profile: dict) -> list[str]:
    """What bench prints: where it measured, each pair's speedup check, the new verdict."""
    from ..measure.speedup import decode_bars

    lines = [f"Measured on {host['cpu']} ({host['cores']} cores)"
             + (" - the same host that ran the build, not a separate device" if same_host else "")]
    for e in entries:
        sp, bars = e["speedup"], decode_bars(e["latency_dense"]["decode_ms_per_token_runs"], e["speedup"])
        lines.append(f"{e['format']} {e['dtype']}: decode {bars['dense']:.3f} -> {bars['pruned']:.3f} ms/token "
                     f"(dense median; dense / speedup), speedup {sp['decode_measured']:.2f}x "
                     "[{:.2f}, {:.2f}] vs ideal {:.2f}x: {}".format(*sp["decode_interval"], sp["decode_ideal"],
                                                                   sp["status"].upper()))
    return lines + [f"verdict: {r['decision']} {r['format']} {r['dtype']}" + (f" ({r['reasons'][0]})" if r["reasons"] else "")
                    for r in profile["verdict"]["artifacts"]]

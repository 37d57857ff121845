"""Memory and time at real widths, extrapolated to the real depth.

Random-weight bf16 checkpoints with the real shapes of Llama-3.2-1B, Qwen2.5-7B and
Llama-3.1-8B (edgeprune.io.synthetic: sharded safetensors with an index, as hubs ship them)
are built at two small depths. Each command runs in a fresh process, as a user runs it:
`edgeprune prune` for each method, then `edgeprune export --format gguf` (verified) of the
first method's output. Per stage, the peak the command reports (whole process, plan /
apply_save / export / verify) is read from its --json; the whole command's peak RSS is also
measured from outside (the children's ru_maxrss of a bare wrapper interpreter). The
per-layer slope between the two depths extrapolates each figure to the full depth.

    python benchmarks/scale.py --shapes llama-3.2-1b,qwen2.5-7b,llama-3.1-8b --depths 2,4
    python benchmarks/scale.py --shapes llama-3.1-8b --methods comp --protect none   # COMP's plan stage

With `--nproc N`, data-parallel pruning instead: each method's prune as one process and as N
ranks under `torchrun --nproc-per-node N` (`--threads` per rank), interleaved per method and
repetition, with the wall time, the plan stage's time and the peak of every rank:

    python benchmarks/scale.py --nproc 2 --shapes llama-3.2-1b --depths 2 --methods slimgpt,search --threads 1
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, write_results  # noqa: E402

GiB = 2**30
_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stderr.write(r.stderr[-2000:]); print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else '{}'); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def run(cmd: list[str]) -> tuple[dict, int, float]:
    """(the command's --json, its peak RSS from outside in bytes, wall seconds)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-1500:]}")
    line, kb = r.stdout.strip().splitlines()[-2:]
    return json.loads(line), int(kb) * 1024, wall


def ensure_model(root: Path, shape: str, depth: int) -> Path:
    from edgeprune.io.synthetic import config_for, write_checkpoint

    d = root / f"{shape}-L{depth}"
    if not (d / "config.json").is_file():
        write_checkpoint(d, config_for(shape, depth), max_shard_bytes=2 * 10**9)
    return d


def measure(a, shape: str, depth: int, calib: Path) -> list[dict]:
    ep = [sys.executable, "-m", "edgeprune.cli.main"]
    model = ensure_model(Path(a.work), shape, depth)
    rows = []
    for k, method in enumerate(a.methods.split(",")):
        out = Path(a.work) / f"{shape}-L{depth}-{method}"
        cmd = [*ep, "prune", "--model", str(model), "--method", method, "--ratio", str(a.ratio), "--calib", str(calib),
               "--nsamples", str(a.nsamples), "--seq-len", str(a.seq_len), "--out", str(out), "--force", "--json",
               "--quiet", "--threads", str(a.threads)]
        if method == "search" and a.search_evals:
            cmd += ["--search-evals", str(a.search_evals)]
        if a.protect:
            cmd += ["--protect", "" if a.protect == "none" else a.protect]
        rep, outside, wall = run(cmd)
        pm = rep["peak_memory"]
        for stage, m in pm["stages"].items():
            rows.append(dict(shape=shape, depth=depth, command=f"prune {method}", stage=stage, peak=m["peak_bytes"]))
        rows.append(dict(shape=shape, depth=depth, command=f"prune {method}", stage="whole (reported)", peak=pm["peak_bytes"],
                         outside=outside, wall=wall, **_search_seconds(out)))
        if k == 0 and a.export:
            from exporters import formats

            fmt, dtype = a.export.split(":")
            art = Path(a.work) / f"{shape}-L{depth}-{method}-{formats.get(fmt).artifact_name(dtype)}"
            rep, outside, wall = run([*ep, "export", str(out), "--format", fmt, "--dtype", dtype, "--out", str(art),
                                      "--force", "--json", "--threads", str(a.threads)])
            assert rep["verify"]["passed"], rep["verify"]
            for stage, m in rep["peak_memory"]["stages"].items():
                rows.append(dict(shape=shape, depth=depth, command=f"export {a.export}", stage=stage, peak=m["peak_bytes"]))
            rows.append(dict(shape=shape, depth=depth, command=f"export {a.export}", stage="whole (reported)",
                             peak=rep["peak_memory"]["peak_bytes"], outside=outside, wall=wall, artifact_bytes=rep["bytes"]))
    return rows


def _search_seconds(out: Path) -> dict:
    """search's wall seconds per stage (ladders, fitness, re-fit), as its plan records them."""
    plan = out / "edgeprune_plan.json"
    got = json.loads(plan.read_text()).get("stats", {}).get("search", {}).get("seconds") if plan.is_file() else None
    if got:
        print(f"search stages at {out.name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in got.items()), file=sys.stderr, flush=True)
    return {"search_seconds": got} if got else {}


def measure_nproc(a, shape: str, depth: int, calib: Path) -> list[dict]:
    """1 process against `a.nproc` ranks, per method, interleaved (1, N, 1, N, ...)."""
    import socket

    model = ensure_model(Path(a.work), shape, depth)
    rows = []
    for method in a.methods.split(","):
        for rep in range(a.reps):
            for n in (1, a.nproc):
                with socket.socket() as sk:
                    sk.bind(("127.0.0.1", 0))
                    port = sk.getsockname()[1]
                launch = ([sys.executable, "-m", "edgeprune"] if n == 1 else
                          ["torchrun", "--nproc-per-node", str(n), "--master-port", str(port), "-m", "edgeprune"])
                out = Path(a.work) / f"{shape}-L{depth}-{method}-n{n}"
                cmd = [*launch, "prune", "--model", str(model), "--method", method, "--ratio", str(a.ratio),
                       "--calib", str(calib), "--nsamples", str(a.nsamples), "--seq-len", str(a.seq_len), "--out", str(out),
                       "--force", "--json", "--quiet", "--threads", str(a.threads)]
                if method == "search" and a.search_evals:
                    cmd += ["--search-evals", str(a.search_evals)]
                rep_json, outside, wall = run(cmd)
                ranks = rep_json.get("distributed", {}).get("peak_memory_per_rank", [rep_json["peak_memory"]])
                row = dict(shape=shape, depth=depth, method=method, rep=rep, nproc=n, wall=wall,
                           plan_s=rep_json["wall_seconds"], peaks=[r["peak_bytes"] / GiB for r in ranks],
                           peak_max=max(r["peak_bytes"] for r in ranks) / GiB, outside=outside / GiB)
                rows.append(row)
                print(f"{method} nproc {n} rep {rep}: wall {wall:.1f} s, plan {row['plan_s']:.1f} s, peak per rank "
                      + ", ".join(f"{g:.2f}" for g in row["peaks"]) + " GiB", file=sys.stderr, flush=True)
    return rows


def nproc_table(rows: list[dict], nproc: int) -> list[dict]:
    """Per method: walls of 1 and N processes (min..max over repetitions), the speedup, and a
    verdict: 'inconclusive' when the repetitions' spread exceeds the difference, 'single run'
    when there was one repetition (no interval)."""
    table = []
    for shape, depth, method in dict.fromkeys((r["shape"], r["depth"], r["method"]) for r in rows):
        at = {n: [r for r in rows if (r["shape"], r["depth"], r["method"], r["nproc"]) == (shape, depth, method, n)]
              for n in (1, nproc)}
        w1, wn = [r["wall"] for r in at[1]], [r["wall"] for r in at[nproc]]
        spread = (max(w1) - min(w1)) + (max(wn) - min(wn))
        verdict = "single run" if len(w1) < 2 else ("inconclusive" if spread >= abs(min(w1) - min(wn)) else "")
        table.append(dict(shape=shape, depth=depth, method=method, wall1=f"{min(w1):.1f}..{max(w1):.1f}",
                          walln=f"{min(wn):.1f}..{max(wn):.1f}", speedup=min(w1) / min(wn),
                          plan1=min(r["plan_s"] for r in at[1]), plann=min(r["plan_s"] for r in at[nproc]),
                          peak1=max(r["peak_max"] for r in at[1]),
                          peakn=" / ".join(f"{max(r['peaks'][k] for r in at[nproc]):.2f}" for k in range(nproc)),
                          verdict=verdict))
    return table


def default_against_slimgpt(rows: list[dict], nproc: int) -> str:
    """search's wall time over SlimGPT's in the same run (issue 23's budget: at most 2x), per
    shape and depth and process count, from the fastest repetition of each."""
    lines = []
    for shape, depth in dict.fromkeys((r["shape"], r["depth"]) for r in rows):
        for n in (1, nproc):
            best = {m: min((r["wall"] for r in rows if (r["shape"], r["depth"], r["method"], r["nproc"])
                            == (shape, depth, m, n)), default=None) for m in ("search", "slimgpt")}
            if None not in best.values():
                lines.append(f"- {shape}, {depth} layers, {n} process{'es' if n > 1 else ''}: search / slimgpt wall = "
                             f"{best['search']:.0f} / {best['slimgpt']:.0f} s = {best['search'] / best['slimgpt']:.2f}x "
                             "(budget: 2x)")
    return "\n\n" + "\n".join(lines) + "\n" if lines else ""


def _emit_nproc(name: str, command: str, args: dict, rows: list[dict]) -> None:
    n = args["nproc"]
    cols = [("shape", "width of"), ("depth", "layers"), ("method", "method"), ("wall1", "wall s, 1 proc"),
            ("walln", f"wall s, {n} ranks"), ("speedup", "speedup"), ("plan1", "plan s, 1"), ("plann", f"plan s, {n}"),
            ("peak1", "peak GiB, 1"), ("peakn", f"peak GiB per rank, {n}"), ("verdict", "note")]
    md = markdown_table(nproc_table(rows, n), cols) + default_against_slimgpt(rows, n)
    print(md)
    write_results(name, {"command": command, "args": args, "rows": rows}, md)


def extrapolate(rows: list[dict], d1: int, d2: int) -> list[dict]:
    from edgeprune.io.synthetic import FULL_DEPTH

    table = []
    keys = sorted({(r["shape"], r["command"], r["stage"]) for r in rows}, key=lambda k: (k[0], k[1], k[2] != "plan"))
    for shape, command, stage in keys:
        at = {r["depth"]: r for r in rows if (r["shape"], r["command"], r["stage"]) == (shape, command, stage)}
        if d1 not in at or d2 not in at:
            continue
        L = FULL_DEPTH[shape]
        row = dict(shape=shape, command=command, stage=stage, d1=at[d1]["peak"] / GiB, d2=at[d2]["peak"] / GiB)
        # A peak cannot fall with depth: a negative slope is noise (a transient at the smaller
        # depth), so it counts as flat.
        slope = max(0.0, (at[d2]["peak"] - at[d1]["peak"]) / (d2 - d1))
        top = max(at[d1]["peak"], at[d2]["peak"])
        row.update(per_layer=slope / GiB, full_depth=L, extrapolated=(top + slope * (L - d2)) / GiB)
        if "outside" in at[d2]:
            so = max(0.0, (at[d2]["outside"] - at[d1]["outside"]) / (d2 - d1))
            row.update(outside_d2=at[d2]["outside"] / GiB,
                       outside_extrapolated=(max(at[d1]["outside"], at[d2]["outside"]) + so * (L - d2)) / GiB,
                       wall_d2=at[d2]["wall"],
                       wall_extrapolated=max(at[d1]["wall"], at[d2]["wall"])
                       + max(0.0, (at[d2]["wall"] - at[d1]["wall"]) / (d2 - d1)) * (L - d2))
        table.append(row)
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="llama-3.2-1b,qwen2.5-7b,llama-3.1-8b")
    p.add_argument("--depths", default="2,4")
    p.add_argument("--methods", default="wanda-sp")
    p.add_argument("--export", default="gguf:q8_0", help="format:dtype of the verified export, '' for none")
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--search-evals", type=int, default=None, help="search's bound on candidates (default: its own)")
    p.add_argument("--protect", default=None, help="COMP's --protect ('none' for no protected layer)")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="/tmp/edgeprune-scale")
    p.add_argument("--name", default="scale")
    p.add_argument("--nproc", type=int, default=0, help="compare 1 process with N ranks under torchrun (per method)")
    p.add_argument("--reps", type=int, default=1, help="--nproc: interleaved repetitions of each (1 vs N)")
    p.add_argument("--table-from", default=None, help="re-make the table from a results JSON (no measuring)")
    a = p.parse_args()
    if a.table_from:
        saved = json.loads(Path(a.table_from).read_text())
        if saved["args"].get("nproc"):
            return _emit_nproc(a.name, saved["command"], saved["args"], saved["rows"])
        d1, d2 = (int(x) for x in saved["args"]["depths"].split(","))
        _emit(a.name, saved["command"], saved["args"], saved["rows"], d1, d2)
        return
    from edgeprune.io.demo import demo_text

    if not all(x.strip().isdigit() and int(x) > 0 for x in a.depths.split(",")):
        raise SystemExit(f"scale.py: --depths {a.depths}: give layer counts separated by commas, e.g. 2,4")
    if not a.nproc and len(a.depths.split(",")) != 2:
        raise SystemExit(f"scale.py: --depths {a.depths}: give two depths (e.g. 2,4), from which a layer's cost is "
                         "extrapolated; or compare 1 vs N processes at any depths with --nproc N")
    Path(a.work).mkdir(parents=True, exist_ok=True)
    calib = Path(a.work) / "calib.txt"
    calib.write_text(demo_text("calib", limit=400_000))
    if a.nproc:
        rows = [r for shape in a.shapes.split(",") for depth in map(int, a.depths.split(","))
                for r in measure_nproc(a, shape, depth, calib)]
        return _emit_nproc(a.name, " ".join(sys.argv), vars(a), rows)
    d1, d2 = (int(x) for x in a.depths.split(","))
    rows = []
    for shape in a.shapes.split(","):
        for depth in (d1, d2):
            rows += measure(a, shape, depth, calib)
            print(f"measured {shape} at {depth} layers", file=sys.stderr)
    _emit(a.name, " ".join(sys.argv), vars(a), rows, d1, d2)


def _emit(name: str, command: str, args: dict, rows: list[dict], d1: int, d2: int) -> None:
    table = extrapolate(rows, d1, d2)
    cols = [("shape", "width of"), ("command", "command"), ("stage", "stage"), ("d1", f"peak GiB @{d1}L"),
            ("d2", f"peak GiB @{d2}L"), ("per_layer", "GiB/layer"), ("full_depth", "layers"),
            ("extrapolated", "extrapolated GiB"), ("outside_extrapolated", "outside, extrapolated GiB"),
            ("wall_extrapolated", "wall s, extrapolated")]
    md = markdown_table(table, cols)
    print(md)
    write_results(name, {"command": command, "args": args, "rows": rows, "table": table}, md)


if __name__ == "__main__":
    main()

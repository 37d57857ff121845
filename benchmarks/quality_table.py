"""One quality table over models: method x ratio x model, from the runs `quality.py` wrote.

Each model's run (benchmarks/results/quality-<name>-seq<L1>-<L2>.json) holds PPL at two
window lengths, the GGUF's PPL through llama.cpp, prune seconds and the plan's peak memory;
this puts them side by side, PPL as a multiple of the dense model's, the best method of each
(model, ratio) in bold, and says which method wins most cells. It runs nothing itself.

    python benchmarks/quality_table.py --runs stories260K=quality-table-stories260K-seq256-512.json,...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import RESULTS, write_results  # noqa: E402


def rows_of(path: Path) -> tuple[list[str], list[dict]]:
    rows = json.loads(path.read_text())["rows"]
    protocols = [k[len("ratio:"):] for k in rows[1] if k.startswith("ratio:")] if len(rows) > 1 else []
    return protocols, rows


def cell(r: dict, key: str, fmt: str = "{:.3f}") -> str:
    v = r.get(key)
    return fmt.format(v) if isinstance(v, (int, float)) else ("-" if v is None else str(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="model=results-file,... (files in benchmarks/results)")
    ap.add_argument("--name", default="quality-table")
    a = ap.parse_args()
    lines = ["| model | ratio | method | PPL x dense @L1 | PPL x dense @L2 | GGUF PPL x dense | prune s | plan peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    out, wins, sources = [], {}, []
    for spec in a.runs.split(","):
        model, name = spec.split("=")
        protocols, rows = rows_of(RESULTS / name)
        sources.append(f"{model}: `{name}` (L1, L2 = {', '.join(p.rsplit('@', 1)[1] for p in protocols)})")
        dense = rows[0]
        for ratio in sorted({r["ratio"] for r in rows[1:]}):
            here = [r for r in rows[1:] if r["ratio"] == ratio and isinstance(r.get(f"ratio:{protocols[0]}"), (int, float))]
            best = min(here, key=lambda r: r[f"ratio:{protocols[0]}"])["method"] if here else None
            wins[best] = wins.get(best, 0) + 1
            for r in [r for r in rows[1:] if r["ratio"] == ratio]:
                g = r.get("gguf_ppl")
                gx = g / dense["gguf_ppl"] if isinstance(g, (int, float)) and dense.get("gguf_ppl") else g
                m = f"**{r['method']}**" if r["method"] == best else r["method"]
                vals = [cell(r, f"ratio:{p}") for p in protocols[:2]] + ["-"] * (2 - len(protocols[:2]))
                lines.append(f"| {model} | {ratio} | {m} | {' | '.join(vals)} | {cell({'g': gx}, 'g')} | "
                             f"{cell(r, 'prune_s', '{:.1f}')} | {cell(r, 'peak_mib', '{:.0f}')} |")
                out.append({"model": model, "ratio": ratio, "best": r["method"] == best, **r, "gguf_x_dense": gx})
    summary = ", ".join(f"{m} {n}" for m, n in sorted(wins.items(), key=lambda x: -x[1]))
    table = ("\n".join(lines) + f"\n\nBest (bold) by PPL at L1, cells won: {summary}. Sources: " + "; ".join(sources)
             + ". `plan peak MiB` is read inside one long benchmark process (see Known limitations); "
             "`benchmarks/scale.py` measures memory in fresh processes.")
    print(table)
    write_results(a.name, {"runs": a.runs, "wins": wins, "rows": out}, table)


if __name__ == "__main__":
    main()

"""Which method should be the default? One table from the quality runs already written:
perplexity relative to dense (first in-domain protocol of each run) per model, method and
ratio, the best of each column marked. Reads benchmarks/results/quality-*.json; runs nothing.

    python benchmarks/default_method.py   # writes results/default_method.{md,json}
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import RESULTS, write_results  # noqa: E402

RUNS = {  # model -> (result file, note)
    "stories260K": ("quality-all-stories260K-seq256.json", "current code"),
    "demo model": ("quality-all-demo-seq256.json", "current code"),
    "gutenberg Llama": ("quality-gutenberg-llama-seq128-256.json", "earlier run: comp with protect 0,1,-1, flap before its fix"),
    "gutenberg Qwen2": ("quality-gutenberg-qwen2-seq128-256.json", "earlier run: comp with protect 0,1,-1, flap before its fix"),
}
METHODS = ("slimgpt", "comp", "comp-slimgpt", "flap", "wanda-sp", "shortgpt", "taylor", "magnitude")
RATIOS = (0.2, 0.3, 0.5)


def ratios_of(path: Path) -> dict[tuple[str, float], float]:
    rows = json.loads(path.read_text())["rows"]
    key = next(k for k in rows[1] if k.startswith("ratio:"))  # the run's first protocol
    return {(r["method"], float(r["ratio"])): r[key] for r in rows[1:] if isinstance(r.get(key), (int, float))}


def main() -> None:
    out, lines = {}, []
    head = "| model | ratio | " + " | ".join(METHODS) + " | best |"
    lines += [head, "|" + "---|" * (len(METHODS) + 3)]
    for model, (name, _note) in RUNS.items():
        path = RESULTS / name
        if not path.is_file():
            continue
        got = ratios_of(path)
        for r in RATIOS:
            cells = {m: got.get((m, r)) for m in METHODS}
            known = {m: v for m, v in cells.items() if v is not None}
            best = min(known, key=known.get) if known else None
            out.setdefault(model, {})[str(r)] = {**cells, "best": best}
            lines.append(f"| {model} | {r} | " + " | ".join(
                "-" if v is None else (f"**{v:.3f}**" if m == best else f"{v:.3f}") for m, v in cells.items())
                + f" | {best} |")
    notes = "; ".join(f"{m}: `{n}` ({note})" for m, (n, note) in RUNS.items() if (RESULTS / n).is_file())
    table = "\n".join(lines) + f"\n\nPPL / dense PPL, first protocol of each run. Sources: {notes}. `python benchmarks/default_method.py`"
    print(table)
    write_results("default_method", {"table": out, "sources": {m: n for m, (n, _) in RUNS.items()}}, table)


if __name__ == "__main__":
    main()

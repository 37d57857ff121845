"""Helpers shared by the benchmarks: thread pinning, tables, JSON beside them."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def pin_threads(n: int) -> None:
    """Pin torch/BLAS threads: default threading on a loaded 2-core VM is 25x slower."""
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)


def markdown_table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = []
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key)
            cells.append(f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v)))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def write_results(name: str, payload: dict, table: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    payload = {**payload, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    return RESULTS / f"{name}.json"

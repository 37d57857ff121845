"""Text in, text out, per tokenizer kind: what each runtime's own tokenizer and text generation
make of the exported artifacts, against transformers.

For every kind of `tests/tokenizer_zoo.py` (trained here, saved as hubs save them) and, when
`../shared/data` is there, the real stories260K checkpoint: export GGUF f32 and ONNX f32 (a
GenAI package), then read their verify reports: llama.cpp's and ORT GenAI's tokenizer on the
fixed strings (exports/text_path.TEXTS), and their text completions of GEN_TEXTS.

    python benchmarks/text_path.py [--kinds spm-model,qwen2,...] [--formats gguf,onnx]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import markdown_table, pin_threads, write_results  # noqa: E402


def _row(name: str, model: Path, work: Path, fmts: list[str]) -> dict:
    from edgeprune.errors import EdgePruneError
    from exporters import export, formats
    from exporters.text_path import in_report
    from exporters.vocab import preflight

    row: dict = {"model": name}
    try:
        v = preflight(model)
        row["gguf vocab"] = f"{v.ggml_model}/{v.pre or '-'}"
    except EdgePruneError as e:
        row["gguf vocab"] = f"refused: {str(e)[:60]}"
    slug = name.split()[0]
    for fmt in fmts:
        try:
            res = export(model, fmt, work / f"{slug}-{formats.get(fmt).artifact_name('f32')}", dtype="f32")
            rep = json.loads(Path(res["verify_report"]).read_text())
        except EdgePruneError as e:
            row[f"{fmt} export"] = f"FAILED: {str(e)[:80]}"
            continue
        ran = [(who, tp) for who, tp in in_report(rep) if tp and "tokenizer" in tp]
        if not ran:
            row[f"{fmt} text path"] = "not run"
        for key, tp in ran:
            t, g = tp["tokenizer"], tp["generation"]
            row[f"{key} strings"] = f"{t['strings'] - t['failed']}/{t['strings']}"
            row[f"{key} completions"] = f"{sum(r['passed'] for r in g['runs'])}/{g['prompts']}"
            row[f"{key} verdict"] = "pass" if tp["passed"] else ("limitation" if tp.get("limitation") else "FAIL")
            if t["deviations"]:
                row[f"{key} verdict"] += f" ({len(t['deviations'])} clean-up deviations)"
    return row


def main() -> None:
    from tests.tokenizer_zoo import KINDS, make_model, make_tokenizer, training_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default=",".join(KINDS))
    from exporters import formats

    ap.add_argument("--formats", default=",".join(formats.names()), help="the formats exported (default: all)")
    a = ap.parse_args()
    bad = sorted(set(a.formats.split(",")) - set(formats.names()))
    if bad:
        ap.error(f"unknown format {', '.join(bad)}; choose from {', '.join(formats.names())}")
    pin_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work, text = Path(tmp), training_text()
        models = {k: make_model(make_tokenizer(k, work / k / "tok", text=text), work / k / "model")
                  for k in a.kinds.split(",")}
        stories = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "models" / "stories260K" / "hf"
        if stories.is_dir():
            models["stories260K (real)"] = stories
        for name, m in models.items():
            rows.append(_row(name, m, work, a.formats.split(",")))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))  # each runtime's columns, as the reports named it
    cols = [(k, k) for k in keys]
    table = markdown_table(rows, cols)
    print(table)
    write_results("text-path", {"rows": rows, "command": " ".join(sys.argv)}, table)


if __name__ == "__main__":
    main()

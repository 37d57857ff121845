"""Does feeding llama.cpp's quantizer our own importance matrix help? q4_k_m with and
without `--imatrix`, perplexity through llama.cpp on held-out text.

The importance matrix is collected on the calibration portion of the set; perplexity is
measured on the evaluation portion (disjoint). Each model is measured dense and pruned
(slimgpt 20%, the pruned widths being where a k-quant most often falls back).

    python benchmarks/imatrix.py    # a few minutes; writes results/imatrix.{md,json}
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, pin_threads, write_results  # noqa: E402

SEQ, WINDOWS, CALIB_WINDOWS = 256, 16, 32


def kquant_model() -> Path:
    """A model whose every width is a multiple of 256 (so q4_k_m really is Q4_K), trained
    like the demo model on the demo text; cached beside it (a few minutes the first time)."""
    import torch
    from transformers import LlamaConfig

    from edgeprune.io.checkpoint import save
    from edgeprune.io.demo import SEQ, cache_dir, demo_text, ensure_demo_model, train_llama
    from edgeprune.calibrate.data import tokenizer_for

    out = cache_dir() / "bench-kquant-256"
    if (out / "edgeprune.json").is_file():
        return out
    demo = ensure_demo_model()
    tok = tokenizer_for(demo)
    train = demo_text("train")
    ids = torch.tensor(tok(train, add_special_tokens=False)["input_ids"], dtype=torch.long)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    model = train_llama(cfg, ids, 500, batch=16, seq=SEQ, lr=3e-3, progress=True).eval()
    return save(model, out, tokenizer_from=demo, force=True)


def models() -> list[tuple[str, Path, str]]:
    from edgeprune.calibrate.data import default_data_dir
    from edgeprune.io.demo import ensure_demo_model

    out = [("trained, hidden 256 / FFN 768", kquant_model(), "demo"),
           ("demo (hidden 192)", Path(ensure_demo_model()), "demo")]
    data = default_data_dir()
    if data and (data / "models" / "stories260K" / "hf").is_dir():
        out.append(("stories260K (hidden 64)", data / "models" / "stories260K" / "hf", "tinystories"))
    return out


def measure(name: str, model_dir: Path, calib: str, root: Path, label: str) -> dict:
    from edgeprune.measure.artifact_eval import runtime_perplexity
    from edgeprune.calibrate.data import evaluation_set, tokenizer_for
    from edgeprune.calibrate.imatrix import from_calibration
    from exporters import export

    windows = evaluation_set(tokenizer_for(model_dir), calib, SEQ, WINDOWS)
    imat, desc = from_calibration(model_dir, calib, CALIB_WINDOWS, SEQ)
    row = {"model": name, "variant": label, "calib": calib, "imatrix_windows": desc["windows"]}
    for kind, kw in (("f32", dict(dtype="f32")), ("q4_k_m", dict(dtype="q4_k_m")),
                     ("q4_k_m+imatrix", dict(dtype="q4_k_m", imatrix=imat))):
        path = root / f"{label}-{len(name)}-{kind}.gguf"
        res = export(model_dir, "gguf", path, verify=False, **kw)
        row[f"ppl_{kind}"] = runtime_perplexity(path, windows)
        if kind != "f32":
            row[f"bpw_{kind}"] = res.get("bits_per_weight")
    row["q4_k_m_cost"] = row["ppl_q4_k_m"] / row["ppl_f32"] - 1
    row["imatrix_cost"] = row["ppl_q4_k_m+imatrix"] / row["ppl_f32"] - 1
    # a share of a cost below 0.5% of PPL is noise, not a figure
    row["cost_removed"] = 1 - row["imatrix_cost"] / row["q4_k_m_cost"] if row["q4_k_m_cost"] > 0.005 else None
    return row


def main() -> None:
    import edgeprune

    pin_threads(2)
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, model_dir, calib in models():
            rows.append(measure(name, model_dir, calib, root, "dense"))
            pruned = root / f"pruned-{len(rows)}"
            edgeprune.prune(model_dir, "slimgpt", ratio=0.2, calib=calib, out=pruned)
            rows.append(measure(name, pruned, calib, root, "slimgpt 20%"))
            print(rows[-2], rows[-1], flush=True)
    table = markdown_table(rows, [("model", "model"), ("variant", "variant"), ("ppl_f32", "PPL f32"),
                                  ("ppl_q4_k_m", "PPL q4_k_m"), ("ppl_q4_k_m+imatrix", "PPL q4_k_m + imatrix"),
                                  ("q4_k_m_cost", "q4_k_m cost"), ("imatrix_cost", "with imatrix"),
                                  ("cost_removed", "share of the cost removed"), ("bpw_q4_k_m", "bpw")])
    table += (f"\n\nPPL through llama.cpp on {WINDOWS} windows of {SEQ} of the evaluation portion; imatrix from "
              f"{CALIB_WINDOWS} windows of the calibration portion. {time.time() - t0:.0f} s. `python benchmarks/imatrix.py`")
    print(table)
    write_results("imatrix", {"rows": rows}, table)


if __name__ == "__main__":
    main()

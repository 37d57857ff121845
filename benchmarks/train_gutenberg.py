"""Re-create the benchmark's larger model: a Llama trained on ../shared/data/corpus/gutenberg.

The weights are not in git; this script makes them. Shape: hidden 384, 8 layers, 6 heads /
2 KV heads (head_dim 64), FFN 1024, byte-level BPE vocab 4096 (~15.7M parameters, 12.6M
non-embedding). On the GPU machine (bf16 autocast) the default 6000 steps x 64 x 256 tokens
take a few minutes; on a 2-core CPU use --steps 1500 --batch 16 for about 30 minutes.

    python benchmarks/train_gutenberg.py --corpus ../shared/data/corpus/gutenberg --out benchmarks/work/gutenberg-llama
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def corpus_text(root: Path, max_bytes: int) -> str:
    parts, size = [], 0
    for p in sorted(root.glob("*.txt")):
        t = p.read_text(encoding="utf-8", errors="replace")
        parts.append(t)
        size += len(t)
        if size >= max_bytes:
            break
    return "\n\n".join(parts)


def main() -> None:
    from transformers import LlamaConfig

    from edgeprune.checkpoint import save
    from edgeprune.demo import train_bpe, train_llama

    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="../shared/data/corpus/gutenberg")
    ap.add_argument("--max-bytes", type=int, default=25_000_000)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/work/gutenberg-llama")
    ap.add_argument("--shard-mb", type=int, default=14)
    a = ap.parse_args()
    t0 = time.time()
    text = corpus_text(Path(a.corpus), a.max_bytes)
    tok = train_bpe(text, 4096)
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    print(f"[train] {len(text):,} chars -> {ids.numel():,} tokens in {time.time() - t0:.0f}s", file=sys.stderr)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=384, intermediate_size=1024, num_hidden_layers=8,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg._name_or_path = "edgeprune-gutenberg-llama"
    model = train_llama(cfg, ids, a.steps, a.batch, a.seq, a.lr, a.device)
    tmp_tok = Path(a.out + ".tok")
    tok.save_pretrained(tmp_tok)
    save(model.to("cpu", torch.bfloat16), a.out, tokenizer_from=tmp_tok, force=True, max_shard_size=f"{a.shard_mb}MB")
    print(f"[train] done in {time.time() - t0:.0f}s -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

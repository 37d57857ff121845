"""Re-create the benchmarks' trained models on ../shared/data/corpus/gutenberg.

The weights are not in git; this script makes them. `--arch llama` (default): hidden 384,
8 layers, 6 heads / 2 KV heads (head_dim 64), FFN 1024, byte-level BPE vocab 4096 (~15.7M
parameters, 12.6M non-embedding). On the GPU machine (bf16 autocast) the default 6000 steps
x 64 x 256 tokens take a few minutes; on a 2-core CPU use --steps 1500 --batch 16 for about
30 minutes. `--arch qwen2 --small`: a Qwen2-style GQA model (q/k/v biases), hidden 128,
4 layers, 8 heads / 2 KV heads, FFN 352, vocab 2048, trained on the 2-core CPU in about 25 minutes (1 thread).
The context written to the config (max_position_embeddings) is the trained one, --seq.

    python benchmarks/train_gutenberg.py --corpus ../shared/data/corpus/gutenberg --out benchmarks/work/gutenberg-llama
    python benchmarks/train_gutenberg.py --arch qwen2 --small --steps 1200 --batch 16 --seq 256 --max-bytes 8000000 \
        --lr 3e-3 --device cpu --out benchmarks/work/gutenberg-qwen2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def corpus_text(root: Path, max_bytes: int, skip_books: int = 0) -> str:
    """The first books (C-locale order) up to max_bytes, after skipping `skip_books` of them.

    Skipping gives a held-out model a corpus disjoint from the development models' books."""
    parts, size = [], 0
    for p in sorted(root.glob("*.txt"))[skip_books:]:
        t = p.read_text(encoding="utf-8", errors="replace")
        parts.append(t)
        size += len(t)
        if size >= max_bytes:
            break
    return "\n\n".join(parts)


def main() -> None:
    from transformers import LlamaConfig, Qwen2Config

    from edgeprune.io.checkpoint import save
    from edgeprune.io.demo import train_bpe, train_llama

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
    ap.add_argument("--arch", choices=("llama", "qwen2"), default="llama")
    ap.add_argument("--small", action="store_true", help="the small shape (CPU-trainable)")
    ap.add_argument("--shape", help="HIDDEN,LAYERS,HEADS,KV_HEADS,FFN (head_dim = HIDDEN/HEADS); overrides --small")
    ap.add_argument("--vocab", type=int, help="BPE vocabulary size (default 2048 small, 4096 otherwise)")
    ap.add_argument("--skip-books", type=int, default=0, help="skip the first N books (a held-out corpus)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    text = corpus_text(Path(a.corpus), a.max_bytes, a.skip_books)
    # transformers' Qwen2 tokenizer class adds <|endoftext|> to a vocabulary that lacks it: trained in, it has its row
    tok = train_bpe(text, a.vocab or (2048 if a.small else 4096), ("<|endoftext|>",) if a.arch == "qwen2" else ())
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    print(f"[train] {len(text):,} chars -> {ids.numel():,} tokens in {time.time() - t0:.0f}s", file=sys.stderr)
    kv = 2
    shape = (dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=8, head_dim=16)
             if a.small else dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6, head_dim=64))
    if a.shape:
        h, n_layers, heads, kv, ffn = (int(v) for v in a.shape.split(","))
        shape = dict(hidden_size=h, intermediate_size=ffn, num_hidden_layers=n_layers, num_attention_heads=heads,
                     head_dim=h // heads)
    cfg_cls = LlamaConfig if a.arch == "llama" else Qwen2Config
    cfg = cfg_cls(vocab_size=len(tok), num_key_value_heads=kv, max_position_embeddings=a.seq, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **shape)
    cfg._name_or_path = f"edgeprune-gutenberg-{a.arch}"
    model = train_llama(cfg, ids, a.steps, a.batch, a.seq, a.lr, a.device)
    tmp_tok = Path(a.out + ".tok")
    tok.save_pretrained(tmp_tok)
    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32  # bf16-trained on the GPU
    save(model.to("cpu", dtype), a.out, tokenizer_from=tmp_tok, force=True, max_shard_size=f"{a.shard_mb}MB")
    print(f"[train] done in {time.time() - t0:.0f}s -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

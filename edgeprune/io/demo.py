"""The embedded demo model: a small Llama that edgeprune trains itself, needing no download.

Text every Python machine has: the standard library's own source. Modules are split by
position in the sorted file list into three disjoint portions: training (8 of every 10
files), calibration (the 9th) and evaluation (the 10th). A byte-level BPE tokenizer
(1024 tokens) and a 6-layer GQA Llama (hidden 192, FFN 512, 6 heads / 2 KV heads, ~2.6M
parameters) are trained with a fixed seed for a fixed number of steps (about three and a half
minutes on one free core) and cached in `$EDGEPRUNE_CACHE` (default `~/.cache/edgeprune`).
"""
from __future__ import annotations

import os
import sys
import sysconfig
import time
from pathlib import Path

DEMO_VERSION = "v1"
VOCAB = 1024
SEQ = 128
STEPS = int(os.environ.get("EDGEPRUNE_DEMO_STEPS", "400"))


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEPRUNE_CACHE", Path.home() / ".cache" / "edgeprune"))


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.stat().st_size < 400_000)


def demo_text(split: str, limit: int = 3_000_000) -> str:
    """Training ('train'), calibration ('calib') or evaluation ('eval') source text."""
    slot = {"train": range(0, 8), "calib": (8,), "eval": (9,)}[split]
    parts, size = [], 0
    for i, p in enumerate(_stdlib_files()):
        if i % 10 in slot:
            t = p.read_text(encoding="utf-8", errors="replace")
            parts.append(t)
            size += len(t)
            if size > limit:
                break
    return "\n\n".join(parts)


def demo_model_dir() -> Path:
    tag = f"demo-{DEMO_VERSION}-py{sys.version_info.major}{sys.version_info.minor}-s{STEPS}"
    return cache_dir() / tag


def train_bpe(text: str, vocab: int = VOCAB, extra_specials: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer (GPT-2 style pre-tokenization) with <s> and </s> (and
    `extra_specials`: a family's tokenizer class may add its own, e.g. Qwen2's <|endoftext|>,
    when it loads one without it, and that id then needs an embedding row)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>", *extra_specials],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text[i : i + 10000] for i in range(0, len(text), 10000)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", model_max_length=1 << 30)


def train_llama(cfg, ids, steps: int, batch: int, seq: int, lr: float, device: str = "cpu",
                progress: bool = True, seed: int = 0):
    """Seeded AdamW + one-cycle training of a causal LM (any config Auto* knows) on a token stream."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, ids.numel() - seq - 1, (batch,), generator=g)
        x = torch.stack([ids[s : s + seq] for s in starts.tolist()]).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if progress and step % max(1, steps // 8) == 0:
            print(f"[train] step {step}/{steps} loss {loss.item():.3f}", file=sys.stderr)
    return model.eval()


def ensure_demo_model(progress: bool = True) -> Path:
    """Return the cached demo model directory, training it first if needed."""
    out = demo_model_dir()
    if (out / "edgeprune.json").is_file():
        return out
    import torch
    from transformers import LlamaConfig

    from .checkpoint import save

    t0 = time.time()
    train = demo_text("train")
    tok = train_bpe(train)
    ids = torch.tensor(tok(train, add_special_tokens=False)["input_ids"], dtype=torch.long)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=192, intermediate_size=512, num_hidden_layers=6,
        num_attention_heads=6, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    cfg._name_or_path = "edgeprune-demo"
    model = train_llama(cfg, ids, STEPS, batch=16, seq=SEQ, lr=3e-3, progress=progress)
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_tok = out.parent / f".{out.name}.tok"
    tok.save_pretrained(tmp_tok)
    save(model, out, tokenizer_from=tmp_tok, force=True)
    import shutil

    shutil.rmtree(tmp_tok, ignore_errors=True)
    if progress:
        print(f"[demo] trained the demo model in {time.time() - t0:.0f}s -> {out}", file=sys.stderr)
    return out

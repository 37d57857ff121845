"""The tokenizer inside a GGUF: SentencePiece as `llama`, tokenizer.json BPE as `gpt2`, with
BOS/EOS and the chat template, so llama.cpp tokenizes exactly as the Hugging Face model."""
from __future__ import annotations

import json
from pathlib import Path

from edgeprune.errors import ExportError


def add_tokenizer(w, model_dir: Path, config) -> dict:  # long: one GGUF field per tokenizer fact
    """Embed the tokenizer: SentencePiece (`llama`) or BPE (`gpt2`), BOS/EOS, chat template."""
    info: dict = {}
    spm = model_dir / "tokenizer.model"
    tj = model_dir / "tokenizer.json"
    if spm.is_file():
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(spm))
        tokens, scores, types = [], [], []
        for i in range(sp.vocab_size()):
            tokens.append(sp.id_to_piece(i).encode("utf-8"))
            scores.append(sp.get_score(i))
            types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i) else 6 if sp.is_byte(i) else 1)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        if sp.unk_id() >= 0:
            w.add_unk_token_id(sp.unk_id())
        info["tokenizer"] = "llama (sentencepiece)"
    elif tj.is_file():
        d = json.loads(tj.read_text())
        if d["model"]["type"] != "BPE":
            raise ExportError(f"tokenizer.json model type {d['model']['type']} is not BPE; only SentencePiece and BPE tokenizers can be embedded")
        vocab = dict(d["model"]["vocab"])
        special = {t["content"]: t["id"] for t in d.get("added_tokens", [])}
        vocab.update(special)
        n = max(vocab.values()) + 1
        tokens = [b"[PAD%d]" % i for i in range(n)]
        types = [5] * n
        for tok, i in vocab.items():
            tokens[i] = tok.encode("utf-8")
            types[i] = 3 if tok in special else 1
        scores = None
        merges = [" ".join(m) if isinstance(m, list) else m for m in d["model"].get("merges", [])]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_merges(merges)
        info["tokenizer"] = "gpt2 (BPE)"
    else:
        w.add_tokenizer_model("none")
        info["tokenizer"] = "none"
        return info
    vocab_size = int(config.vocab_size)
    while len(tokens) < vocab_size:  # the embedding may be padded beyond the tokenizer
        tokens.append(b"[PAD%d]" % len(tokens))
        types.append(5)
        if scores is not None:
            scores.append(0.0)
    w.add_token_list(tokens[:vocab_size])
    if scores is not None:
        w.add_token_scores(scores[:vocab_size])
    w.add_token_types(types[:vocab_size])
    for key, fn in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id)):
        v = getattr(config, key, None)
        if isinstance(v, list):
            v = v[0]
        if v is not None:
            fn(int(v))
    tc = model_dir / "tokenizer_config.json"
    template = None
    if (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text()
    elif tc.is_file():
        template = json.loads(tc.read_text()).get("chat_template")
    if isinstance(template, str):
        w.add_chat_template(template)
        info["chat_template"] = True
    return info

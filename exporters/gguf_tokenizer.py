"""The tokenizer inside a GGUF, written the way llama.cpp reads it (`vocab.read_vocab` decides
the kind and pre-tokenizer): tokens, types, scores or merges, BOS/EOS/UNK/PAD and whether
they are added, `add_space_prefix`, and the chat template."""
from __future__ import annotations

from pathlib import Path

from .vocab import read_vocab


def add_tokenizer(w, model_dir: Path, config, pre: str | None = None) -> dict:
    """Embed the tokenizer of `model_dir`; returns what the verify report records about it."""
    vocab_size = int(config.vocab_size)
    v = read_vocab(Path(model_dir), vocab_size, pre_override=pre)
    if v is None:
        w.add_tokenizer_model("none")
        return {"tokenizer": "none"}
    w.add_tokenizer_model(v.ggml_model)
    w.add_tokenizer_pre(v.pre or "default")
    w.add_token_list(v.tokens)
    w.add_token_types(v.types)
    if v.scores is not None:
        w.add_token_scores(v.scores)
    if v.merges is not None:
        w.add_token_merges(v.merges)
    if v.add_space_prefix is not None:
        w.add_add_space_prefix(v.add_space_prefix)
    for value, fn in ((v.bos, w.add_bos_token_id), (v.eos, w.add_eos_token_id),
                      (v.unk, w.add_unk_token_id), (v.pad, w.add_pad_token_id)):
        if value is not None and 0 <= int(value) < vocab_size:
            fn(int(value))
    w.add_add_bos_token(bool(v.add_bos))
    w.add_add_eos_token(bool(v.add_eos))
    info = {"tokenizer": v.describe(), "tokenizer_notes": v.notes}
    if v.chat_template:
        w.add_chat_template(v.chat_template)
        info["chat_template"] = True
    return info

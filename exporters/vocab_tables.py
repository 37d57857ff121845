"""Token lists, types, scores and merges for llama.cpp, from transformers' backend JSON.

Separate from `vocab.py` (which decides the kind) because this is pure table work: one
function per llama.cpp vocabulary type.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.errors import ExportError


# GGUF token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class Vocab:
    """Everything a runtime needs to tokenize and detokenize as transformers does."""
    kind: str                      # "sentencepiece" (Metaspace BPE) or "byte-level"
    ggml_model: str                # tokenizer.ggml.model: llama | gpt2
    tokens: list[bytes]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None
    add_space_prefix: bool | None = None
    bos: int | None = None
    eos: int | None = None
    unk: int | None = None
    pad: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        pre = f", pre {self.pre}" if self.pre else ""
        sp = f", add_space_prefix {self.add_space_prefix}" if self.add_space_prefix is not None else ""
        return f"{self.ggml_model} ({self.kind}{pre}{sp}; add_bos {self.add_bos}, add_eos {self.add_eos})"


_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def _table(j: dict, vocab_size: int, model_dir: str) -> tuple[dict[int, str], dict[int, bool], list[str]]:
    """{id: text} over the model vocabulary and the added tokens, {id: special} for the added
    ones, and notes. Added tokens past the embedding (the model can never emit them) are left
    out and named; an ordinary token past it means the tokenizer is not the model's."""
    by_id = {int(i): t for t, i in j["model"]["vocab"].items()}
    if by_id and max(by_id) >= vocab_size:
        raise ExportError(f"{model_dir}: the tokenizer has ids up to {max(by_id)} but the embedding has {vocab_size} rows; "
                          "use the tokenizer the model was trained with")
    added, notes = {}, []
    for a in j.get("added_tokens", []):
        if int(a["id"]) >= vocab_size:
            notes.append(f"added token {a['content']!r} (id {a['id']}) is past the embedding ({vocab_size} rows): left out")
            continue
        added[int(a["id"])] = bool(a.get("special"))
        by_id[int(a["id"])] = a["content"]
    return by_id, added, notes


def _merges(j: dict) -> list[tuple[str, str]]:
    out = []
    for m in j["model"].get("merges", []):
        a, b = (m.split(" ", 1) if isinstance(m, str) else m)
        out.append((a, b))
    return out


def _spm_scores(model_dir: Path, by_id: dict[int, str]) -> list[float] | None:
    """SentencePiece's own piece scores, when `tokenizer.model` is there and is this vocabulary."""
    path = model_dir / "tokenizer.model"
    if not path.is_file():
        return None
    try:
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except Exception:
        return None
    n = sp.vocab_size()
    if any(by_id.get(i) != sp.id_to_piece(i) for i in range(n)):
        return None
    return [sp.get_score(i) for i in range(n)]


def sentencepiece_tables(tok, j: dict, model_dir: Path, vocab_size: int) -> Vocab:
    """llama.cpp's `llama` vocabulary of a Metaspace BPE: llama.cpp merges the adjacent pair whose
    union has the highest score, so each token's score is minus the rank of the merge that makes
    it (SentencePiece's own scores, which order the merges the same way, where they exist)."""
    by_id, added, notes = _table(j, vocab_size, str(model_dir))
    unk = j["model"].get("unk_token")
    spm = _spm_scores(model_dir, by_id)
    rank: dict[str, int] = {}
    for r, (a, b) in enumerate(_merges(j)):
        rank.setdefault(a + b, r)
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]".encode())
            types.append(UNUSED)
            scores.append(-1e9)
            continue
        tokens.append(text.encode("utf-8"))
        if i in added:
            types.append(CONTROL if added[i] else USER_DEFINED)
        elif text == unk:
            types.append(UNKNOWN)
        elif _BYTE_TOKEN.match(text):
            types.append(BYTE)
        else:
            types.append(NORMAL)
        if spm is not None and i < len(spm):
            scores.append(float(spm[i]))
        else:
            scores.append(-float(rank[text]) if text in rank else (0.0 if len(text) == 1 else -1e9))
    src = "tokenizer.model scores" if spm is not None else "merge ranks"
    return Vocab("sentencepiece", "llama", tokens, types, scores=scores, notes=[f"scores from {src}", *notes])


def byte_level_tables(tok, j: dict, vocab_size: int) -> Vocab:
    """llama.cpp's `gpt2` vocabulary: byte-level token texts, merges, added tokens as written."""
    by_id, added, notes = _table(j, vocab_size, "the model")
    tokens, types = [], []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]".encode())
            types.append(UNUSED)
            continue
        tokens.append(text.encode("utf-8"))
        types.append((CONTROL if added[i] else USER_DEFINED) if i in added else NORMAL)
    merges = [f"{a} {b}" for a, b in _merges(j)]
    return Vocab("byte-level", "gpt2", tokens, types, merges=merges, notes=notes)

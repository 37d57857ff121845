"""The tokenizer as transformers runs it, read once, and the one decision of how llama.cpp must
hold it (the way llama.cpp's converter decides the vocabulary kind and pre-tokenizer once).

Transformers' own (fast) tokenizer is the truth: what `AutoTokenizer.from_pretrained` builds
from `tokenizer.model` or `tokenizer.json`. Its backend JSON says which kind it is:
- BPE with a Metaspace `▁` (SentencePiece `tokenizer.model`, or SentencePiece-style BPE in
  `tokenizer.json` only) -> llama.cpp's `llama` vocabulary: scores that order merges as the
  BPE ranks do (SentencePiece's own scores where `tokenizer.model` is there), byte tokens
  typed as bytes, `add_space_prefix` from the prepend scheme;
- byte-level BPE -> `gpt2` with merges and the `tokenizer.ggml.pre` whose regexes and flags
  are those of the pre-tokenizer (`PRE`), found from the tokenizer, not from the model family.
BOS/EOS handling is measured on the tokenizer itself (what `tok(text)` adds), not guessed.
A pre-tokenizer llama.cpp has no name for is refused with the override flag named.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import ExportError

from .vocab_tables import Vocab, byte_level_tables, sentencepiece_tables

LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
TEKKEN = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
GPT4O = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
DSV3 = (r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+",
        r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_RE = "gpt2-bytelevel-regex"  # ByteLevel(use_regex=True): GPT-2's own split
DIGITS = r"\p{N}"  # Digits(individual_digits=True)


@dataclass(frozen=True)
class Pre:
    """One llama.cpp pre-tokenizer: its splits (in order) and the flags llama.cpp gives it."""
    name: str
    splits: tuple[str, ...]
    ignore_merges: bool = False
    clean_spaces: bool = True


# llama.cpp (src/llama-vocab.cpp) names, with the tokenizer.json splits they implement.
PRE = (
    Pre("llama-bpe", (LLAMA3,), ignore_merges=True), Pre("smaug-bpe", (LLAMA3,)),
    Pre("qwen2", (QWEN2,), clean_spaces=False), Pre("stablelm2", (QWEN2,)),
    Pre("gpt-2", (GPT2_RE,)),
    Pre("smollm", (DIGITS, GPT2_RE), clean_spaces=False), Pre("starcoder", (DIGITS, GPT2_RE)),
    Pre("tekken", (TEKKEN,), ignore_merges=True, clean_spaces=False),
    Pre("gpt-4o", (GPT4O,), clean_spaces=False),
    Pre("deepseek-v3", DSV3, clean_spaces=False),
)
PRE_NAMES = tuple(p.name for p in PRE)
# Names llama.cpp also accepts (same src/llama-vocab.cpp), for --gguf-pre; the text check verifies them.
OTHER_PRES = ("default", "llama3", "deepseek-llm", "deepseek-coder", "falcon", "mpt", "refact", "command-r", "olmo",
              "dbrx", "poro-chat", "chatglm-bpe", "viking", "jais", "codeshell", "bloom", "gpt3-finnish", "exaone",
              "chameleon", "minerva-7b", "megrez", "llama4", "seed-coder", "trillion", "bailingmoe", "qwen35")




def hf_tokenizer(model_dir: Path):
    """Transformers' tokenizer of `model_dir` (the reference every runtime must match), or None."""
    from edgeprune.calibrate.data import tokenizer_for

    try:
        return tokenizer_for(model_dir)
    except Exception:  # no tokenizer: the artifact carries none, verification feeds ids
        return None


def special_handling(tok) -> tuple[bool, bool, list[str]]:
    """(adds BOS, adds EOS, notes), measured: what `tok(text)` adds around `tok(text, add_special_tokens=False)`."""
    probe = "Hello world"
    with_sp = tok(probe)["input_ids"]
    plain = tok(probe, add_special_tokens=False)["input_ids"]
    notes: list[str] = []
    n = len(plain)
    for start in range(len(with_sp) - n + 1):
        if with_sp[start:start + n] == plain:
            head, tail = with_sp[:start], with_sp[start + n:]
            break
    else:
        return False, False, ["the tokenizer's special tokens change the text's own tokens"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    if head not in ([], [bos]) or tail not in ([], [eos]):
        notes.append(f"the tokenizer adds {head} before and {tail} after the text; a GGUF can only add one BOS / one EOS")
    return head == [bos] and bos is not None, tail == [eos] and eos is not None, notes


def _splits(pre: dict | None) -> tuple[tuple[str, ...], bool]:
    """The pre-tokenizer as (splits, byte-level?); ValueError for a step llama.cpp has no equal of."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else ([pre] if pre else [])
    splits, byte_level = [], False
    for s in steps:
        t = s.get("type")
        if t == "Split" and "Regex" in s.get("pattern", {}) and s.get("behavior") == "Isolated" and not s.get("invert"):
            splits.append(s["pattern"]["Regex"])
        elif t == "Digits":
            splits.append(DIGITS if s.get("individual_digits") else r"\p{N}+")
        elif t == "ByteLevel":
            byte_level = True
            if s.get("add_prefix_space"):
                raise ValueError("ByteLevel(add_prefix_space=True)")
            if s.get("use_regex", True):
                splits.append(GPT2_RE)
        else:
            raise ValueError(json.dumps(s)[:120])
    return tuple(splits), byte_level


def find_pre(pre_json: dict | None, ignore_merges: bool, clean_up: bool) -> str | None:
    """llama.cpp's name for this pre-tokenizer (same splits; then the same merge and clean-up flags), or None."""
    try:
        splits, _ = _splits(pre_json)
    except ValueError:
        return None
    same = [p for p in PRE if p.splits == splits]
    for want in ((ignore_merges, clean_up), (ignore_merges, None), (None, None)):
        for p in same:
            if (want[0] is None or p.ignore_merges == want[0]) and (want[1] is None or p.clean_spaces == want[1]):
                return p.name
    return None


def _metaspace(j: dict) -> bool | None:
    """add_space_prefix when the tokenizer is SentencePiece-style (a Metaspace `▁`), else None."""
    pre, norm = j.get("pre_tokenizer") or {}, j.get("normalizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for s in steps:
        if s.get("type") == "Metaspace":
            return s.get("prepend_scheme", "always" if s.get("add_prefix_space", True) else "never") != "never"
    nsteps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    if any(s.get("type") == "Replace" and s.get("content") == "▁" for s in nsteps):
        return any(s.get("type") == "Prepend" for s in nsteps)
    return None


def preflight(model_dir: Path, pre: str | None = None) -> Vocab | None:
    """Decide the GGUF vocabulary before any work: an unknown pre-tokenizer or a tokenizer
    larger than the embedding is refused here, not after pruning or writing."""
    from edgeprune.io.checkpoint import load_config
    from edgeprune.models import get_adapter

    return read_vocab(Path(model_dir), int(get_adapter(load_config(model_dir)).vocab_size), pre_override=pre)


def kind_of(tok) -> str:
    """"sentencepiece" (a Metaspace BPE) or "byte-level": the kind runtimes must reproduce."""
    j = json.loads(tok.backend_tokenizer.to_str()) if hasattr(tok, "backend_tokenizer") else {}
    return "sentencepiece" if _metaspace(j) is not None else "byte-level"


def read_vocab(model_dir: Path, vocab_size: int, pre_override: str | None = None, tok=None) -> Vocab | None:
    """The vocabulary for llama.cpp, decided from transformers' tokenizer of `model_dir` (None: no tokenizer)."""
    tok = tok if tok is not None else hf_tokenizer(Path(model_dir))
    if tok is None:
        return None
    if not hasattr(tok, "backend_tokenizer"):
        raise ExportError(f"{model_dir}: transformers loads a slow ({type(tok).__name__}) tokenizer only; "
                          "save a fast one (tokenizer.json) with tok.save_pretrained() and export again")
    j = json.loads(tok.backend_tokenizer.to_str())
    model = j["model"]
    if model.get("type") != "BPE":
        raise ExportError(f"{model_dir}: the tokenizer is a {model.get('type')} model; llama.cpp reads BPE and "
                          "SentencePiece-BPE vocabularies from edgeprune; export ONNX, or convert the tokenizer to BPE")
    add_bos, add_eos, notes = special_handling(tok)

    space = _metaspace(j)
    if space is not None:
        v = sentencepiece_tables(tok, j, Path(model_dir), vocab_size)
        v.add_space_prefix = space
    else:
        if pre_override and pre_override not in PRE_NAMES + OTHER_PRES:
            raise ExportError(f"--gguf-pre {pre_override} is not a llama.cpp pre-tokenizer name; use one of "
                              f"{', '.join(PRE_NAMES + OTHER_PRES)}")
        clean = tok.decode(tok("a .", add_special_tokens=False)["input_ids"]) == "a."  # transformers 5: never for BPE
        pre = pre_override or find_pre(j.get("pre_tokenizer"), bool(model.get("ignore_merges")), clean)
        if pre is None:
            raise ExportError(f"{model_dir}: the tokenizer's pre-tokenizer ({json.dumps(j.get('pre_tokenizer'))[:160]}) "
                              "is not one llama.cpp names, so GGUF text input would split differently; pass "
                              f"--gguf-pre NAME (one of {', '.join(PRE_NAMES)}) if you know its equal, or export ONNX")
        v = byte_level_tables(tok, j, vocab_size)
        v.pre = pre
        if pre_override:
            v.notes.append(f"pre-tokenizer {pre} given by --gguf-pre, not detected")
    v.add_bos, v.add_eos, v.notes = add_bos, add_eos, v.notes + notes
    v.bos, v.eos = tok.bos_token_id, tok.eos_token_id
    v.unk, v.pad = tok.unk_token_id, tok.pad_token_id
    template = getattr(tok, "chat_template", None)
    v.chat_template = template if isinstance(template, str) else None
    return v

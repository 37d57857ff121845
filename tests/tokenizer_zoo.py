"""Small tokenizers of every kind Hugging Face checkpoints ship, trained here and saved the way
hubs save them, so the GGUF and ONNX/GenAI text paths are tested on each kind.

Kinds (`KINDS`):
- ``spm-model``: a SentencePiece BPE ``tokenizer.model`` with byte fallback (Llama 1/2, Mistral v0.1);
- ``spm-json``: the same converted by transformers, ``tokenizer.json`` only (no ``tokenizer.model``);
- ``metaspace-json``: BPE trained by `tokenizers` with a Metaspace pre-tokenizer and byte fallback,
  ``tokenizer.json`` only (TinyLlama-style repos re-trained with `tokenizers`);
- byte-level BPE with each pre-tokenizer: ``gpt2``, ``llama3``, ``qwen2``, ``smollm`` (digits
  split one by one), ``tekken`` (Mistral Nemo), ``deepseek-v3``.

The training text is the Python standard library's source (every machine has it) plus a few
lines of accented, CJK and emoji text, so byte fallback and multi-byte characters are exercised.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

EXTRA = ("Café déjà vu, naïve façade; Ünïcödé. Köln ist schön. 東京は日本の首都です。北京欢迎你。"
         " 🙂🚀 emoji 👍🏽. Ça va? ¿Qué tal? Þórr. 12345 + 67890 = 80235; 3.14159.\n") * 20
REGEX = {
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "tekken": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
DEEPSEEK_V3 = [r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+",
               r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"]
KINDS = ("spm-model", "spm-json", "metaspace-json", "gpt2", "llama3", "qwen2", "smollm", "tekken", "deepseek-v3")
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def training_text(limit: int = 400_000) -> str:
    from edgeprune.io.demo import demo_text

    return demo_text("train", limit)[:limit] + EXTRA


def _config(dst: Path, cls: str, bos: str, eos: str, unk: str | None, add_bos: bool, extra: dict | None = None) -> None:
    """tokenizer_config.json as hub repos have it (GPT-2 and Llama 3 ship clean_up_tokenization_spaces=true)."""
    cfg = {"tokenizer_class": cls, "bos_token": bos, "eos_token": eos, "add_bos_token": add_bos,
           "add_eos_token": False, "model_max_length": 4096, "chat_template": TEMPLATE,
           "clean_up_tokenization_spaces": False, **(extra or {})}
    if unk:
        cfg["unk_token"] = unk
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    special = {"bos_token": bos, "eos_token": eos, **({"unk_token": unk} if unk else {})}
    (dst / "special_tokens_map.json").write_text(json.dumps(special, indent=1))


def _spm_model(dst: Path, text: str, vocab: int) -> None:
    import sentencepiece as spm

    src = dst / "_train.txt"
    src.write_text(text)
    spm.SentencePieceTrainer.train(
        input=str(src), model_prefix=str(dst / "tokenizer"), vocab_size=vocab, model_type="bpe",
        byte_fallback=True, character_coverage=0.9995, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", num_threads=1, minloglevel=2, max_sentence_length=100_000)
    src.unlink()
    (dst / "tokenizer.vocab").unlink()
    _config(dst, "LlamaTokenizer", "<s>", "</s>", "<unk>", True, {"legacy": False})


def _spm_json(dst: Path, text: str, vocab: int) -> None:
    from transformers import AutoTokenizer

    tmp = dst / "_spm"
    tmp.mkdir()
    _spm_model(tmp, text, vocab)
    AutoTokenizer.from_pretrained(str(tmp)).save_pretrained(str(dst))
    for leftover in ("tokenizer.model",):
        (dst / leftover).unlink(missing_ok=True)
    shutil.rmtree(tmp)
    _config(dst, "LlamaTokenizer", "<s>", "</s>", "<unk>", True, {"legacy": False})


def _metaspace_json(dst: Path, text: str, vocab: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab - 256, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=200, show_progress=False)
    tok.train_from_iterator([text[i:i + 4000] for i in range(0, len(text), 4000)], trainer)
    j = json.loads(tok.to_str())  # byte tokens become ordinary entries right after the specials
    old = sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1])
    names = [t for t, _ in old[:3]] + [f"<0x{i:02X}>" for i in range(256)] + [t for t, _ in old[3:]]
    j["model"]["vocab"] = {t: i for i, t in enumerate(names)}
    j["added_tokens"] = [dict(a, id=j["model"]["vocab"][a["content"]]) for a in j["added_tokens"]]
    tok = Tokenizer.from_str(json.dumps(j))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(str(dst / "tokenizer.json"))
    _config(dst, "PreTrainedTokenizerFast", "<s>", "</s>", "<unk>", True)


def _byte_level(dst: Path, text: str, vocab: int, kind: str) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind in ("gpt2", "smollm"))
    if kind == "gpt2":
        pre = bl
    elif kind == "smollm":
        pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bl])
    elif kind == "deepseek-v3":
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), "isolated") for r in DEEPSEEK_V3] + [bl])
    else:
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(REGEX[kind]), "isolated"), bl])
    tok = Tokenizer(models.BPE(ignore_merges=kind in ("llama3", "tekken")))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    bos, eos = {"llama3": ("<|begin_of_text|>", "<|end_of_text|>"), "qwen2": ("<|im_start|>", "<|endoftext|>"),
                "tekken": ("<s>", "</s>")}.get(kind, ("<|endoftext|>", "<|endoftext|>"))
    specials = list(dict.fromkeys([bos, eos]))
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text[i:i + 4000] for i in range(0, len(text), 4000)], trainer)
    add_bos = kind in ("llama3", "tekken", "deepseek-v3")
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(dst / "tokenizer.json"))
    _config(dst, "PreTrainedTokenizerFast", bos, eos, None, add_bos,
            {"clean_up_tokenization_spaces": kind in ("gpt2", "llama3")})


def make_tokenizer(kind: str, dst: Path, vocab: int = 700, text: str | None = None) -> Path:
    """Train a tokenizer of `kind` into `dst` (created), saved as a hub repo holds it."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    text = text if text is not None else training_text()
    if kind == "spm-model":
        _spm_model(dst, text, vocab)
    elif kind == "spm-json":
        _spm_json(dst, text, vocab)
    elif kind == "metaspace-json":
        _metaspace_json(dst, text, vocab)
    elif kind in ("gpt2", "llama3", "qwen2", "smollm", "tekken", "deepseek-v3"):
        _byte_level(dst, text, vocab, kind)
    else:
        raise ValueError(f"unknown tokenizer kind {kind}; one of {', '.join(KINDS)}")
    return dst


def make_model(tok_dir: Path, dst: Path, layers: int = 2, seed: int = 0) -> Path:
    """A random tiny Llama whose embedding matches the tokenizer, saved with it."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    from edgeprune.io.checkpoint import save

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    vocab = len(tok)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=512, tie_word_embeddings=False,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger logits than the default init, so greedy choices are not near-ties
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(8.0)
    return save(model, Path(dst), tokenizer_from=tok_dir)


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1])
    for k in (sys.argv[2:] or KINDS):
        d = make_tokenizer(k, out / k / "tok")
        make_model(d, out / k / "model")
        print(k, "->", out / k / "model")

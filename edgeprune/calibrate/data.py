"""Text sources -> seeded token windows for calibration and evaluation.

A source is a local file (.txt, .jsonl/.json, optionally .gz), a directory of them, or a
named set looked up in the data directory (`--data-dir`, `$EDGEPRUNE_DATA`, or
`../shared/data` when present) and, failing that, through `datasets` when installed and
online. Every named set defines DISJOINT calibration and evaluation portions, so
calibration never sees evaluation text.
"""
from __future__ import annotations

import gzip
import json
import os
import warnings
from pathlib import Path

import torch

from ..errors import DataError
from .named_sets import NAMED_SETS, Split, from_datasets as _from_datasets

TEXT_FIELDS = ("text", "content", "story", "output")


class NoTokenizerError(DataError):
    """The model directory holds no tokenizer files at all (an exporter then feeds token ids)."""


def tokenizer_for(model_dir) -> object:
    """The model directory's own tokenizer, without a length cap (we window long texts)."""
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
    if Path(model_dir).is_dir() and not any((Path(model_dir) / n).is_file() for n in names):
        raise NoTokenizerError(f"{model_dir} has no tokenizer (tokenizer.json / tokenizer.model); copy the base "
                               "model's tokenizer files into it")
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:  # a truncated tokenizer.json, a tokenizer_config.json naming no usable files...
        if not Path(model_dir).is_dir():
            raise
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise DataError(f"the tokenizer in {model_dir} could not be loaded ({type(e).__name__}: {first}); copy the "
                        "base model's tokenizer files into it") from None
    tok.model_max_length = 1 << 30
    return tok


def default_data_dir() -> Path | None:
    env = os.environ.get("EDGEPRUNE_DATA")
    if env:
        return Path(env)
    for cand in (Path.cwd() / "../shared/data", Path(__file__).resolve().parents[2] / "../shared/data"):
        if cand.is_dir():
            return cand.resolve()
    return None


def _read(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    except (gzip.BadGzipFile, EOFError) as e:  # EOFError: a gzip stream cut short
        raise DataError(f"{path} ends in .gz but is not a complete gzip file ({type(e).__name__}); "
                        "re-compress it with gzip, or drop the .gz suffix if it is plain text") from None


def _records(path: Path) -> list:
    raw = _read(path)
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in raw.splitlines() if line.strip()]
    data = json.loads(raw)
    return data if isinstance(data, list) else [data]


def record_text(rec) -> str:
    """The text of one JSON record: a text field, or an Alpaca instruction/input/output."""
    if isinstance(rec, str):
        return rec
    if not isinstance(rec, dict):
        raise DataError(f"a JSON record is {type(rec).__name__} {str(rec)[:40]}, not a string or an object with a text "
                        f"field ({', '.join(TEXT_FIELDS)}); fix the file or pass a .txt")
    if "instruction" in rec:
        parts = [rec.get("instruction", ""), rec.get("input", ""), rec.get("output", "")]
        return "\n".join(p for p in parts if p)
    for key in TEXT_FIELDS:
        if isinstance(rec.get(key), str):
            return rec[key]
    raise DataError(f"JSON record has no text field (looked for {', '.join(TEXT_FIELDS)}); add one")


def read_text_file(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith((".jsonl", ".json")):
        try:
            return "\n\n".join(record_text(r) for r in _records(path))
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix the file or pass a .txt") from None
    text = _read(path)
    _refuse_binary(path, text)
    return text


def _refuse_binary(path: Path, text: str) -> None:
    """An executable or archive read as UTF-8 is mostly NUL and replacement characters:
    calibrating on it would silently give a meaningless plan."""
    head = text[:65536]
    bad = head.count("\x00") + head.count("\ufffd")
    if head and bad / len(head) > 0.01:
        raise DataError(f"{path} looks like a binary file ({bad} NUL/undecodable characters in its first "
                        f"{len(head)}); pass a text file (.txt, .json, .jsonl)")


def read_path(path: Path) -> str:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.split(".")[-1] in ("txt", "json", "jsonl", "gz"))
        if not files:
            raise DataError(f"directory {path} holds no .txt/.json/.jsonl(.gz) file")
        return "\n\n".join(read_text_file(p) for p in files)
    return read_text_file(path)


def _fraction(text: str, lo: float, hi: float) -> str:
    """The [lo, hi) fraction of `text`, cut at paragraph boundaries (whole stories/docs)."""
    paras = text.split("\n\n")
    a, b = int(len(paras) * lo), int(len(paras) * hi)
    return "\n\n".join(paras[a:b])


def is_named(source: str | Path | None) -> bool:
    """Whether `source` names a data set rather than a file: `load_text` reads names first, so a
    folder that happens to be called `demo` or `c4` is never what `--calib demo` reads (and a
    file called `demo_notes.txt` is a file, not the demo text)."""
    return source is not None and (str(source) in NAMED_SETS or str(source) == "demo")


def calib_input(source: str | Path | None) -> str | Path | None:
    """`source` as an input path for the --out overlap check, or None for a named set."""
    return None if is_named(source) else source


def named_path(source: str, data_dir: str | Path | None = None, split: Split = "calib") -> Path | None:
    """The local file or folder a named set reads for `split`, or None (fetched, demo, absent)."""
    if source not in NAMED_SETS:
        return None
    base = Path(data_dir) if data_dir else default_data_dir()
    path = base / NAMED_SETS[source].files[split] if base else None
    return path if path is not None and path.exists() else None


def local_path(source: str | Path | None, data_dir: str | Path | None = None) -> Path | None:
    """The file or folder the calibration text `source` reads here (a path, or a named set's
    file), or None (none given, fetched, the demo text): what a run's resume fingerprint hashes."""
    if source is None:
        return None
    if Path(str(source)).exists():
        return Path(str(source))
    return named_path(str(source), data_dir)


def load_text(source: str | Path, split: Split, data_dir: str | Path | None = None) -> str:
    """Return the text of `source` for `split` ('calib' or 'eval')."""
    source = str(source)
    if source in NAMED_SETS:
        ns = NAMED_SETS[source]
        base = Path(data_dir) if data_dir else default_data_dir()
        path = named_path(source, data_dir, split)
        if path is None:
            if ns.hf is None:
                where = f"under {base}" if base else "(no data directory: set --data-dir or EDGEPRUNE_DATA)"
                raise DataError(f"named dataset '{source}' was not found {where}; pass --data-dir or a file path")
            return _from_datasets(source, ns, split)
        text = read_path(path)
        if ns.portion:
            text = _fraction(text, *ns.portion[split])
        return text
    if is_named(source):  # the demo text (the other names were read above)
        from ..io.demo import demo_text

        return demo_text(split)
    path = Path(source)
    if not path.exists():
        raise DataError(
            f"'{source}' is neither a file nor a known dataset; known: {', '.join(sorted(NAMED_SETS))}, demo"
        )
    text = read_path(path)
    if not text.strip():
        raise DataError(f"{path} is empty; pass a file with text")
    return text


def tokenize(tokenizer, text: str, add_bos: bool = True) -> torch.Tensor:
    """Encode a long text once, as one stream (the usual perplexity protocol)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None:
        ids = [bos] + list(ids)
    return torch.tensor(ids, dtype=torch.long)


def eval_windows(tokens: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows covering the stream; every window unless capped."""
    n = tokens.numel() // seq_len
    if n == 0:
        raise DataError(f"evaluation text has {tokens.numel()} tokens, shorter than one window of {seq_len}; use a longer text or a smaller --seq-len")
    if max_windows:
        n = min(n, max_windows)
    return tokens[: n * seq_len].view(n, seq_len)


def calibration_windows(tokens: torch.Tensor, n_samples: int, seq_len: int, seed: int = 0,
                        source: str = "calibration text") -> torch.Tensor:
    """`n_samples` windows at seeded random offsets (reproducible for a given seed).

    Offsets are drawn independently, so windows may overlap (as GPTQ/SparseGPT draw theirs),
    but never more windows than the text holds end to end: past that the extra windows only
    repeat tokens already seen, and a user asking for 10^8 of them means more data, not
    copies (and would fill memory while they are stacked)."""
    n = tokens.numel()
    if n < seq_len:
        raise DataError(
            f"calibration text has {n} tokens, shorter than one window of {seq_len}; "
            "use a longer text or a smaller --seq-len"
        )
    if n_samples > n // seq_len:
        raise DataError(f"--nsamples {n_samples}: the calibration portion of {source} has {n} tokens, "
                        f"{n // seq_len} windows of --seq-len {seq_len}; use --nsamples <= {n // seq_len}, "
                        "a smaller --seq-len, or a longer text")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n - seq_len + 1, (n_samples,), generator=g)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])


def warn_if_overlap(calib: str, evaluation: str) -> None:
    if str(calib) == str(evaluation) and not is_named(calib):
        warnings.warn(
            f"'{calib}' is used for both calibration and evaluation: the perplexity is optimistic; "
            "use a named set (disjoint portions) or separate files", stacklevel=2,
        )


def calibration_set(tokenizer, source: str, n_samples: int, seq_len: int, seed: int, data_dir=None) -> torch.Tensor:
    return calibration_windows(tokenize(tokenizer, load_text(source, "calib", data_dir)), n_samples, seq_len, seed,
                               str(source))


def evaluation_set(tokenizer, source: str, seq_len: int, max_windows: int | None = None, data_dir=None) -> torch.Tensor:
    return eval_windows(tokenize(tokenizer, load_text(source, "eval", data_dir)), seq_len, max_windows)


"""The named data sets `--calib` / `--eval` accept (wikitext2, ptb, c4, ...): where each
lives in the data directory and how its calibration and evaluation portions are kept
disjoint, with the `datasets` fallback for a set that is not on disk. `data.py` reads them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import DataError

Split = Literal["calib", "eval"]


@dataclass(frozen=True)
class NamedSet:
    """A named dataset: how to read its calibration and evaluation portions."""

    files: dict[str, str]  # split -> path relative to the data dir
    portion: dict[str, tuple[float, float]] | None = None  # split -> fraction when one file serves both
    hf: tuple[str, str | None, dict[str, str]] | None = None  # datasets fallback: name, config, split map
    note: str = ""


NAMED_SETS: dict[str, NamedSet] = {
    "wikitext2": NamedSet(
        {"calib": "eval/wikitext-2-raw/wiki.valid.raw", "eval": "eval/wikitext-2-raw/wiki.test.raw"},
        hf=("wikitext", "wikitext-2-raw-v1", {"calib": "validation", "eval": "test"}),
        note="calibrates on valid, evaluates on test",
    ),
    "ptb": NamedSet(
        {"calib": "eval/ptb/ptb.valid.txt", "eval": "eval/ptb/ptb.test.txt"},
        hf=("ptb_text_only", "penn_treebank", {"calib": "validation", "eval": "test"}),
        note="calibrates on valid, evaluates on test",
    ),
    "c4": NamedSet(
        {"calib": "eval/c4/c4-train.00000-of-01024.first1000.jsonl.gz", "eval": "eval/c4/c4-train.00000-of-01024.first1000.jsonl.gz"},
        portion={"calib": (0.0, 0.9), "eval": (0.9, 1.0)},
        note="first 90% of the shard's documents calibrate, the last 10% evaluate",
    ),
    "tinystories": NamedSet(
        {"calib": "eval/tinystories/tinystories_validation_prefix.txt", "eval": "eval/tinystories/tinystories_validation_prefix.txt"},
        portion={"calib": (0.0, 0.1), "eval": (0.1, 1.0)},
        note="first 10% of the validation stories calibrate, the rest evaluate",
    ),
    "alpaca": NamedSet(
        {"calib": "eval/alpaca/alpaca_small_2000.json", "eval": "eval/alpaca/alpaca_small_2000.json"},
        portion={"calib": (0.0, 0.5), "eval": (0.5, 1.0)},
        note="first half of the records calibrate, the second half evaluate",
    ),
    "shakespeare": NamedSet(
        {"calib": "eval/tinyshakespeare/input.txt", "eval": "eval/tinyshakespeare/input.txt"},
        portion={"calib": (0.0, 0.1), "eval": (0.1, 1.0)},
        note="first 10% calibrates, the rest evaluates",
    ),
}


def from_datasets(name: str, ns: NamedSet, split: Split) -> str:
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise DataError(
            f"dataset '{name}' was not found in the data directory and the 'datasets' package is not "
            "installed; pass --data-dir pointing at a folder holding it, or pip install datasets"
        ) from None
    from datasets import load_dataset

    hf_name, hf_config, splits = ns.hf  # type: ignore[misc]
    try:
        ds = load_dataset(hf_name, hf_config, split=splits[split])
    except Exception as e:  # offline, renamed dataset...
        raise DataError(f"could not fetch '{name}' through datasets ({type(e).__name__}); pass --data-dir with a local copy") from None
    col = "text" if "text" in ds.column_names else ds.column_names[0]
    return "\n\n".join(ds[col])

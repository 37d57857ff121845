"""ONNX Runtime GenAI packaging: `genai_config.json` and tokenizer files beside `model.onnx`.

An ONNX folder written by edgeprune is an onnxruntime-genai model folder: `og.Model(dir)`
loads it, `og.Generator` drives it. The graph already follows GenAI's names (inputs
`input_ids`, `attention_mask`, `position_ids`, `past_key_values.%d.key|value`; outputs
`logits`, `present.%d.key|value`). The config states the model-wide head counts;
onnxruntime-genai reads each layer's KV-head count from that layer's past-KV input shape
(microsoft/onnxruntime-genai PR #2214, first released in 0.18.0), which is what lets a model
whose layers keep different KV-head counts run there. Its own model builder cannot write
such a graph, so this folder is the only route to GenAI for a non-uniformly pruned model.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgeprune.defaults import model_context
from edgeprune.errors import ExportError

from .names import ONNX_MODEL
from .runtimes import decode_step

CONFIG = "genai_config.json"
MIN_VERSION = (0, 18, 0)  # the per-layer KV-cache fix (PR #2214, June 2026)
WHY_MIN_VERSION = ("onnxruntime-genai >= 0.18.0 is needed: earlier releases size every layer's KV cache from "
                   "the model-wide head count (fixed by microsoft/onnxruntime-genai PR #2214), so a model whose "
                   "layers keep different KV-head counts fails there; `pip install -U onnxruntime-genai`")


def _token_id(cfg, name: str, tokenizer) -> int | None:
    """An id from the model config, else from the tokenizer (eos may be a list: the first)."""
    v = getattr(cfg, name, None)
    if v is None and tokenizer is not None:
        v = getattr(tokenizer, name, None)
    if isinstance(v, (list, tuple)):
        v = v[0] if v else None
    return int(v) if v is not None else None


def genai_config(view, tokenizer=None, context_length: int | None = None) -> dict:
    """The `genai_config.json` for an edgeprune ONNX graph of `view` (an exporters WeightsView)."""
    ad, cfg = view.adapter, view.config
    ctx = int(context_length or model_context(cfg))
    eos = _token_id(cfg, "eos_token_id", tokenizer)
    pad = _token_id(cfg, "pad_token_id", tokenizer)
    s0 = view.shapes[0]
    model = {
        "type": ad.genai_type,
        "bos_token_id": _token_id(cfg, "bos_token_id", tokenizer),
        "eos_token_id": eos,
        "pad_token_id": pad if pad is not None else (eos if eos is not None else 0),
        "context_length": ctx,
        "vocab_size": int(ad.vocab_size),
        "decoder": {
            "filename": ONNX_MODEL,
            "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
            "head_size": int(ad.head_dim),
            "hidden_size": int(ad.hidden_size),
            # model-wide figures; each layer's KV-head count is read from its past-KV input
            "num_attention_heads": int(max(s.num_heads for s in view.shapes) or s0.num_heads),
            "num_key_value_heads": int(max(s.num_kv_heads for s in view.shapes) or s0.num_kv_heads),
            "num_hidden_layers": view.num_layers,
            "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                       "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
            "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                        "present_value_names": "present.%d.value"},
        },
    }
    search = {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": ctx, "min_length": 0,
              "top_k": 1, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0,
              "no_repeat_ngram_size": 0, "diversity_penalty": 0.0, "early_stopping": True,
              # the graph concatenates past and new keys itself, so GenAI must not share one buffer
              "past_present_share_buffer": False}
    # onnxruntime-genai rejects null ids: an id the model does not define is left out
    model = {k: v for k, v in model.items() if v is not None}
    return {"model": model, "search": search}


def write_package(out_dir: Path, view, tokenizer=None) -> list[str]:
    """Write `genai_config.json` and the tokenizer files (tokenizer.json, tokenizer_config.json,
    special tokens) into `out_dir`; returns the files written."""
    out_dir = Path(out_dir)
    (out_dir / CONFIG).write_text(json.dumps(genai_config(view, tokenizer), indent=1))
    written = [CONFIG]
    if tokenizer is not None:
        before = set(p.name for p in out_dir.iterdir())
        tokenizer.save_pretrained(str(out_dir))
        _declare_specials(out_dir, tokenizer)
        written += sorted(set(p.name for p in out_dir.iterdir()) - before)
    return written


def _declare_specials(out_dir: Path, tokenizer) -> None:
    """GenAI's tokenizer adds BOS/EOS only as tokenizer_config.json declares them, and
    transformers 5 no longer writes those keys: write what `tokenizer(text)` measurably adds."""
    from .vocab import special_handling

    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    add_bos, add_eos, _ = special_handling(tokenizer)
    cfg.update(add_bos_token=add_bos, add_eos_token=add_eos,
               clean_up_tokenization_spaces=bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)))
    path.write_text(json.dumps(cfg, indent=1))


def available() -> str | None:
    """onnxruntime-genai's version if it is installed and new enough, else None."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None
    return og.__version__ if version_ok(og.__version__) else None


def version_ok(version: str) -> bool:
    parts = []
    for p in version.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts) >= MIN_VERSION


class GenAISession:
    """Greedy generation through `og.Model` / `og.Generator`, the loop an ORT GenAI user runs."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        import onnxruntime_genai as og

        from .runtime_imports import quiet_runtime_logs

        quiet_runtime_logs("onnxruntime_genai")

        folder = self.folder = Path(folder)
        if not (folder / CONFIG).is_file():
            raise ExportError(f"{folder} has no {CONFIG}; re-export it with `edgeprune export --format onnx`")
        if not version_ok(og.__version__):
            raise ExportError(f"onnxruntime-genai {og.__version__} found; {WHY_MIN_VERSION}")
        self.og = og
        try:
            config = og.Config(str(folder))
            if threads:
                config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                    "intra_op_num_threads": int(threads), "inter_op_num_threads": 1}}}}))
            self.model = og.Model(config)
        except Exception as e:
            raise ExportError(f"onnxruntime-genai {og.__version__} could not load {folder} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None

    @property
    def runtime(self) -> str:
        return f"onnxruntime-genai {self.og.__version__} (og.Generator loop)"

    def _generator(self, max_length: int):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, do_sample=False, top_k=1)
        return self.og.Generator(self.model, params)

    def generate(self, ids, n: int, stop_at_eos: bool = False) -> list[int]:
        """`n` greedy tokens after `ids` (EOS does not stop it early unless `stop_at_eos`, as a
        text app stops: then the EOS itself is not returned)."""
        gen = self._generator(len(ids) + n)
        gen.append_tokens(np.asarray(ids, dtype=np.int32)[None])
        out = []
        while len(out) < n and not gen.is_done():
            gen.generate_next_token()
            tok = int(gen.get_next_tokens()[0])
            if stop_at_eos and tok in self.eos_ids:
                break
            out.append(tok)
        return out

    @property
    def eos_ids(self) -> set[int]:
        cfg = json.loads((self.folder / CONFIG).read_text())["model"]
        eos = cfg.get("eos_token_id")
        return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    def timed_run(self, ids: np.ndarray, new_tokens: int) -> tuple[float, float]:
        """(prefill seconds, decode seconds per token) through the generator loop."""
        gen = self._generator(len(ids) + new_tokens + 1)
        t0 = time.perf_counter()
        gen.append_tokens(np.asarray(ids, dtype=np.int32)[None])
        t1 = time.perf_counter()
        steps: list[float] = []
        while len(steps) < new_tokens and not gen.is_done():
            s = time.perf_counter()
            gen.generate_next_token()
            steps.append(time.perf_counter() - s)
        return t1 - t0, decode_step(steps)

"""Thin runtime sessions for ONNX Runtime and llama.cpp (numpy only, no torch).

Used by verification, profiling and `edgeprune bench` on the device. Both expose
`logits(ids) -> [t, vocab]` for one sequence and `generate(ids, n) -> token ids` (greedy,
through the runtime's KV cache).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from edgeprune.errors import ExportError

from .names import ONNX_MODEL
from .runtime_imports import require, verbose

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def decode_step(steps: list[float]) -> float:
    """Seconds per decoded token of one repetition: the median of its single-token steps.

    Why the median, not the mean: on a shared host a step that the scheduler pre-empts (another
    process, a timer tick) costs several steps' time, and at well under a millisecond a token
    one such step in 32 moves the mean by tens of percent. The median is the runtime's own
    steady-state cost; on a quiet device the two agree. Every artifact in a comparison (dense
    and pruned, every probe of the latency model) is measured the same way.
    """
    if not steps:
        return float("nan")
    s = sorted(steps)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


class OnnxSession:
    """ONNX Runtime session over edgeprune's decoder-with-past contract."""

    def __init__(self, path: str | Path, threads: int | None = None, low_memory: bool = False):
        ort = require("onnxruntime", "onnx", "running ONNX artifacts")
        path = Path(path)
        if path.is_dir():
            path = path / ONNX_MODEL
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if low_memory:  # verification: no pre-packed second copy of every weight, no arena
            so.add_session_config_entry("session.disable_prepacking", "1")
            so.enable_cpu_mem_arena = False
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        try:
            self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ExportError(f"{path} is not a loadable ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        self.past_inputs = [i for i in self.sess.get_inputs() if i.name.startswith("past_key_values.")]
        if not self.past_inputs:
            raise ExportError(f"{path} has no past_key_values inputs; it was not exported by edgeprune")
        self.dtype = _NP.get(self.past_inputs[0].type, np.float32)

    def _feed(self, ids: np.ndarray, past: list[np.ndarray] | None, past_len: int) -> dict:
        b, t = ids.shape
        feed = {"input_ids": ids.astype(np.int64),
                "attention_mask": np.ones((b, past_len + t), np.int64),
                "position_ids": np.arange(past_len, past_len + t, dtype=np.int64)[None].repeat(b, 0)}
        for j, inp in enumerate(self.past_inputs):
            feed[inp.name] = past[j] if past is not None else np.zeros((b, inp.shape[1], 0, inp.shape[3]), self.dtype)
        return feed

    def forward(self, ids: np.ndarray, past=None, past_len: int = 0):
        out = self.sess.run(None, self._feed(ids, past, past_len))
        return out[0], out[1:]

    def logits(self, ids: np.ndarray) -> np.ndarray:
        return self.forward(np.asarray(ids)[None])[0][0].astype(np.float32)

    @property
    def runtime(self) -> str:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__} (InferenceSession, past KV fed back)"

    def timed_run(self, ids: np.ndarray, new_tokens: int) -> tuple[float, float]:
        """(prefill seconds, decode seconds per token): one prompt, then single-token steps."""
        t0 = time.perf_counter()
        _, past = self.forward(ids[None])
        t1 = time.perf_counter()
        plen, tok, steps = ids.shape[0], np.array([[int(ids[-1])]]), []
        for _ in range(new_tokens):
            s = time.perf_counter()
            _, past = self.forward(tok, past, plen)
            steps.append(time.perf_counter() - s)
            plen += 1
        return t1 - t0, decode_step(steps)

    def generate(self, ids, n: int) -> list[int]:
        ids = np.asarray(ids)[None]
        logits, past = self.forward(ids)
        out, plen = [], ids.shape[1]
        for _ in range(n):
            tok = int(logits[0, -1].argmax())
            out.append(tok)
            logits, past = self.forward(np.array([[tok]]), past, plen)
            plen += 1
        return out


def _llama_cpp():
    lc = require("llama_cpp", "gguf", "running GGUF artifacts")
    # llama.cpp's AMX kernel crashes with SIGILL on Q8_0 on some VMs (docs/EXPORTERS.md):
    # turn the extra buffer types off in every model we load.
    low = lc.llama_cpp
    if not getattr(low, "_edgeprune_patched", False):
        orig = low.llama_model_default_params

        def params():
            p = orig()
            p.use_extra_bufts = False
            return p

        low.llama_model_default_params = params
        low._edgeprune_patched = True
    return lc


class GGUFSession:
    """llama.cpp (llama-cpp-python) with an f32 KV cache and flash attention off, for exactness."""

    def __init__(self, path: str | Path, n_ctx: int = 512, threads: int | None = None, exact: bool = True,
                 low_memory: bool = False):
        lc = _llama_cpp()
        path = Path(path)
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ExportError(f"{path} is not a GGUF file (bad magic); re-export it")
        kw = dict(type_k=0, type_v=0, flash_attn=False) if exact else {}
        try:
            self.llm = lc.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=verbose(),
                                n_threads=threads or min(os.cpu_count() or 1, 8), seed=0, **kw)
        except Exception as e:
            raise ExportError(f"llama.cpp could not load {path} ({type(e).__name__}: {str(e)[:160]}); truncated or incompatible file?") from None

    def logits(self, ids) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(map(int, ids)))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    @property
    def runtime(self) -> str:
        import llama_cpp

        return f"llama.cpp (llama-cpp-python {llama_cpp.__version__}; f16 KV cache, flash attention off: its defaults)"

    def timed_run(self, ids: np.ndarray, new_tokens: int) -> tuple[float, float]:
        """(prefill seconds, decode seconds per token) through llama.cpp's own KV cache."""
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(ids.tolist())
        t1 = time.perf_counter()
        steps = []
        for _ in range(new_tokens):
            s = time.perf_counter()
            self.llm.eval([int(ids[-1])])
            steps.append(time.perf_counter() - s)
        return t1 - t0, decode_step(steps)

    def generate(self, ids, n: int) -> list[int]:
        self.llm.reset()
        self.llm.eval(list(map(int, ids)))
        out = []
        for _ in range(n):
            tok = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(tok)
            self.llm.eval([tok])
        return out


def open_artifact(path: str | Path, purpose: str = "eval", *, n_ctx: int = 512, threads: int | None = None):
    """A session for any artifact, opened by its format (`Format.session`: the one place the
    settings for verification, evaluation and latency are decided)."""
    from .formats import for_path

    path = Path(path)
    return for_path(path).session(path, purpose, n_ctx=n_ctx, threads=threads)

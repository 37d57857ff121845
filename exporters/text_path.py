"""Verification at the interface users have: text in, the runtime's own tokenizer, greedy
generation, the runtime's own detokenizer, text out.

Two checks, both against transformers' tokenizer of the checkpoint:
- `tokenizer_check`: for every string of `TEXTS` (ASCII, runs of spaces, tabs and newlines,
  numbers, contractions, punctuation, accents, CJK, emoji, code) the runtime's tokenizer must
  give transformers' ids (BOS/EOS as `tok(text)` adds them), and its detokenizer must turn
  transformers' ids back into transformers' text;
- `complete` (per session) + `generation_report`: each prompt of `GEN_TEXTS` goes through the
  runtime's text API; PyTorch's logits on transformers' prompt ids + the runtime's tokens
  decide whether each token is PyTorch's greedy choice (ties within a tolerance accepted, as
  the id-level check does), and the runtime's text of them (what llama-server / a GenAI stream prints) must be transformers'
  decoding of them after the prompt.

Known, documented divergence left out of `TEXTS`: a text that *begins* with a space, for
SentencePiece-style tokenizers (transformers' Metaspace does not add `▁` before an existing
space; llama.cpp, like SentencePiece itself, always does).
"""
from __future__ import annotations

import ctypes

TEXTS = (
    "Once upon a time, there was a little girl named Lily.",
    "Hello  world,   three   spaces and a double  space",
    "tabs\tand\ttabs\nnew lines\n\nand a blank line\n",
    "Numbers: 7, 42, 1234567, 3.14159, -0.5, 1,000,000 and 2026-12-02",
    "don't won't I'm you're we've they'll she'd IT'S",
    "Wait... what?! (yes); [no] {maybe} <tag> 'single' \"double\" -- dash & 100% #1 @home",
    "Café naïve façade résumé Ünïcödé Köln Þórr ¿Qué tal? Ça va",
    "東京は日本の首都です。北京欢迎你。서울",
    "emoji 🙂🚀👍🏽 and 🇫🇷 flags",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)  # recursion\n",
    "x",
)
GEN_TEXTS = ("Once upon a time", "def main():\n", "A")
GEN_NEW = 8
# Where a verify report keeps each runtime's text-path record: the artifact's own session (only
# llama.cpp's has a tokenizer: `Format.text_path`), then the ORT GenAI package's generator
# (`Format.second_runtime`, verify.py's `genai`). The runtime's name is in the record itself
# (`tokenizer_check`'s "in", from the text-path object), never restated here.
IN_REPORT = (("text_path",), ("genai", "text_path"))


def in_report(report: dict | None) -> list[tuple[str, dict | None]]:
    """(runtime's name, its text-path record or None) for each place of `IN_REPORT` in a verify report."""
    out = []
    for keys in IN_REPORT:
        rec = report
        for k in keys:
            rec = (rec or {}).get(k)
        out.append((((rec or {}).get("tokenizer") or {}).get("in", "its runtime"), rec))
    return out


def _cause(hf: list[int], got: list[int], bos: int | None, eos: int | None) -> str:
    if bos is not None and (got == hf[1:] and hf[:1] == [bos] or hf == got[1:] and got[:1] == [bos]):
        return "BOS handling differs (add_bos_token)"
    if eos is not None and (got == hf[:-1] and hf[-1:] == [eos] or hf == got[:-1] and got[-1:] == [eos]):
        return "EOS handling differs (add_eos_token)"
    if len(hf) == len(got):
        return "same number of tokens, different ids: merge order or vocabulary differs"
    return "the text is split differently: pre-tokenizer, normalizer or merges differ"


def _text_tokens(ids: list[int], hf) -> list[int]:
    """`ids` without the BOS/EOS the tokenizer added around the text."""
    if ids[:1] == [hf.bos_token_id]:
        ids = ids[1:]
    if ids[-1:] == [hf.eos_token_id] and hf.eos_token_id is not None:
        ids = ids[:-1]
    return ids


def same_text(want: str, got: str) -> bool:
    """Equal texts; where transformers' text holds an invalid UTF-8 sequence (U+FFFD), only up
    to it: runtimes legitimately hold back or drop an incomplete byte sequence."""
    cut = want.find("\ufffd")
    return got == want if cut < 0 else got[:cut] == want[:cut]


def continuation(hf, prompt: list[int], new: list[int]) -> str:
    """transformers' text of `new` after `prompt`: decode(prompt + new) less decode(prompt)."""
    whole = hf.decode(prompt + new, skip_special_tokens=True)
    head = hf.decode(prompt, skip_special_tokens=True)
    if whole.startswith(head):
        return whole[len(head):]
    n = 0  # a byte the prompt ended on joined an invalid sequence of the new tokens: cut where they part
    while n < min(len(whole), len(head)) and whole[n] == head[n]:
        n += 1
    return whole[n:]


def llama_clean_spaces(text: str) -> str:
    """llama.cpp's `clean_spaces` pass of `llama_detokenize` (the one transformers 4 applied and
    transformers 5 no longer applies to BPE): no space before ? ! . , ; " ' " -> "'"; no space
    before 's 'm 're 've."""
    out: list[str] = []
    for i, x in enumerate(text):
        if i and out and out[-1] == " " and x in "?!.,":
            out.pop()
        out.append(x)
    t, out, i = "".join(out), [], 0
    while i < len(t):
        if t[i] == "'" and out and out[-1] == " " and i + 1 < len(t) and t[i + 1] == " ":
            out[-1] = "'"
            i += 2
            continue
        out.append(t[i])
        i += 1
    t, out = "".join(out), []
    for i, x in enumerate(t):
        if x == "'" and out and out[-1] == " " and (t[i + 1:i + 2] in ("s", "m") or t[i + 1:i + 3] in ("re", "ve")):
            out.pop()
        out.append(x)
    return "".join(out)


def tokenizer_check(hf, rt, texts=TEXTS) -> dict:
    """The runtime's tokenizer and detokenizer against transformers' on `texts`. A detokenized
    text that differs only by llama.cpp's documented space clean-up (`llama_clean_spaces`, on
    for that pre-tokenizer) is a recorded deviation, not a failure: the ids are identical."""
    failures, deviations = [], []
    for s in texts:
        ids = list(hf(s)["input_ids"])
        got = list(rt.encode(s))
        want_text = hf.decode(ids, skip_special_tokens=True)
        got_text = rt.decode(_text_tokens(ids, hf) if rt.strip_specials else ids)
        if got == ids and got_text != want_text and getattr(rt, "clean_spaces", False) \
                and got_text == llama_clean_spaces(want_text):
            deviations.append({"text": s, "transformers_text": want_text, "runtime_text": got_text,
                               "why": "llama_detokenize cleans spaces before punctuation for this pre-tokenizer"})
            continue
        if got != ids or got_text != want_text:
            f = {"text": s, "transformers_ids": ids, "runtime_ids": got}
            if got != ids:
                f["cause"] = _cause(ids, got, hf.bos_token_id, hf.eos_token_id)
            if got_text != want_text:
                f["cause"] = f.get("cause") or ("the detokenizer cleans spaces differently (clean_up_tokenization_spaces)"
                                                if got_text.replace(" ", "") == want_text.replace(" ", "") else
                                                "the detokenizer gives other text for transformers' ids")
                f.update(transformers_text=want_text, runtime_text=got_text,
                         detokenizer="the runtime's detokenizer gives other text for transformers' ids")
            failures.append(f)
    return {"runtime": rt.name, "in": rt.runtime, "strings": len(texts), "failed": len(failures), "failures": failures,
            "deviations": deviations, "passed": not failures}


def generation_side(rt, texts=GEN_TEXTS, n: int = GEN_NEW) -> list[dict]:
    """What the runtime's own text API makes of each prompt (runs before PyTorch is loaded)."""
    return [rt.complete(t, n) for t in texts]


def generation_report(hf, runs: list[dict], refs: list, greedy_check, tol: float) -> dict:
    """Judge the runtime's completions: PyTorch's choice at each step (tie-aware) and its text."""
    out, ok_all = [], True
    for run, ref in zip(runs, refs):
        prompt = list(hf(run["text"])["input_ids"])
        chosen, tokens_ok = greedy_check(ref, len(prompt), run["new_ids"], tol)
        want = continuation(hf, prompt, run["new_ids"])
        ids_ok = run["prompt_ids"] == prompt
        text_ok = same_text(want, run["continuation"])
        api_ok = run.get("completion") is None or same_text(want, run["completion"])
        ok = ids_ok and tokens_ok and text_ok and api_ok
        ok_all &= ok
        out.append({"prompt": run["text"], "passed": ok, "prompt_ids_match": ids_ok, "greedy_tokens_match": tokens_ok,
                    "text_match": text_ok and api_ok, "transformers_text": want, "runtime_text": run["continuation"],
                    "runtime_completion": run.get("completion"), "transformers_prompt_ids": prompt,
                    "runtime_prompt_ids": run["prompt_ids"], "runtime_new_ids": run["new_ids"], "pytorch_new_ids": chosen})
    return {"prompts": len(runs), "new_tokens": GEN_NEW, "tie_tolerance": tol, "passed": ok_all, "runs": out}


def reference_sequences(hf, runs: list[dict]) -> list[list[int]]:
    """transformers' prompt ids + the runtime's new tokens: what PyTorch scores for the check."""
    return [list(hf(r["text"])["input_ids"]) + r["new_ids"] for r in runs]


class LlamaCppText:
    """llama.cpp's own text path (llama-cpp-python over the C API that llama-cli and
    llama-server use): `llama_tokenize` with the GGUF's add_bos and special-token parsing,
    greedy decoding, `llama_detokenize`, and `create_completion` for the text API."""

    def __init__(self, llm, runtime: str):
        """`runtime`: its name in reports (the format's `Format.runtime`)."""
        import llama_cpp

        self.llm, self.lc, self.runtime = llm, llama_cpp, runtime
        self.name = f"{runtime} (llama-cpp-python {llama_cpp.__version__})"
        self.strip_specials = True  # llama_detokenize keeps the SentencePiece space after a BOS
        from .vocab import PRE

        pre = llm.metadata.get("tokenizer.ggml.pre")
        self.clean_spaces = any(p.name == pre and p.clean_spaces for p in PRE)

    def encode(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def decode(self, ids: list[int]) -> str:
        arr = (self.lc.llama_token * max(len(ids), 1))(*ids)
        vocab = self.llm._model.vocab
        size = 64 + 16 * len(ids)
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = self.lc.llama_detokenize(vocab, arr, len(ids), buf, size, True, False)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", "replace")
            size = -n + 1
        raise RuntimeError("llama_detokenize failed")

    def piece(self, token: int) -> bytes:
        """llama_token_to_piece: the bytes llama-server streams for one generated token."""
        size = 64
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = self.lc.llama_token_to_piece(self.llm._model.vocab, token, buf, size, 0, False)
            if n >= 0:
                return buf.raw[:n]
            size = -n + 1
        raise RuntimeError("llama_token_to_piece failed")

    def complete(self, text: str, n: int) -> dict:
        ids = self.encode(text)
        self.llm.reset()
        new: list[int] = []
        for tok in self.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            if self.llm._model.token_is_eog(tok) if hasattr(self.llm._model, "token_is_eog") else tok == self.llm.token_eos():
                break
            new.append(int(tok))
            if len(new) >= n:
                break
        res = self.llm.create_completion(text, max_tokens=n, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                         repeat_penalty=1.0)
        pieces = b"".join(self.piece(t) for t in new)
        return {"text": text, "prompt_ids": ids, "new_ids": new, "continuation": pieces.decode("utf-8", "replace"),
                "completion": res["choices"][0]["text"]}


class GenAIText:
    """ORT GenAI's own text path: `og.Tokenizer.encode`, `og.Generator` greedy, `decode`."""

    runtime = "ORT GenAI"  # its name in reports

    def __init__(self, session):
        self.s, og = session, session.og
        self.tok = og.Tokenizer(session.model)
        # GenAI adds no special tokens unless asked; with this it adds what tokenizer_config.json declares
        self.tok.update_options(add_special_tokens="true")
        self.name = f"onnxruntime-genai {og.__version__} (og.Tokenizer)"
        self.strip_specials = False

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tok.encode(text)]

    def decode(self, ids: list[int]) -> str:
        import numpy as np

        return self.tok.decode(np.asarray(ids, dtype=np.int32))

    def complete(self, text: str, n: int) -> dict:
        ids = self.encode(text)
        new = self.s.generate(ids, n, stop_at_eos=True)
        stream = self.tok.create_stream()  # what a GenAI app prints, token by token
        return {"text": text, "prompt_ids": ids, "new_ids": new, "continuation": "".join(stream.decode(t) for t in new)}

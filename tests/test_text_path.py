"""Text in, text out: every tokenizer kind hubs ship, exported to GGUF (and ONNX/GenAI), must
tokenize, generate and detokenize in the runtime exactly as transformers does."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeprune.errors import ExportError
from exporters import export
from exporters import verify as verify_mod
from exporters.text_path import llama_clean_spaces, same_text
from exporters.vocab import DSV3, LLAMA3, QWEN2, TEKKEN, find_pre

from .tokenizer_zoo import KINDS, make_model, make_tokenizer, training_text

pytest.importorskip("llama_cpp")
EXPECTED_PRE = {"gpt2": "gpt-2", "llama3": "llama-bpe", "qwen2": "qwen2", "smollm": "smollm", "tekken": "tekken",
                "deepseek-v3": "deepseek-v3"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    text = training_text()
    return {k: make_model(make_tokenizer(k, root / k / "tok", text=text), root / k / "model") for k in KINDS}


def _gguf_meta(path: Path) -> dict:
    import gguf

    r = gguf.GGUFReader(str(path))
    out = {}
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token"):
        f = r.fields.get(key)
        if f is not None:
            v = f.parts[f.data[0]]
            out[key] = bytes(v).decode() if f.types[0].name == "STRING" else bool(v[0])
    return out


def _text_report(res: dict) -> dict:
    return json.loads(Path(res["verify_report"]).read_text())["text_path"]


@pytest.mark.parametrize("kind", KINDS)
def test_gguf_text_path_every_kind(zoo, tmp_path, kind):
    """llama.cpp's own tokenizer gives transformers' ids on every fixed string, its greedy text
    completion is transformers' greedy text, and the vocabulary is written as llama.cpp reads it."""
    res = export(zoo[kind], "gguf", tmp_path / "m.gguf", dtype="f32")
    tp = _text_report(res)
    assert res["verify"]["passed"] and tp["passed"], tp
    assert tp["tokenizer"]["failed"] == 0 and tp["tokenizer"]["strings"] >= 10
    assert all(r["prompt_ids_match"] and r["text_match"] for r in tp["generation"]["runs"])
    meta = _gguf_meta(tmp_path / "m.gguf")
    if kind.startswith(("spm", "metaspace")):
        assert meta["tokenizer.ggml.model"] == "llama"
    else:
        assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == EXPECTED_PRE[kind]
    assert meta["tokenizer.ggml.add_bos_token"] == (kind not in ("gpt2", "qwen2", "smollm"))


def test_wrong_pre_tokenizer_fails_the_text_check(zoo, tmp_path):
    """A GGUF whose pre-tokenizer is not the tokenizer's (GPT-2's digit runs for Qwen2's single
    digits) splits numbers differently: verification must fail and leave no artifact."""
    out = tmp_path / "m.gguf"
    with pytest.raises(ExportError, match="text path"):
        export(zoo["qwen2"], "gguf", out, dtype="f32", gguf_pre="gpt-2")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_unknown_pre_tokenizer_is_refused_before_writing(zoo, tmp_path, copy_dir):
    model = copy_dir(zoo["gpt2"])
    j = json.loads((model / "tokenizer.json").read_text())
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\w+|[^\w\s]+|\s+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (model / "tokenizer.json").write_text(json.dumps(j))
    manifest = json.loads((model / "edgeprune.json").read_text())  # the checkpoint's own size record
    manifest["files"]["tokenizer.json"] = (model / "tokenizer.json").stat().st_size
    (model / "edgeprune.json").write_text(json.dumps(manifest))
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    with pytest.raises(ExportError, match="--gguf-pre"):
        export(model, "gguf", out, dtype="f32")
    assert not list(out.parent.iterdir())
    with pytest.raises(ExportError, match="not a llama.cpp pre-tokenizer"):
        export(model, "gguf", out, dtype="f32", gguf_pre="no-such-pre")


def test_short_prompts_verify(zoo, tmp_path, monkeypatch):
    """Prompts shorter than the greedy check's prefix (1 token included) verify, no IndexError."""
    monkeypatch.setattr(verify_mod, "PROMPTS", ["Hi", "x", "Once upon a time"])
    res = export(zoo["gpt2"], "gguf", tmp_path / "m.gguf", dtype="f32")
    assert res["verify"]["passed"]


def test_real_sentencepiece_checkpoint(stories, tmp_path):
    """stories260K (a real SentencePiece tokenizer.model): llama.cpp completes text as transformers."""
    res = export(stories, "gguf", tmp_path / "m.gguf", dtype="f32")
    tp = _text_report(res)
    assert tp["passed"], tp
    run = tp["generation"]["runs"][0]
    assert run["prompt"] == "Once upon a time" and run["runtime_text"] == run["transformers_text"] != ""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qwen2", "llama3", "spm-model"])
def test_genai_text_path(zoo, tmp_path, kind):
    """ORT GenAI's og.Tokenizer + og.Generator: byte-level tokenizers must match transformers; a
    SentencePiece-style one either matches or the report states GenAI's limitation plainly."""
    pytest.importorskip("onnxruntime_genai")
    res = export(zoo[kind], "onnx", tmp_path / "o", dtype="f32")
    tp = json.loads(Path(res["verify_report"]).read_text())["genai"]["text_path"]
    if kind == "spm-model":
        assert tp["passed"] or tp["limitation"]
    else:
        assert tp["passed"], tp


def test_find_pre_from_the_splits():
    seq = lambda *s: {"type": "Sequence", "pretokenizers": list(s)}  # noqa: E731
    split = lambda r: {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False}  # noqa: E731
    bl = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
    assert find_pre(seq(split(LLAMA3), bl), True, False) == "llama-bpe"
    assert find_pre(seq(split(QWEN2), bl), False, False) == "qwen2"
    assert find_pre(seq(split(TEKKEN), bl), True, False) == "tekken"
    assert find_pre(seq(*[split(r) for r in DSV3], bl), False, False) == "deepseek-v3"
    assert find_pre({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, False, False) == "gpt-2"
    assert find_pre(seq({"type": "Digits", "individual_digits": True},
                        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}), False, False) == "smollm"
    assert find_pre(seq(split(r"\w+"), bl), False, False) is None
    assert find_pre({"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}, False, False) is None


def test_llama_clean_spaces_and_text_rules():
    assert llama_clean_spaces("a , b . c ? it 's 'x ' y") == "a, b. c? it's 'x'y"
    assert llama_clean_spaces("plain text") == "plain text"
    assert same_text("ab\ufffdcd", "ab") and not same_text("abc", "abd") and same_text("abc", "abc")


def test_the_report_names_the_runtime_the_record_names():
    """The report's text-path line takes the runtime's name from the record the runtime adapter
    wrote (`tokenizer.in`), so a new runtime needs no second list of names."""
    from edgeprune.report.markdown import _text_path_lines
    from exporters.text_path import in_report

    def rec(who):
        return {"passed": True, "tokenizer": {"in": who, "strings": 3, "failed": 0},
                "generation": {"runs": [{"prompt": "A", "runtime_text": "A b", "passed": True}]}}

    report = {"text_path": rec("SomeRuntime"), "genai": {"text_path": rec("OtherRuntime")}}
    assert [who for who, _ in in_report(report)] == ["SomeRuntime", "OtherRuntime"]
    lines = _text_path_lines([{"format": "gguf", "dtype": "f16", "verify": report}])
    assert any("in SomeRuntime: 3/3" in x for x in lines) and any("in OtherRuntime" in x for x in lines)
    assert not any("llama.cpp" in x for x in lines)
    assert [who for who, r in in_report({}) if r is None] == ["its runtime", "its runtime"]

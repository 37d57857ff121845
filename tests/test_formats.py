"""The export-format registry (`exporters/formats.py`): every format is found by name and by
its artifact, and a format registered alone is accepted wherever formats are named."""
from __future__ import annotations

import re

import pytest

from edgeprune.errors import ExportError
from exporters import dtypes, formats
from exporters.common import check_dtype


def test_each_format_claims_only_its_own_artifacts(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "model.onnx").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    assert formats.of_path(tmp_path / "m.gguf").name == "gguf"
    assert formats.of_path(tmp_path / "o").name == "onnx"
    assert formats.of_path(tmp_path / "o" / "model.onnx").name == "onnx"
    assert formats.of_path(tmp_path / "empty") is None
    with pytest.raises(ExportError, match="is neither a .gguf file nor an ONNX model"):
        formats.for_path(tmp_path / "empty")
    with pytest.raises(ExportError, match="does not exist"):
        formats.for_path(tmp_path / "missing.gguf")


def test_every_declared_dtype_is_in_the_dtype_table_and_gguf_types_are_ggml_ones():
    gguf = pytest.importorskip("gguf")
    for name in formats.names():
        for d in formats.get(name).dtypes:
            assert d in dtypes.TABLE, (name, d)
    for d in formats.get("gguf").dtypes:
        facts = dtypes.get(d)
        if not facts.llama_quantizer:  # edgeprune's own writer stores these types
            assert facts.ggml in gguf.GGMLQuantizationType.__members__, d


def test_torch_dtypes_come_from_the_dtype_table():
    torch = pytest.importorskip("torch")
    assert dtypes.torch_dtype("f16") is torch.float16 and dtypes.torch_dtype("bfloat16") is torch.bfloat16
    assert dtypes.torch_dtype("q8_0") is None
    from edgeprune.io.weights import CONFIG_DTYPE_NAME, DTYPE_NAMES

    assert CONFIG_DTYPE_NAME[torch.bfloat16] == "bfloat16" and DTYPE_NAMES["half"] is torch.float16


def test_a_registered_format_is_accepted_where_formats_are_named(monkeypatch):
    """What a new format module does (subclass, register) is all the target validation, the
    dtype check and --formats need: nothing else names the formats."""
    from edgeprune.run.target_formats import with_formats
    from edgeprune.run.targets import load_target

    formats.names()  # the built-in formats registered first

    class Stub(formats.Format):
        name = "stubfmt"
        dtypes = ("f32",)

    monkeypatch.setitem(formats._REGISTRY, "stubfmt", Stub())
    assert check_dtype("stubfmt", "f32") == "f32"
    with pytest.raises(ExportError, match="unknown stubfmt dtype 'q8_0'; choose one of: f32"):
        check_dtype("stubfmt", "q8_0")
    tgt = with_formats(load_target("cpu-x86"), "stubfmt:f32")
    assert tgt.formats == [{"format": "stubfmt", "dtype": "f32"}]
    assert "stubfmt" in formats.names()  # the error names every registered format, the new one too
    with pytest.raises(ExportError, match=re.escape(f"unknown format 'nope'; choose {' or '.join(formats.names())}")):
        check_dtype("nope", "f32")


def test_the_verify_report_of_an_artifact_path_is_where_its_format_keeps_it(tmp_path):
    """inspect and resume ask the format (`report_of`), never build `<name>.verify.json` themselves:
    ONNX keeps the report inside its folder whether the folder or its model.onnx is named."""
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF")
    d = tmp_path / "onnx-f32"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"")
    assert formats.of_path(g).report_of(g) == formats.get("gguf").written(g)[1]
    for p in (d, d / "model.onnx"):
        assert formats.of_path(p).report_of(p) == formats.get("onnx").written(d)[1] == d / "model.onnx.verify.json"


def test_a_bare_graph_file_of_another_name_has_its_own_report_not_its_folders(tmp_path):
    """A user's `other.onnx` next to an edgeprune folder's report must not read as verified by it:
    only model.onnx (the folder's graph) shares the folder's report."""
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "model.onnx.verify.json").write_text("{}")
    other = tmp_path / "other.onnx"
    other.write_bytes(b"")
    onnx = formats.get("onnx")
    assert onnx.report_of(other) == tmp_path / "other.onnx.verify.json"
    assert onnx.report_of(tmp_path / "model.onnx") == onnx.verify_report(tmp_path)


def test_only_a_format_that_overrides_second_runtime_says_it_has_one():
    """`has_second_runtime` is read from the class (no list of names): ONNX's package is verified
    in ORT GenAI too, a GGUF has only llama.cpp."""
    from exporters import formats

    assert formats.get("onnx").has_second_runtime and not formats.get("gguf").has_second_runtime

"""`edgeprune inspect` on a build directory, a .gguf file and an ONNX folder (read from the files' own metadata)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeprune.report.inspect_artifacts import inspect_gguf, kind_of


def test_a_gguf_shows_the_widths_it_holds(tmp_path):
    pytest.importorskip("gguf")
    import numpy as np
    from gguf import GGUFWriter

    p = tmp_path / "m.gguf"
    w = GGUFWriter(str(p), "deci")
    w.add_block_count(2)
    w.add_key_length(4)
    for i, (heads, kv, ffn) in enumerate([(4, 2, 24), (2, 1, 8)]):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((heads * 4, 16), np.float32))
        w.add_tensor(f"blk.{i}.attn_k.weight", np.zeros((kv * 4, 16), np.float32))
        w.add_tensor(f"blk.{i}.ffn_down.weight", np.zeros((16, ffn), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    assert kind_of(p) == "gguf"
    out = inspect_gguf(p)
    assert [(x["heads"], x["kv_heads"], x["ffn"]) for x in out["layers"]] == [(4, 2, 24), (2, 1, 8)]
    assert out["architecture"] == "deci" and "no verify report" in out["verify"]


def test_a_file_that_is_not_gguf_is_one_line(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_text("garbage")
    r = subprocess.run([sys.executable, "-m", "edgeprune", "inspect", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "not a readable GGUF" in r.stderr


def test_kinds(tmp_path):
    (tmp_path / "b" / "model").mkdir(parents=True)
    (tmp_path / "b" / "build_state.json").write_text(json.dumps({}))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "model.onnx").write_bytes(b"")
    assert kind_of(tmp_path / "b") == "build" and kind_of(tmp_path / "o") == "onnx" and kind_of(tmp_path) is None

"""`edgeprune sweep`: budgets validated before any work, the points read off each build's
profile, the dense reference linked (not exported again), and the table and plot written."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from edgeprune.errors import EdgePruneError, PlanError
from edgeprune.run.build_stages import link_reference
from edgeprune.run.sweep import budgets_of, markdown, plot, point_of, summarise


def _profile(ratio: float, dense_ms: float, pruned_ms: float, ppl: float) -> dict:
    art = {"format": "gguf", "dtype": "f32", "bytes": int(1e6 * (1 - ratio)), "perplexity": {"dense": 10.0, "pruned": ppl},
           "latency": {"dense": {"decode_ms_per_token_median": dense_ms}, "pruned": {"decode_ms_per_token_median": pruned_ms}},
           "speedup": {"decode_measured": dense_ms / pruned_ms, "decode_interval": [0.95 * dense_ms / pruned_ms, 1.05 * dense_ms / pruned_ms],
                       "decode_ideal": 1 / (1 - ratio), "status": "pass"},
           "reference_dense": {"bytes": 1_000_000}}
    return {"artifacts": [art], "prune": {"ratio_achieved": ratio, "method": "search", "layers_removed": []},
            "provenance": {"host": {"cpu": "test cpu"}}}


def test_budgets_are_validated_before_any_work():
    assert budgets_of([1.2], [0.1]) == [("speedup", 1.2), ("ratio", 0.1)]
    with pytest.raises(PlanError, match="no speedup"):
        budgets_of([1.0], [])
    with pytest.raises(EdgePruneError, match="no budget"):
        budgets_of([], [])


def test_points_table_and_plot(tmp_path):
    pts = [point_of(_profile(0.2, 2.0, 1.6, 11.0), "speedup", 1.2, "speedup-1.2"),
           point_of(_profile(0.2, 2.0, 1.8, 10.5), "ratio", 0.2, "ratio-0.2")]
    a = pts[0]["artifacts"][0]
    assert a["decode_ms"] == 1.6 and a["decode_ms_interval"] == pytest.approx([1.6 / 1.05, 1.6 / 0.95])
    res = summarise(pts + [{"budget": {"kind": "speedup", "requested": 9.0}, "dir": "x", "refused": "out of reach"}],
                    _profile(0.2, 2.0, 1.6, 11.0), "cpu-x86", None)
    assert all(p["chosen"] == (p["budget"] == res["default_budget"]) for p in res["points"])
    assert sum(p["chosen"] for p in res["points"]) == 1  # cpu-x86's default is one of the two
    md = markdown(res)
    assert "| speedup 1.2 | 0.200 | gguf f32 | 800,000 | 11.000 | 1.600 [1.524, 1.684] |" in md
    assert "refused: out of reach" in md
    assert plot(res, tmp_path / "pareto.png") == "pareto.png" and (tmp_path / "pareto.png").stat().st_size > 1000


def test_dense_reference_is_linked_from_the_first_build(tmp_path):
    first = tmp_path / "first"
    (first / "reference").mkdir(parents=True)
    f = first / "reference" / "model-f32.gguf"
    f.write_bytes(b"gguf")
    (first / "reference" / "model-f32.gguf.verify.json").write_text("{}")
    rec = {"path": str(f), "bytes": 4, "verify": {"passed": True}}
    (first / "build_state.json").write_text(json.dumps({"done": {"export": {"dense:gguf-f32": rec}}}))
    (tmp_path / "second" / "reference").mkdir(parents=True)
    dst = tmp_path / "second" / "reference" / "model-f32.gguf"
    got = link_reference(SimpleNamespace(opts={"reference_from": str(first)}), "gguf-f32", dst)
    assert got["path"] == str(dst) and got["linked_from"] == str(f) and dst.read_bytes() == b"gguf"
    assert (tmp_path / "second" / "reference" / "model-f32.gguf.verify.json").is_file()
    onnx = first / "reference" / "onnx-f32"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"onnx")
    state = json.loads((first / "build_state.json").read_text())
    state["done"]["export"]["dense:onnx-f32"] = {"path": str(onnx / "model.onnx"), "bytes": 4}
    (first / "build_state.json").write_text(json.dumps(state))
    got = link_reference(SimpleNamespace(opts={"reference_from": str(first)}), "onnx-f32", dst.parent / "onnx-f32")
    assert got["path"] == str(dst.parent / "onnx-f32" / "model.onnx") and (dst.parent / "onnx-f32").is_dir()
    assert link_reference(SimpleNamespace(opts={"reference_from": str(first)}), "gguf-q8_0", dst) is None
    assert link_reference(SimpleNamespace(opts={}), "gguf-f32", dst) is None


def test_a_linked_reference_reuses_the_first_builds_dense_perplexity_on_the_same_windows(tmp_path):
    import torch

    from edgeprune.measure.artifact_eval import windows_digest
    from edgeprune.run.build_stages import _linked_dense_ppl

    w = torch.arange(24).reshape(3, 8)
    first = tmp_path / "first"
    first.mkdir()
    m = {"ppl": [12.5, 13.0], "ppl_window_nll": [[2.5, 2.6, 2.4], [2.6, 2.7, 2.5]], "windows_sha": windows_digest(w)}
    (first / "build_state.json").write_text(json.dumps({"done": {"profile": {"gguf-f32": m}}}))
    b = SimpleNamespace(opts={"reference_from": str(first)})
    linked = {"path": "x", "linked_from": "y"}
    assert _linked_dense_ppl(b, "gguf-f32", linked, w) == {"perplexity": 12.5, "window_nll": [2.5, 2.6, 2.4]}
    assert _linked_dense_ppl(b, "gguf-f32", linked, w + 1) is None  # other windows: measured again
    assert _linked_dense_ppl(b, "gguf-f32", {"path": "x"}, w) is None  # exported here, not linked
    assert _linked_dense_ppl(b, "onnx-f32", linked, w) is None
    assert _linked_dense_ppl(SimpleNamespace(opts={}), "gguf-f32", linked, w) is None


def test_a_resumed_sweep_keeps_the_runtime_threads_its_points_were_measured_with(tmp_path):
    """Every point of a sweep is measured with one thread count; --resume reads it back from the
    points already built (their build state records it), whatever the load is now."""
    from edgeprune.run.sweep import _recorded_threads

    asked = [("speedup", 1.1), ("speedup", 1.2)]
    assert _recorded_threads(tmp_path, asked) is None  # nothing built yet: the sweep decides now
    (tmp_path / "speedup-1.1").mkdir()
    (tmp_path / "speedup-1.1" / "build_state.json").write_text("{truncated")
    (tmp_path / "speedup-1.2").mkdir()
    (tmp_path / "speedup-1.2" / "build_state.json").write_text(json.dumps({"args": {"runtime_threads": 3}}))
    assert _recorded_threads(tmp_path, asked) == 3


def test_a_sweep_holds_the_lock_of_its_out_while_it_runs(tmp_path, monkeypatch):
    """A second sweep (or a build) into the same --out while one runs is refused with its
    pid; the lock is released when the sweep ends, also when a point fails unexpectedly."""
    import os

    from edgeprune.io.outlock import LOCK, lock_holder
    from edgeprune.run import sweep as sweep_mod

    out = tmp_path / "s"
    seen = {}

    def points(*_a, **_k):
        seen["pid"] = json.loads((out / LOCK).read_text())["pid"]
        raise RuntimeError("a point failed")

    monkeypatch.setattr(sweep_mod, "_sweep_points", points)
    with pytest.raises(RuntimeError):
        sweep_mod.sweep(None, "cpu-x86", [1.2], [], str(out))
    assert seen["pid"] == os.getpid() and not (out / LOCK).exists() and lock_holder(out) is None

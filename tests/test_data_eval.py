"""Text sources, disjoint portions, seeded windows, perplexity."""
from __future__ import annotations

import math

import pytest
import torch

from edgeprune.calibrate import data
from edgeprune.errors import DataError
from edgeprune.measure.evaluate import perplexity_from

from .conftest import SHARED, need_shared


def test_named_sets_are_disjoint():
    need_shared()
    for name in ("tinystories", "c4", "wikitext2"):
        cal = data.load_text(name, "calib", SHARED)
        ev = data.load_text(name, "eval", SHARED)
        assert cal and ev and cal[:2000] not in ev, name


def test_files_json_and_dirs(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 10)
    (tmp_path / "b.jsonl").write_text('{"text": "first"}\n{"text": "second"}\n')
    import gzip

    with gzip.open(tmp_path / "c.json.gz", "wt") as f:
        f.write('[{"instruction": "Do", "input": "", "output": "Done"}]')
    assert "second" in data.load_text(tmp_path / "b.jsonl", "calib")
    assert "Do\nDone" in data.load_text(tmp_path / "c.json.gz", "calib")
    assert "hello" in data.load_text(tmp_path, "calib") and "first" in data.load_text(tmp_path, "calib")


def test_bad_sources(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        data.load_text(tmp_path / "empty.txt", "calib")
    with pytest.raises(DataError, match="neither a file nor a known dataset"):
        data.load_text("wikitext103-nope", "calib")
    with pytest.raises(DataError, match="shorter than one window"):
        data.calibration_windows(torch.arange(10), 4, 128)
    with pytest.raises(DataError, match="shorter than one window"):
        data.eval_windows(torch.arange(10), 128)


def test_calibration_is_seeded():
    t = torch.arange(10_000)
    a = data.calibration_windows(t, 8, 64, seed=3)
    assert torch.equal(a, data.calibration_windows(t, 8, 64, seed=3))
    assert not torch.equal(a, data.calibration_windows(t, 8, 64, seed=4))


def test_perplexity_of_uniform_logits_is_vocab_size():
    windows = torch.randint(0, 50, (3, 16))
    res = perplexity_from(lambda ids: torch.zeros(ids.shape[0], ids.shape[1], 50), windows, progress=False)
    assert math.isclose(res["perplexity"], 50.0, rel_tol=1e-9)
    assert res["protocol"] == {"seq_len": 16, "windows": 3, "tokens": 45}


def test_user_file_for_both_warns(tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        data.warn_if_overlap(str(tmp_path / "a.txt"), str(tmp_path / "a.txt"))
        data.warn_if_overlap("wikitext2", "wikitext2")  # named sets have disjoint portions
    assert len(w) == 1 and "both calibration and evaluation" in str(w[0].message)


def test_a_named_set_is_never_a_folder_of_that_name(tmp_path, monkeypatch):
    """`--calib demo` reads the demo text even where the working directory holds a folder called
    `demo`, so an --out inside that folder is not "inside the input"; a file whose name merely
    starts with "demo" is a file."""
    from edgeprune.calibrate.data import calib_input, is_named, load_text
    from edgeprune.errors import OutputError
    from edgeprune.io.guard import refuse_overlap

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    refuse_overlap(tmp_path / "demo" / "build", {"--calib": calib_input("demo")})  # no refusal
    notes = tmp_path / "demo_notes.txt"
    notes.write_text("my own calibration text " * 50)
    assert is_named("demo") and not is_named("demo_notes.txt") and not is_named(None)
    assert load_text("demo_notes.txt", "calib") == notes.read_text()
    with pytest.raises(OutputError, match="inside the input --calib"):
        refuse_overlap(tmp_path / "demo" / "build", {"--calib": calib_input("demo/")})  # the folder, as a path


def test_calibration_windows_are_made_once_per_input_and_again_when_the_text_changes(tiny_models, tmp_path,
                                                                                     monkeypatch):
    """build's preflight and its prune stage ask for the same windows: tokenized once; a
    calibration file rewritten in between is read again (its size and mtime are the key)."""
    from edgeprune.run import preflight

    calls = []
    real = data.calibration_set
    monkeypatch.setattr(data, "calibration_set", lambda *a, **k: calls.append(a) or real(*a, **k))
    text = tmp_path / "calib.txt"
    text.write_text("the cat sat on the mat and then it slept for a while\n\n" * 200)
    model = tiny_models["qwen2"]
    one = preflight.calibration(model, str(text), 4, 32, 0)
    two = preflight.calibration(model, str(text), 4, 32, 0)
    assert torch.equal(one, two) and len(calls) == 1
    two[0, 0] = -1  # the caller's copy: the remembered windows stay as made
    assert torch.equal(preflight.calibration(model, str(text), 4, 32, 0), one) and len(calls) == 1
    preflight.calibration(model, str(text), 4, 32, 1)  # another seed: other windows
    assert len(calls) == 2
    text.write_text("a different text, of other words entirely, repeated\n\n" * 300)
    three = preflight.calibration(model, str(text), 4, 32, 0)
    assert len(calls) == 3 and not torch.equal(three, one)

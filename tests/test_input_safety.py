"""Faults with state (issue 26 and issue 20 item 3): --resume on inputs changed at the same
path, two runs into one --out, a full disk before a GGUF, a mount point as --out, and how
an unexpected exception or an interrupt ends (one line, the traceback saved, resumable or not).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from edgeprune.cli.main import main
from tests.test_bad_inputs import PRUNE, _snapshot, _target, base  # noqa: F401  (base: the fixture)


def _interrupt(*a, **k):
    raise KeyboardInterrupt


def _boom(*a, **k):
    raise RuntimeError("boom")


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("edgeprune: error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


@pytest.fixture()
def interrupted(base, tmp_path, monkeypatch, capsys):
    """A prune stopped after planning (every layer decided, nothing saved), on copies of the
    inputs that the test may change; returns (argv, model dir, calib file, out)."""
    import shutil

    import edgeprune.run.pipeline as pl

    model, calib = tmp_path / "m", tmp_path / "calib.txt"
    shutil.copytree(base / "good", model)
    shutil.copy(base / "calib.txt", calib)
    out = tmp_path / "o"
    argv = [*PRUNE, "--model", str(model), "--calib", str(calib), "--out", str(out)]
    monkeypatch.setattr(pl, "save_pruned", _interrupt)
    assert main(argv) == 130
    monkeypatch.undo()
    assert "--resume to continue" in capsys.readouterr().err
    return argv, model, calib, out


def test_resume_refuses_a_changed_calibration_file(interrupted, capsys):
    argv, _, calib, out = interrupted
    calib.write_text(calib.read_text().replace("return x + 1", "return x + 2"))
    before = _snapshot(out)
    assert main([*argv, "--resume"]) == 2
    assert "inputs changed" in (line := _one_error(capsys)) and f"calibration text {calib}" in line
    assert _snapshot(out) == before


def test_resume_refuses_changed_weights_of_the_same_size(interrupted, capsys):
    argv, model, _, out = interrupted
    f = model / "model.safetensors"
    sd = load_file(str(f))
    sd["model.layers.0.mlp.up_proj.weight"][0, 0] += 1.0
    save_file(sd, str(f), metadata={"format": "pt"})
    assert main([*argv, "--resume"]) == 2
    assert "model file model.safetensors" in _one_error(capsys)


def test_resume_with_other_arguments_names_each_difference(interrupted, capsys):
    """prune and build share one resume rule (io.guard.refuse_other_run): the refusal names
    every argument that differs, with its recorded and its new value, and changes nothing."""
    argv, _, _, out = interrupted
    i = argv.index("--ratio")
    other = [*argv[:i + 1], "0.35", *argv[i + 2:]]
    before = _snapshot(out)
    assert main([*other, "--resume"]) == 2
    line = _one_error(capsys)
    assert "other arguments (ratio: was" in line and "now 0.35" in line and "--force" in line, line
    assert _snapshot(out) == before


@pytest.mark.parametrize("recorded", [None, "older"])
def test_resume_refuses_a_run_of_another_revision_of_the_method(interrupted, capsys, monkeypatch, recorded):
    """A method whose arithmetic changed (its registered `revision` bumped) would join layers
    of two algorithms into one plan: the resume is refused naming both revisions, and a record
    from before revisions were recorded is refused too, changing nothing."""
    import dataclasses

    from edgeprune.methods import registry

    argv, _, _, out = interrupted
    method = argv[argv.index("--method") + 1]
    args_file = out / ".work" / "args.json"
    rec = json.loads(args_file.read_text())
    assert rec["revision"] == registry.REGISTRY[method].revision
    if recorded is None:
        del rec["revision"]
        args_file.write_text(json.dumps(rec))
    else:  # this code is a revision newer than the one that wrote the record
        monkeypatch.setitem(registry.REGISTRY, method,
                            dataclasses.replace(registry.REGISTRY[method], revision=rec["revision"] + 1))
    before = _snapshot(out)
    assert main([*argv, "--resume"]) == 2
    line = _one_error(capsys)
    was = "an earlier edgeprune" if recorded is None else f"revision {rec['revision']}"
    assert f"`{method}` run of {was}" in line and "would not reproduce" in line and "--force" in line, line
    assert _snapshot(out) == before


def test_resume_on_unchanged_inputs_finishes(interrupted, capsys):
    argv, _, _, out = interrupted
    assert main([*argv, "--resume"]) == 0
    assert json.loads((out / "edgeprune.json").read_text())["format"] == "edgeprune-checkpoint"
    assert not (out / ".edgeprune-lock").exists()


def test_build_resume_refuses_a_changed_target(base, tmp_path, monkeypatch, capsys):
    import edgeprune.run.pipeline as pl

    target = _target(tmp_path, **{"bandwidth_gb_s = 51.2": "bandwidth_gb_s = 51.2"})
    out = tmp_path / "b"
    argv = ["build", "--model", str(base / "good"), "--out", str(out), "--target", str(target), "--method", "wanda-sp",
            "--ratio", "0.2", "--calib", str(base / "calib.txt"), "--nsamples", "4", "--seq-len", "32"]
    monkeypatch.setattr(pl, "save_pruned", _interrupt)
    assert main(argv) == 130
    monkeypatch.undo()
    assert "--resume to continue" in capsys.readouterr().err
    target.write_text(target.read_text().replace("bandwidth_gb_s = 51.2", "bandwidth_gb_s = 60.0"))
    assert main([*argv, "--resume"]) == 2
    assert f"target {target}" in _one_error(capsys)


def test_a_second_run_into_a_locked_out_is_refused_with_the_pid(interrupted, capsys):
    argv, _, _, out = interrupted
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".edgeprune-lock").write_text(json.dumps({"pid": other.pid}))
        assert main([*argv, "--resume"]) == 2
        assert f"pid {other.pid}" in _one_error(capsys)
        assert main([*argv, "--force"]) == 2  # --force does not steal a live run's directory either
        assert f"pid {other.pid}" in _one_error(capsys)
    finally:
        other.kill()
        other.wait()
    assert main([*argv, "--resume"]) == 0  # its process is gone: the stale lock is taken over
    assert not (out / ".edgeprune-lock").exists()


def test_unexpected_failure_after_planning_leaves_a_resumable_out(interrupted, monkeypatch, capsys):
    import edgeprune.run.pipeline as pl

    argv, _, _, out = interrupted
    monkeypatch.setattr(pl, "save_pruned", _boom)
    assert main([*argv, "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    line = err[0]
    assert "prune apply and save failed unexpectedly with RuntimeError: boom" in line
    assert f"traceback saved to {out / 'edgeprune-error.log'}" in line and "--resume to continue" in line
    assert "Traceback" in (out / "edgeprune-error.log").read_text()


def test_unexpected_failure_before_any_layer_removes_the_out_it_made(base, tmp_path, monkeypatch, capsys):
    import edgeprune.run.pipeline as pl

    out = tmp_path / "o"
    monkeypatch.setattr(pl, "make_plan", _boom)
    assert main([*PRUNE, "--model", str(base / "good"), "--calib", str(base / "calib.txt"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing resumable was left" in err[0], err
    assert not out.exists()
    log = Path(err[0].split("traceback saved to ")[1].split(";")[0])
    assert "RuntimeError: boom" in log.read_text()
    log.unlink()


def test_export_failure_and_interrupt_leave_nothing_and_do_not_offer_resume(base, tmp_path, monkeypatch, capsys):
    import exporters.gguf_writer as gw

    out = tmp_path / "m.gguf"
    argv = ["export", str(base / "good"), "--format", "gguf", "--out", str(out), "--quiet"]
    monkeypatch.setattr(gw, "write_gguf", _boom)
    assert main(argv) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "export gguf write failed unexpectedly with RuntimeError" in line and "export has no --resume" in line
    Path(line.split("traceback saved to ")[1].split(";")[0]).unlink()
    monkeypatch.setattr(gw, "write_gguf", _interrupt)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "--resume to continue" not in err and "export has no --resume" in err
    assert list(tmp_path.iterdir()) == []


def test_gguf_export_refuses_a_disk_without_room_before_writing(base, tmp_path, monkeypatch, capsys):
    import edgeprune.io.tensorfiles as tf

    monkeypatch.setattr(tf, "free_bytes", lambda p: 1000)
    assert main(["export", str(base / "good"), "--format", "gguf", "--out", str(tmp_path / "m.gguf"), "--quiet"]) == 2
    assert "GB free but this write needs" in _one_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_report_write_leaves_no_artifact_and_no_tmp(base, tmp_path, monkeypatch, capsys):
    """The verify report goes in with the artifact: when it cannot be written (disk full),
    neither the GGUF nor a 0-byte report temporary is left."""
    import errno

    from exporters import format_gguf

    class FullDisk:
        @staticmethod
        def dumps(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(format_gguf, "json", FullDisk)  # the GGUF format writes its verify report
    assert main(["export", str(base / "good"), "--format", "gguf", "--out", str(tmp_path / "m.gguf"), "--quiet"]) == 2
    assert "disk full" in _one_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_mount_point_as_out_is_refused_before_work(interrupted, monkeypatch, capsys):
    import os

    argv, _, _, out = interrupted
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(out) or real(p))
    assert main([*argv, "--resume"]) == 2
    assert "is a mount point" in _one_error(capsys)


def test_a_second_export_into_the_same_out_is_refused_with_the_pid(base, tmp_path, monkeypatch, capsys):
    """export takes the lock prune and build take (beside its --out, which is renamed into
    place): a live holder is named and nothing is written; a dead one's lock is taken over."""
    import os

    import exporters.gguf_writer as gw

    from edgeprune.io.outlock import lock_paths

    out = tmp_path / "m.gguf"
    argv = ["export", str(base / "good"), "--format", "gguf", "--out", str(out), "--quiet"]
    lock = lock_paths(out)[1]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": other.pid}))
        assert main(argv) == 2
        assert f"pid {other.pid}" in _one_error(capsys)
        assert sorted(p.name for p in tmp_path.iterdir()) == [lock.name]
    finally:
        other.kill()
        other.wait()
    held, write = [], gw.write_gguf

    def spy(*a, **k):
        held.append(json.loads(lock.read_text())["pid"])
        return write(*a, **k)

    monkeypatch.setattr(gw, "write_gguf", spy)
    assert main(argv) == 0  # its process is gone: the stale lock is taken over, held while writing
    assert held == [os.getpid()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.gguf.verify.json"]


def test_export_into_a_directory_a_prune_is_writing_is_refused(interrupted, capsys):
    """The two lock places are one rule: an ONNX export whose --out is a directory a live
    prune holds is refused with that prune's pid."""
    argv, model, _, out = interrupted
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".edgeprune-lock").write_text(json.dumps({"pid": other.pid}))
        assert main(["export", str(model), "--format", "onnx", "--out", str(out), "--force", "--quiet"]) == 2
        assert f"pid {other.pid}" in _one_error(capsys)
        assert (out / ".edgeprune-incomplete").exists()
    finally:
        other.kill()
        other.wait()


@pytest.fixture(scope="module")
def interrupted_search(base, tmp_path_factory):
    """A search prune stopped after planning: its work directory holds every kind of resume
    file (arguments, input hashes, calibration windows, ladders, the search log, layer decisions)."""
    import edgeprune.run.pipeline as pl

    out = tmp_path_factory.mktemp("search") / "o"
    argv = ["prune", "--method", "search", "--search-evals", "8", *PRUNE[3:], "--model", str(base / "good"),
            "--calib", str(base / "calib.txt"), "--out", str(out)]
    mp = pytest.MonkeyPatch()
    mp.setattr(pl, "save_pruned", _interrupt)
    try:
        assert main(argv) == 130
    finally:
        mp.undo()
    return argv, out


def _ladder_with_bad_rung(text: str) -> str:
    rec = json.loads(text)
    rec["attn"][0]["keep"] = "all"
    return json.dumps(rec)


@pytest.mark.parametrize("name,corrupt,expected", [
    (".work/args.json", lambda t: t[:10], "is not a valid resume record (not readable JSON"),
    (".work/inputs.json", lambda t: '{"model file config.json": 5}', "is not a valid resume record"),
    (".work/calib.pt", lambda t: "not a tensor file", "is not a readable tensor file"),
    (".work/ladder/L0.json", lambda t: t[: len(t) // 2], "is not a valid ladder record (not readable JSON"),
    (".work/ladder/L0.json", _ladder_with_bad_rung, "is not a valid ladder record (attn[0].keep must be a list"),
    (".work/search.json", lambda t: '{"evaluated": 5}', "is not a valid search log (evaluated must be a list"),
    (".work/layers/layer0.json", lambda t: '{"ffn_keep": "x"}', "is not a valid resume record (ffn_keep must be"),
    (".work/layers/layer0.safetensors", lambda t: "junk", "is not a readable safetensors file"),
    (".work/ladder/L0.ffn1.safetensors", lambda t: t[:100], "is truncated"),
])
def test_a_malformed_resume_file_is_refused_naming_it(interrupted_search, name, corrupt, expected, tmp_path, capsys):
    """Every file a resumed prune reads back is checked: one line naming the file and the fix,
    and the interrupted run is left as it was (it can still be started over with --force)."""
    import shutil

    argv, src = interrupted_search
    out = tmp_path / "o"
    shutil.copytree(src, out)
    f = out / name
    f.write_text(corrupt(f.read_text(errors="replace")))
    before = _snapshot(out)
    assert main([*argv[:-1], str(out), "--resume"]) == 2
    line = _one_error(capsys)
    assert f"{f} {expected}" in line and ("--force" in line or "delete it" in line), line
    assert _snapshot(out) == before


def test_a_run_that_reaches_out_after_another_finished_there_refuses_it(tmp_path):
    """The race of two runs started together (found by CI): the second passed its first
    checks while --out was new, the first then finished and released its lock. Under the
    lock the second looks again and refuses, leaving the finished result as it was."""
    from edgeprune.errors import OutputError
    from edgeprune.io.outdir import LOCK, MANIFEST, claim

    out = tmp_path / "o"
    out.mkdir()
    (out / MANIFEST).write_text("{}")
    (out / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(OutputError, match="already holds a result"):
        claim(out, force=False, resume=False, resuming=False)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "model.safetensors"]
    assert not (out / LOCK).exists()


def test_force_never_empties_an_out_another_live_run_holds(tmp_path):
    """--force, checked while --out was free, reaches it after another run took its lock:
    refused with that run's pid, nothing removed."""
    from edgeprune.errors import OutputError
    from edgeprune.io.outdir import INCOMPLETE, LOCK, claim

    out = tmp_path / "o"
    out.mkdir()
    (out / INCOMPLETE).write_text("")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": other.pid}))
        with pytest.raises(OutputError, match=f"pid {other.pid}"):
            claim(out, force=True, resume=False, resuming=False)
        assert sorted(p.name for p in out.iterdir()) == sorted([INCOMPLETE, LOCK])
    finally:
        other.kill()
        other.wait()


def test_claim_with_force_empties_what_edgeprune_wrote_and_keeps_its_lock(tmp_path):
    from edgeprune.io.outdir import LOCK, MANIFEST, claim

    out = tmp_path / "o"
    (out / "sub").mkdir(parents=True)
    (out / MANIFEST).write_text("{}")
    lock, made = claim(out, force=True, resume=False, resuming=False)
    try:
        assert made and [p.name for p in out.iterdir()] == [LOCK]
    finally:
        lock.release()
    assert not any(out.iterdir())


def test_partial_outputs_of_a_dead_run_go_and_a_live_runs_stay(tmp_path):
    """`partial` names a staged output with its writer's pid; `remove_orphans` removes only
    those of a process that no longer runs, of the stem asked for, files and folders alike."""
    import os

    from edgeprune.io.outdir import partial, remove_orphans

    mine = partial(tmp_path, "m", ".gguf")
    assert mine.name == f".m.partial-{os.getpid()}.gguf"
    dead_pid = max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 100000
    dead_file = tmp_path / f".m.partial-{dead_pid}.gguf"
    dead_dir = tmp_path / f".m.partial-{dead_pid}"
    live = tmp_path / ".m.partial-1.verify.json"  # pid 1 always runs
    other = tmp_path / f".n.partial-{dead_pid}.gguf"
    for p in (mine, dead_file, live, other):
        p.write_text("x")
    dead_dir.mkdir()
    (dead_dir / "model.onnx").write_text("x")
    remove_orphans(tmp_path, "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, live, other))

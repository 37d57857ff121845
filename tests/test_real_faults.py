"""Faults made for real rather than simulated (issue 26): a small tmpfs that is full, or that is
itself the `--out` (a mount point), and a real SIGINT in the middle of an export. The tmpfs
tests need `mount` (root); where it is not permitted (CI) they skip and say why.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgeprune.cli.main import main
from tests.test_bad_inputs import PRUNE, base  # noqa: F401  (base: the fixture)
from tests.test_input_safety import _one_error


@contextmanager
def tmpfs(directory: Path, size: str = "4m"):
    """A tmpfs of `size` mounted at `directory` for the block; skips when mounting is refused."""
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: the real full-disk and mount-point tests need one")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not permitted'}; needs root): "
                    "the full-disk and mount-point faults are then only simulated in test_input_safety")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def _argv(cmd: str, base: Path, out: Path) -> list[str]:
    """The same small run of each command, into `out`."""
    return {"prune": [*PRUNE, "--model", str(base / "good"), "--calib", str(base / "calib.txt"), "--out", str(out)],
            "export gguf": ["export", str(base / "good"), "--format", "gguf", "--out", str(out), "--quiet"],
            "export onnx": ["export", str(base / "good"), "--format", "onnx", "--out", str(out), "--quiet"],
            "build": ["build", "--model", str(base / "good"), "--calib", str(base / "calib.txt"), "--method", "wanda-sp",
                      "--out", str(out)]}[cmd]


def _fill(directory: Path, leave: int) -> None:
    """Fill a file system until only about `leave` bytes are free."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    (directory / "filler").write_bytes(bytes(max(0, free - leave)))


def test_gguf_export_onto_a_full_tmpfs_is_refused_before_writing(base, tmp_path, capsys):
    with tmpfs(tmp_path / "disk") as disk:
        _fill(disk, 200_000)  # the f32 GGUF of the test model is about 600 kB
        argv = ["export", str(base / "good"), "--format", "gguf", "--out", str(disk / "m.gguf"), "--quiet"]
        assert main(argv) == 2
        assert "GB free but this write needs" in _one_error(capsys)
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_a_disk_filling_up_during_the_write_leaves_nothing(base, tmp_path, monkeypatch, capsys):
    """Past the free-space check (another process may fill the disk meanwhile) the write itself
    meets ENOSPC: one line, and neither the artifact, its report, nor a partial file is left."""
    import edgeprune.io.tensorfiles as tf

    with tmpfs(tmp_path / "disk") as disk:
        _fill(disk, 200_000)
        monkeypatch.setattr(tf, "check_free_space", lambda *a, **k: None)
        argv = ["export", str(base / "good"), "--format", "gguf", "--out", str(disk / "m.gguf"), "--quiet"]
        assert main(argv) == 2
        assert "disk full while writing m.gguf" in _one_error(capsys)
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_gguf_export_onto_a_tmpfs_with_room_works(base, tmp_path, capsys):
    """The artifact is staged beside --out, so on its file system: a small disk of its own
    is fine when it has room (the free-space check keeps a 16 MiB margin)."""
    with tmpfs(tmp_path / "disk", "32m") as disk:
        assert main(["export", str(base / "good"), "--format", "gguf", "--dtype", "q8_0", "--out", str(disk / "m.gguf"),
                     "--quiet"]) == 0
        assert sorted(p.name for p in disk.iterdir()) == ["m.gguf", "m.gguf.verify.json"]


@pytest.mark.parametrize("cmd", ["prune", "export onnx", "build"])
def test_a_mount_point_as_out_is_refused_before_any_work(cmd, base, tmp_path, capsys):
    with tmpfs(tmp_path / "mnt") as mnt:
        argv = _argv(cmd, base, mnt)
        assert main(argv) == 2
        assert f"--out {mnt} is a mount point" in _one_error(capsys)
        assert list(mnt.iterdir()) == []


def test_sigint_during_an_export_then_the_same_command_again(base, tmp_path):
    """A real Ctrl-C (SIGINT to the process) while the GGUF is being verified: exit 130, one
    line that does not offer --resume, nothing at --out (no artifact, partial file or lock);
    the same command then succeeds."""
    out = tmp_path / "m.gguf"
    argv = [sys.executable, "-m", "edgeprune", "export", str(base / "good"), "--format", "gguf", "--out", str(out),
            "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not any(q.name.startswith(".m.partial-") for q in tmp_path.iterdir()):  # the write has begun
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else "timeout"
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("edgeprune:")]
    assert lines[-1].startswith("edgeprune: interrupted") and "export has no --resume" in lines[-1], err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(q.name for q in tmp_path.iterdir()) == ["m.gguf", "m.gguf.verify.json"]


@pytest.mark.parametrize("cmd", ["prune", "export gguf", "build"])
def test_an_unwritable_out_parent_is_refused_before_any_work(cmd, base, tmp_path, capsys):
    """A read-only file system (root may write anywhere else, so permissions cannot make one)."""
    with tmpfs(tmp_path / "ro") as ro:
        r = subprocess.run(["mount", "-o", "remount,ro", str(ro)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only ({r.stderr.strip()})")
        out = ro / ("m.gguf" if cmd == "export gguf" else "o")
        argv = _argv(cmd, base, out)
        assert main(argv) == 2
        assert f"{ro} is not writable" in _one_error(capsys)
        assert list(ro.iterdir()) == []


@pytest.mark.parametrize("cmd", ["prune", "export gguf"])
def test_two_runs_started_together_into_one_out(cmd, base, tmp_path):
    """Two real processes racing for the same --out: one finishes, the other is refused in one
    line (naming the first one's pid, or finding its result), and what is left is one whole result."""
    out = tmp_path / ("m.gguf" if cmd == "export gguf" else "o")
    argv = [sys.executable, "-m", "edgeprune", *_argv(cmd, base, out), "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    runs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in runs)
    assert [rc for rc, _ in results] == [0, 2], results
    err = results[1][1]
    errors = [line for line in err.splitlines() if line.startswith("edgeprune: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert any(k in errors[0] for k in ("being written by another edgeprune run (pid", "already", "interrupted run")), err
    if cmd == "export gguf":
        assert sorted(q.name for q in tmp_path.iterdir()) == ["m.gguf", "m.gguf.verify.json"]
    else:
        assert (out / "edgeprune.json").is_file() and not (out / ".edgeprune-incomplete").exists()
        assert not (out / ".edgeprune-lock").exists()

"""Data-parallel pruning: 2 ranks (gloo, CPU) against 1 process, for every method.

The ranks are started the way torchrun starts them (one process each, WORLD_SIZE / RANK /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT in the environment; one test uses torchrun itself).
Sums over windows in another order are not bit-identical: weights are compared within
1e-5 relative, perplexity to 3 decimals, and the choices (kept heads, KV groups, channels,
layers) must be identical. The model is stories260K (trained, so its choices are decisive).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeprune.methods import REGISTRY

from .conftest import SHARED, need_shared

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("dist_worker.py")
TIMEOUT = 900
CLI_REQUEST = ["--ratio", "0.3", "--calib", "tinystories", "--nsamples", "16", "--seq-len", "64", "--seed", "0",
               "--search-evals", "16", "--threads", "1", "--quiet"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(world: int | None, rank: int = 0, port: int = 0) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", EDGEPRUNE_DIST_TIMEOUT="300")
    if world is not None:
        env.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
    return env


def launch(args: list[str], world: int | None) -> list[subprocess.Popen]:
    """Start `python ARGS` as `world` ranks (None: one plain process, no distributed env)."""
    port = _port()
    return [subprocess.Popen([sys.executable, *args], env=_env(world, r, port), cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(world or 1)]


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        out.append((p.returncode, err))
    return out


def _ok(results: list[tuple[int, str]]) -> None:
    for r, (rc, err) in enumerate(results):
        assert rc == 0, f"rank {r} exited {rc}: {err[-2000:]}"


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> dict[int, Path]:
    """Every method pruned by one process and by two ranks (run at the same time)."""
    need_shared()
    model = SHARED / "models" / "stories260K" / "hf"
    root = tmp_path_factory.mktemp("dist")
    methods = ",".join(REGISTRY)
    one = launch([str(WORKER), "prune", str(model), str(root / "w1"), methods], None)
    two = launch([str(WORKER), "prune", str(model), str(root / "w2"), methods], 2)
    _ok(finish(one + two))
    return {1: root / "w1", 2: root / "w2"}


def _plan(d: Path) -> dict:
    p = json.loads((d / "edgeprune_plan.json").read_text())
    return {"removed": p["removed_layers"],
            "layers": {i: {k: lp[k] for k in ("heads_keep", "kv_keep", "ffn_keep")} for i, lp in p["layers"].items()}}


def _weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(d.glob("model*.safetensors")) for k, v in load_file(str(f)).items()}


def _perplexity(d: Path) -> float:
    import edgeprune
    from edgeprune.calibrate import data
    from edgeprune.measure.evaluate import perplexity
    from edgeprune.run.pipeline import tokenizer_for

    ev = data.evaluation_set(tokenizer_for(d), "tinystories", 128, 8)
    return perplexity(edgeprune.load(d), ev, progress=False)["perplexity"]


def same_checkpoint(a: Path, b: Path) -> None:
    """The same choices, weights within 1e-5 relative, perplexity to 3 decimals."""
    assert _plan(a) == _plan(b)
    assert json.loads((a / "config.json").read_text()).get("edgeprune_layers") == \
        json.loads((b / "config.json").read_text()).get("edgeprune_layers")
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        scale = float(wa[k].abs().max()) or 1.0
        assert float((wa[k] - wb[k]).abs().max()) <= 1e-5 * scale, k
    assert round(_perplexity(a), 3) == round(_perplexity(b), 3)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(REGISTRY))
def test_two_ranks_prune_as_one(pruned, method):
    plan = json.loads((pruned[2] / method / "edgeprune_plan.json").read_text())
    assert plan["stats"]["report"]["distributed"]["world_size"] == 2  # the two ranks did run together
    assert len(plan["stats"]["report"]["distributed"]["peak_memory_per_rank"]) == 2
    assert "distributed" not in json.loads((pruned[1] / method / "edgeprune_plan.json").read_text())["stats"]["report"]
    same_checkpoint(pruned[1] / method, pruned[2] / method)


def test_a_failing_rank_ends_every_rank_with_one_line(tmp_path):
    need_shared()
    model = SHARED / "models" / "stories260K" / "hf"
    args = [str(WORKER), "fail", "1", "run", "--", "prune", "--model", str(model), "--method", "slimgpt",
            "--out", str(tmp_path / "out"), *CLI_REQUEST]
    results = finish(launch(args, 2))
    assert all(rc != 0 for rc, _ in results), [rc for rc, _ in results]
    lines = [ln for _, err in results for ln in err.splitlines() if ln.startswith("edgeprune: error:")]
    assert len(lines) == 1, lines
    assert "rank 1 of 2" in lines[0] and "injected failure" in lines[0]
    assert "Traceback" not in "".join(err for _, err in results)


@pytest.mark.slow
def test_resume_with_another_world_size(pruned, tmp_path):
    """Interrupted in one process after two layers, resumed on two ranks: the same checkpoint."""
    model = SHARED / "models" / "stories260K" / "hf"
    out = tmp_path / "out"
    cli = ["prune", "--model", str(model), "--method", "comp", "--out", str(out), *CLI_REQUEST]
    (rc, err), = finish(launch([str(WORKER), "fail", "0", "put", "--", *cli], None))
    assert rc == 1 and "injected failure" in err
    assert len(list((out / ".work" / "layers").glob("layer*.json"))) == 2
    _ok(finish(launch(["-m", "edgeprune", *cli, "--resume"], 2)))
    same_checkpoint(pruned[1] / "comp", out)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_cli(pruned, tmp_path):
    """The user's command: torchrun --nproc-per-node 2 -m edgeprune prune ..."""
    model = SHARED / "models" / "stories260K" / "hf"
    cmd = ["torchrun", "--nproc-per-node", "2", "--master-port", str(_port()), "-m", "edgeprune", "prune",
           "--model", str(model), "--method", "slimgpt", "--out", str(tmp_path / "out"), *CLI_REQUEST]
    p = subprocess.run(cmd, env=_env(None), cwd=ROOT, text=True, capture_output=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-2000:]
    same_checkpoint(pruned[1] / "slimgpt", tmp_path / "out")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the --device cuda path is not exercised here")
@pytest.mark.parametrize("method", list(REGISTRY))
def test_every_method_on_cuda(method):
    """Each method's plan on --device cuda matches the CPU's choices (one process)."""
    need_shared()
    from edgeprune.run.pipeline import calibration, make_plan
    from edgeprune.methods import PruneRequest

    model = SHARED / "models" / "stories260K" / "hf"
    w = calibration(model, "tinystories", 16, 64, 0)
    req = dict(ratio=0.3, progress=False, search_evals=16)
    cpu, _ = make_plan(model, method, PruneRequest(**req), w, "cpu")
    gpu, _ = make_plan(model, method, PruneRequest(**req), w, "cuda")
    assert cpu.removed_layers == gpu.removed_layers
    for i, lp in cpu.layers.items():
        assert (lp.heads_keep, lp.kv_keep, lp.ffn_keep) == (gpu.layers[i].heads_keep, gpu.layers[i].kv_keep,
                                                            gpu.layers[i].ffn_keep), (method, i)


BUILD = ["--target", "cpu-x86", "--method", "slimgpt", "--ratio", "0.3", "--formats", "gguf:f32", "--calib", "tinystories",
         "--nsamples", "16", "--seq-len", "64", "--seed", "0", "--threads", "1", "--quiet"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_build(tmp_path):
    """torchrun --nproc-per-node 2 -m edgeprune build ...: both ranks prune, rank 0 alone writes
    the build (checkpoint, artifact, profile), and its checkpoint is the one-process build's."""
    need_shared()
    pytest.importorskip("llama_cpp", reason="the 'gguf' extra is not installed")
    model = SHARED / "models" / "stories260K" / "hf"
    one = subprocess.Popen([sys.executable, "-m", "edgeprune", "build", "--model", str(model), "--out", str(tmp_path / "b1"),
                            *BUILD], env=_env(None), cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    two = subprocess.Popen(["torchrun", "--nproc-per-node", "2", "--master-port", str(_port()), "-m", "edgeprune", "build",
                            "--model", str(model), "--out", str(tmp_path / "b2"), *BUILD],
                           env=_env(None), cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _ok(finish([one, two]))
    prof = json.loads((tmp_path / "b2" / "profile.json").read_text())
    assert [a["format"] for a in prof["artifacts"]] == ["gguf"] and prof["artifacts"][0]["verify"]["passed"]
    plan = json.loads((tmp_path / "b2" / "model" / "edgeprune_plan.json").read_text())
    assert plan["stats"]["report"]["distributed"]["world_size"] == 2
    assert not (tmp_path / "b2" / ".edgeprune-incomplete").exists()
    same_checkpoint(tmp_path / "b1" / "model", tmp_path / "b2" / "model")


@pytest.mark.slow
def test_search_resumes_from_two_ranks_on_one(pruned, tmp_path):
    """search interrupted on 2 ranks (ladders and candidates done, the re-fit two layers in),
    resumed in one process: the one-process checkpoint (ladder rungs, candidate log and
    finished layers are read from rank 0's work directory whatever the world size)."""
    model = SHARED / "models" / "stories260K" / "hf"
    out = tmp_path / "out"
    cli = ["prune", "--model", str(model), "--method", "search", "--out", str(out), *CLI_REQUEST]
    results = finish(launch([str(WORKER), "fail", "0", "put", "--", *cli], 2))
    assert all(rc != 0 for rc, _ in results) and "injected failure" in results[0][1]
    assert (out / ".work" / "search.json").is_file()
    assert len(list((out / ".work" / "layers").glob("layer*.json"))) == 2
    _ok(finish(launch(["-m", "edgeprune", *cli, "--resume"], None)))
    same_checkpoint(pruned[1] / "search", out)


def test_solve_once_runs_on_its_owner_with_the_nodes_threads(monkeypatch):
    """A dense per-module solve (SlimGPT's OBS, COMP's trajectories) runs on one rank, which
    borrows the intra-op threads of the ranks on its node while they wait; the others take its
    broadcast answer and never run it."""
    from edgeprune import dist

    seen = []
    monkeypatch.setattr(dist, "active", lambda: True)
    monkeypatch.setattr(dist, "broadcast_object", lambda obj, src=0: ("from rank", src, obj))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(dist.os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setattr(dist, "rank", lambda: 1)
        assert dist.solve_once(lambda: seen.append("ran") or 7) == ("from rank", 0, None) and seen == []
        monkeypatch.setattr(dist, "rank", lambda: 0)
        assert dist.solve_once(lambda: seen.append(torch.get_num_threads()) or 7) == ("from rank", 0, 7)
        assert seen == [2] and torch.get_num_threads() == 1  # lent for the solve, given back after
    finally:
        torch.set_num_threads(before)

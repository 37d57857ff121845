"""benchmarks/cuda_layers.py (the script a lent GPU runs) on the CPU at tiny widths: every
method it times runs, and the table and JSON it writes hold a row per method."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, device):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cuda_layers.py"), "--device", device, "--shape", "tiny",
                           "--nsamples", "4", "--seq-len", "16", "--search-evals", "4", "--work", str(tmp_path / "w"),
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.slow  # 3 methods x 2 depths: about a minute on a loaded 2-core machine
def test_cuda_layers_script_runs_on_the_cpu(tmp_path):
    p = _run(tmp_path, "cpu")
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads((tmp_path / "r" / "cuda_layers.json").read_text())
    assert [r["method"] for r in got["rows"]] == ["search", "slimgpt", "comp"] and got["device"] == "cpu"
    for r in got["rows"]:
        assert r["s_full"] >= r["s_2"] > 0 and r["peak_full"] >= r["peak_2"] > 0
    assert "| search |" in p.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the refusal is not what runs")
def test_cuda_layers_refuses_cuda_without_a_device(tmp_path):
    p = _run(tmp_path, "cuda")
    assert p.returncode != 0 and p.stderr.strip().splitlines()[-1].startswith("edgeprune: error:")
    assert not (tmp_path / "r").exists()

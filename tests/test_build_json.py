"""`build --json`: stdout is one JSON document and nothing else (whatever the runtimes print),
and `--quiet` (which --json implies) shows no progress bar, only warnings and errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeprune.run.targets import load_target

pytest.importorskip("llama_cpp", reason="the 'gguf' extra is not installed")


def _gguf_only_target(tmp_path: Path) -> Path:
    """cpu-x86 with its f32 GGUF alone and a ratio budget: the shortest build that still runs
    every stage (prune, export, verify, latency, perplexity, samples, report)."""
    import re

    text = Path(load_target("cpu-x86").path).read_text()
    formats = re.compile(r"^formats = \[.*\]$", re.M)
    assert formats.search(text) and "speedup = 1.2" in text, "cpu-x86.toml changed shape: update this test"
    text = formats.sub('formats = [{ format = "gguf", dtype = "f32" }]', text).replace("speedup = 1.2", "ratio = 0.25")
    p = tmp_path / "gguf-only.toml"
    p.write_text(text)
    return p


@pytest.mark.slow
def test_build_json_is_one_document_and_quiet_has_no_bars(stories, tmp_path):
    """--json implies --quiet (cli.cmd_build): one build checks both."""
    out = tmp_path / "b"
    p = subprocess.run([sys.executable, "-m", "edgeprune.cli.main", "build", "--model", str(stories), "--target",
                        str(_gguf_only_target(tmp_path)), "--method", "magnitude", "--calib", "tinystories",
                        "--nsamples", "4", "--seq-len", "64", "--threads", "1", "--out", str(out), "--json"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    for bar in ("checking weights", "it/s", "\r"):  # tqdm's marks
        assert bar not in p.stderr, f"a progress bar on stderr: {p.stderr[-600:]!r}"
    said = ("edgeprune: warning:", "[edgeprune build] WARNING", "[edgeprune build] note:")
    assert all(line.startswith(said) for line in p.stderr.splitlines() if line.strip()), p.stderr[-1500:]
    doc = json.loads(p.stdout)  # raises on anything but one JSON document (a stray line before or after)
    assert p.stdout.strip().count("\n") == 0 and doc["out"] == str(out)
    assert doc["profile"]["verdict"]["artifacts"][0]["decision"] in ("GO", "NO-GO", "UNCERTAIN")
    assert doc["summary"].startswith("build complete:") and (out / "report.md").is_file()

"""The CLI contract on stories260K: prune -> load -> generate -> eval, and one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import edgeprune
from edgeprune.models import count_parameters, get_adapter
from edgeprune.plan import Plan


def run(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "edgeprune.cli.main", *map(str, args)], capture_output=True, text=True,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    if check and p.returncode != 0:
        raise AssertionError(p.stderr[-2000:])
    return p


@pytest.mark.parametrize("method,args", [("shortgpt", ["--layers", "1"]), ("magnitude", ["--ratio", "0.3"])])
def test_prune_load_generate_eval(stories, tmp_path, method, args):
    out = tmp_path / method
    run("prune", "--model", stories, "--method", method, *args, "--calib", "tinystories", "--out", out, "--quiet",
        "--threads", "1")
    m = edgeprune.load(out)
    ad = get_adapter(m.config)
    plan = Plan.load(out)
    from edgeprune.models import expected_nonembedding

    assert count_parameters(m, ad)["non_embedding"] == expected_nonembedding(get_adapter(edgeprune.io.checkpoint.load_config(stories)), plan.result_shapes(get_adapter(edgeprune.io.checkpoint.load_config(stories))))
    import torch

    assert m.generate(torch.tensor([[1]]), max_new_tokens=8, do_sample=False).shape == (1, 9)
    p = run("eval", "--model", out, "--data", "tinystories", "--seq-len", "256", "--max-windows", "4", "--json", "--threads", "1")
    res = json.loads(p.stdout)
    assert res["perplexity"] > 1 and res["protocol"]["seq_len"] == 256 and res["protocol"]["windows"] == 4


def test_stories_perplexity_matches_reference(stories):
    """The model's own figure on the whole TinyStories validation prefix at window 512 is 5.05."""
    from .conftest import SHARED

    p = run("eval", "--model", stories, "--data", SHARED / "eval/tinystories/tinystories_validation_prefix.txt",
            "--seq-len", "512", "--json", "--threads", "2", "--batch-size", "8")
    assert abs(json.loads(p.stdout)["perplexity"] - 5.05) < 0.01


@pytest.mark.parametrize("args,needle", [
    (["prune", "--model", "/nonexistent/model", "--method", "magnitude", "--ratio", "0.2", "--out", "{tmp}/o"], "does not exist"),
    (["prune", "--model", "{stories}", "--method", "magnitude", "--ratio", "0", "--out", "{tmp}/o"], "outside (0, 1)"),
    (["prune", "--model", "{stories}", "--method", "magnitude", "--ratio", "1.5", "--out", "{tmp}/o"], "outside (0, 1)"),
    (["prune", "--model", "{stories}", "--method", "magnitude", "--ratio", "abc", "--out", "{tmp}/o"], "not a number"),
    (["prune", "--model", "{stories}", "--method", "shortgpt", "--layers", "5", "--calib", "tinystories", "--out", "{tmp}/o"], "at least one"),
    (["prune", "--model", "{stories}", "--method", "comp", "--ratio", "0.2", "--calib", "{tmp}/short.txt", "--out", "{tmp}/o"], "shorter than one window"),
    (["prune", "--model", "{stories}", "--method", "comp", "--ratio", "0.2", "--calib", "{tmp}/empty.txt", "--out", "{tmp}/o"], "empty"),
    (["prune", "--model", "{stories}", "--method", "comp", "--ratio", "0.2", "--calib", "nosuchset", "--out", "{tmp}/o"], "known dataset"),
    (["prune", "--model", "{stories}", "--method", "comp", "--ratio", "0.9", "--layers", "0", "--calib", "tinystories", "--out", "{tmp}/o"], "impossible"),
    (["prune", "--model", "{stories}", "--method", "nosuch", "--ratio", "0.2", "--out", "{tmp}/o"], "unknown method"),
    (["eval", "--model", "{tmp}", "--data", "tinystories"], "config.json"),
])
def test_bad_input_one_line(stories, tmp_path, args, needle):
    (tmp_path / "short.txt").write_text("Once upon a time.")
    (tmp_path / "empty.txt").write_text("")
    args = [a.format(tmp=tmp_path, stories=stories) for a in args]
    p = run(*args, check=False)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert needle in p.stderr, p.stderr
    assert not (tmp_path / "o" / "config.json").exists()


def test_finished_output_refused_without_force(stories, tmp_path):
    out = tmp_path / "o"
    run("prune", "--model", stories, "--method", "magnitude", "--ratio", "0.2", "--out", out, "--quiet")
    p = run("prune", "--model", stories, "--method", "magnitude", "--ratio", "0.2", "--out", out, check=False)
    assert p.returncode == 2 and "already holds a result" in p.stderr and "--force" in p.stderr
    run("prune", "--model", stories, "--method", "magnitude", "--ratio", "0.2", "--out", out, "--force", "--quiet")


def test_inspect_model_and_plan(stories, tmp_path):
    out = tmp_path / "o"
    run("prune", "--model", stories, "--method", "comp", "--ratio", "0.1", "--layers", "0", "--calib", "tinystories",
        "--nsamples", "8", "--out", out, "--quiet")
    p = run("inspect", out, "--json", "--plot", tmp_path / "plan.png")
    d = json.loads(p.stdout)
    assert d["kind"] == "model" and len(d["layers"]) == 5
    assert any(r["tau"] is not None for r in d["plan"]["layers"])
    assert (tmp_path / "plan.png").stat().st_size > 1000

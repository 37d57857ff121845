"""`edgeprune eval --tasks` wiring, offline: an lm-eval task defined over a local file."""
from __future__ import annotations

import json
import random
import re

import pytest

from .test_cli import run

pytest.importorskip("lm_eval", reason="the 'eval' extra (lm-eval) is not installed")

# Written the way a user would: the minimal YAML, Jinja templates, the file as the only split.
TASK_YAML = """task: local_story_ending
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""


@pytest.fixture()
def local_task(stories, tmp_path):
    """Real TinyStories text vs the same words shuffled: a model that read TinyStories must pick
    the real ending nearly always; a wiring error (wrong target, scores reversed) falls to chance."""
    from .conftest import SHARED

    text = (SHARED / "eval/tinystories/tinystories_validation_prefix.txt").read_text()
    rng = random.Random(0)
    rows = []
    for p in text.split("\n\n")[1000:1200]:
        s = re.split(r"(?<=[.!?])\s+", p.strip())
        if len(s) < 3 or len(s[-1].split()) < 5:
            continue
        words = s[-1].split()
        wrong = [" ".join(rng.sample(words, len(words))) for _ in range(3)]
        choices = [s[-1], *wrong]
        rng.shuffle(choices)
        rows.append({"context": " ".join(s[:-1]), "choices": choices, "label": choices.index(s[-1])})
        if len(rows) == 30:
            break
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "local_story_ending.yaml").write_text(TASK_YAML.format(data=json.dumps(str(d / "data.jsonl"))))
    return d


def test_local_task_scores_real_endings(stories, local_task):
    p = run("eval", "--model", stories, "--tasks", "local_story_ending", "--tasks-dir", local_task, "--json",
            "--threads", "1")
    res = json.loads(p.stdout)
    zs = res["zero_shot"]
    assert zs["samples"]["local_story_ending"] == 30
    assert zs["tasks"]["local_story_ending"]["acc"] >= 0.8  # chance is 0.25
    assert "perplexity" not in res  # --tasks alone runs no perplexity


def test_builtin_cloze_with_perplexity(stories):
    p = run("eval", "--model", stories, "--tasks", "tinystories_cloze", "--limit", "20", "--data", "tinystories",
            "--max-windows", "2", "--seq-len", "128", "--json", "--threads", "1")
    res = json.loads(p.stdout)
    assert res["perplexity"] > 1
    assert 0.0 <= res["zero_shot"]["tasks"]["tinystories_cloze"]["acc"] <= 1.0
    assert res["zero_shot"]["samples"]["tinystories_cloze"] == 20


def test_task_errors_are_one_line(stories, tmp_path):
    p = run("eval", "--model", stories, "--tasks", "no_such_task", check=False)
    assert p.returncode == 2 and "unknown lm-eval task" in p.stderr and "--tasks-dir" in p.stderr
    p = run("eval", "--model", stories, "--tasks", "x", "--tasks-dir", tmp_path / "missing", check=False)
    assert p.returncode == 2 and "not a directory" in p.stderr


def test_missing_extra_is_named(stories, monkeypatch):
    import sys

    from edgeprune.errors import MissingExtraError
    from edgeprune.measure.zeroshot import require_lm_eval

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(MissingExtraError, match=r"edgeprune\[eval\]"):
        require_lm_eval()

"""Zero-shot task accuracy through lm-eval (the `eval` extra), for dense and pruned models.

edgeprune loads the model itself (pruned checkpoints with per-layer widths need edgeprune's
classes) and hands the object to lm-eval's `HFLM`, so any task lm-eval knows runs on it:
the papers' BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA (and COMP's LogiQA, MMLU,
SciQ). Those download their data from the Hugging Face hub. Offline, tasks defined over local
files work: `--tasks-dir DIR` adds a folder of lm-eval task YAMLs, and edgeprune ships one
local task, `tinystories_cloze`, built from the TinyStories evaluation portion.
"""
from __future__ import annotations

import json
import random
import re
import tempfile
from pathlib import Path
from typing import Any

from ..errors import DataError, MissingExtraError

LOCAL_TASKS = ("tinystories_cloze",)

_CLOZE_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (needs accelerate)
    except ImportError as e:
        raise MissingExtraError(e.name or "lm_eval", "eval", "zero-shot tasks (--tasks, via lm-eval)") from None
    import lm_eval

    return lm_eval


def build_tinystories_cloze(directory: Path, data_dir=None, n: int = 400, seed: int = 0) -> Path:
    """Write the `tinystories_cloze` task (YAML + JSONL) into `directory`.

    Each item is a TinyStories paragraph without its last sentence; the choices are that
    sentence and the last sentences of three other paragraphs (seeded). Only the evaluation
    portion of the named set is read, so it never overlaps calibration.
    """
    from ..calibrate import data

    text = data.load_text("tinystories", "eval", data_dir)
    paras = []
    for p in text.split("\n\n"):
        sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", p.strip()) if s.strip()]
        if len(sents) >= 3 and len(sents[-1].split()) >= 4:
            paras.append((" ".join(sents[:-1]), sents[-1]))
    if len(paras) < 8:
        raise DataError("the tinystories evaluation portion is too short to build tinystories_cloze")
    rng = random.Random(seed)
    picked = rng.sample(range(len(paras)), min(n, len(paras)))
    rows = []
    for i in picked:
        context, ending = paras[i]
        others = rng.sample([j for j in range(len(paras)) if j != i], 3)
        choices = [ending] + [paras[j][1] for j in others]
        rng.shuffle(choices)
        rows.append({"context": context, "choices": choices, "label": choices.index(ending)})
    directory.mkdir(parents=True, exist_ok=True)
    data_file = directory / "tinystories_cloze.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "tinystories_cloze.yaml").write_text(_CLOZE_YAML.format(name="tinystories_cloze", data=json.dumps(str(data_file))))
    return directory


def _summarise(results: dict[str, Any], tasks: list[str]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} with lm-eval's "acc,none" keys flattened; stderr kept."""
    out: dict[str, dict[str, float]] = {}
    for task in tasks:
        row = results.get(task, {})
        out[task] = {k.split(",")[0]: float(v) for k, v in row.items()
                     if isinstance(v, (int, float)) and not k.startswith(("alias", "sample_len"))}
    return out


def run_tasks(model, tokenizer, tasks: list[str], *, tasks_dir: str | Path | None = None, limit: float | None = None,
              num_fewshot: int | None = None, batch_size: int = 8, device: str = "cpu", data_dir=None,
              seed: int = 0) -> dict[str, Any]:
    """Run lm-eval `tasks` on an already-loaded model; returns scores and the protocol."""
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks = [t.strip() for t in tasks if t.strip()]
    if limit is not None:
        if limit <= 0:
            raise DataError(f"--limit must be positive (got {limit}): items per task, or a fraction below 1")
        limit = int(limit) if limit >= 1 else limit
    if not tasks:
        raise DataError("--tasks is empty; name lm-eval tasks, e.g. --tasks boolq,piqa")
    include: list[str] = []
    if tasks_dir is not None:
        if not Path(tasks_dir).is_dir():
            raise DataError(f"--tasks-dir {tasks_dir} is not a directory; point it at a folder of lm-eval task YAMLs")
        include.append(str(tasks_dir))
    with tempfile.TemporaryDirectory(prefix="edgeprune-tasks-") as tmp:
        if any(t in LOCAL_TASKS for t in tasks):
            include.append(str(build_tinystories_cloze(Path(tmp) / "tinystories_cloze", data_dir, seed=seed)))
        tm = TaskManager(include_path=include or None, verbosity="ERROR")
        unknown = [t for t in tasks if t not in tm.all_tasks]
        if unknown:
            raise DataError(
                f"unknown lm-eval task(s) {', '.join(unknown)}; see `lm_eval --tasks list`, or define a local "
                f"task YAML and pass its folder with --tasks-dir (edgeprune's own: {', '.join(LOCAL_TASKS)})"
            )
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        try:
            res = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit, num_fewshot=num_fewshot,
                                          log_samples=False, random_seed=seed, numpy_random_seed=seed,
                                          torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=1000,
                                          verbosity="ERROR")
        except (ConnectionError, OSError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(
                f"lm-eval could not get the data of {', '.join(tasks)} ({first}); public tasks download from the "
                "Hugging Face hub: run online or with a cached copy, or pass a local task with --tasks-dir"
            ) from None
    return {
        "tasks": _summarise(res["results"], tasks),
        "protocol": {"harness": f"lm-eval {getattr(lm_eval, '__version__', '?')}", "num_fewshot": num_fewshot or 0,
                     "limit": limit, "batch_size": batch_size, "seed": seed},
        "samples": {t: int(v.get("effective", v.get("original", 0))) if isinstance(v, dict) else v
                    for t, v in res.get("n-samples", {}).items()},
    }

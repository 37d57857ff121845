"""The CLI fuzz, grown (issue 26): seeded draws of malformed config.json fields, of the files
edgeprune reads back (plan, profile, build state, verify report) and of the list flags.
Every draw must be refused the way test_bad_inputs' table is: exit 2, one line
`edgeprune: error: ...` naming the field or file, no traceback, nothing created or changed.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from edgeprune.cli.main import main
from tests.test_bad_inputs import PRUNE, _pruned, _snapshot, base  # noqa: F401  (base: the fixture)

MISSING = object()
HUGE = 2**40
# (field, value, what the line names): every value below is wrong for the field.
CONFIG_DRAWS = [
    *((k, v, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
      for v in ("64", -1, 0, 1.5, True, None, [64], HUGE)),
    *((k, MISSING, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")),
    *(("num_key_value_heads", v, "num_key_value_heads") for v in ("2", -2, 0, 1.5, HUGE)),
    ("num_key_value_heads", 3, "not a multiple of num_key_value_heads 3"),
    *(("head_dim", v, "head_dim") for v in ("16", -1, 0, 1.5, HUGE)),
    ("head_dim", 32, "the weights do not match their config"),
    *(("max_position_embeddings", v, "max_position_embeddings") for v in ("256", -1, 0, 1.5)),
    *(("rope_theta", v, "rope_theta") for v in ("1e4", -1, 0, [1])),
    *(("rms_norm_eps", v, "rms_norm_eps") for v in ("x", -1e-5, 0)),
    ("rope_scaling", {"rope_type": "foobar", "factor": 2.0}, "type 'foobar'"),
    ("rope_scaling", {"type": "nope"}, "type 'nope'"),
    ("rope_scaling", "linear", "rope_scaling must be an object"),
    ("model_type", "gpt9", "unsupported architecture 'gpt9'"),
    ("model_type", 5, "model_type must be a string"),
    ("model_type", MISSING, "unsupported architecture"),
    ("torch_dtype", "float13", "torch_dtype 'float13'"),
    ("torch_dtype", 5, "torch_dtype 5"),
    ("tie_word_embeddings", "yes", "tie_word_embeddings must be true or false"),
    ("architectures", "LlamaForCausalLM", "architectures must be a list"),
    ("architectures", ["BertModel"], "not a causal language model"),
]


def _refused(argv: list[str], watch: Path, expected: str, capsys) -> None:
    before = _snapshot(watch)
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith(("edgeprune: error:", "edgeprune prune: error:"))]
    assert rc == 2 and len(errors) == 1 and expected in errors[0], (argv, err)
    assert not any("Traceback" in line for line in err), err
    assert _snapshot(watch) == before, f"files were created, changed or deleted by {argv}"
    assert not any(".partial" in p.name or p.name.endswith("edgeprune-lock") for p in watch.rglob("*")), argv


def test_fuzz_config_fields(base, tmp_path, capsys):
    """Wrong types, negative, zero and huge values, missing keys, unknown rope types and dtypes,
    through prune and through export."""
    rng = random.Random(26)
    for k, (field, value, expected) in enumerate(rng.sample(CONFIG_DRAWS, 24)):
        model = tmp_path / f"m{k}"
        shutil.copytree(base / "good", model)
        cfg = json.loads((model / "config.json").read_text())
        cfg.pop(field) if value is MISSING else cfg.__setitem__(field, value)
        (model / "config.json").write_text(json.dumps(cfg))
        if rng.random() < 0.5:
            argv = [*PRUNE, "--model", str(model), "--calib", str(base / "calib.txt"), "--out", str(tmp_path / f"o{k}")]
        else:
            argv = ["export", str(model), "--format", "gguf", "--out", str(tmp_path / f"m{k}.gguf"), "--quiet"]
        _refused(argv, tmp_path, expected, capsys)


def _cut(text: str, rng: random.Random) -> str:
    return text[: rng.randrange(1, len(text) - 1)]


def _set(doc, path: str, value):
    """A copy of `doc` with the field at `path` ("a.b.0.c") set to `value`."""
    doc = json.loads(json.dumps(doc))
    *head, last = path.split(".")
    d = doc
    for k in head:
        d = d[int(k)] if isinstance(d, list) else d[k]
    if isinstance(d, list):
        d[int(last)] = value
    else:
        d[last] = value
    return doc


def _draws(doc: dict, wrong: list[tuple[str, object]], rng: random.Random, n: int) -> list[str]:
    """`n` malformed versions of `doc`: truncated, empty, of another JSON kind, or one field wrong."""
    text = json.dumps(doc, indent=1)
    pool = [_cut(text, rng), "", "{}", "[]", "null", '"profile"'] + [json.dumps(_set(doc, p, v)) for p, v in wrong]
    return rng.sample(pool, n)


def test_fuzz_plan_files(base, tmp_path, capsys):
    src = _pruned(base, tmp_path / "src") / "edgeprune_plan.json"
    doc = json.loads(src.read_text())
    wrong = [("method", 5), ("num_layers", "2"), ("num_layers", 0), ("removed_layers", "0"), ("removed_layers", [-1]),
             ("removed_layers", [99]), ("layers", []), ("layers.0.ffn_keep", "all"), ("layers.0.heads_keep", [1.5]),
             ("layers.0.stats.target_ratio", "x"), ("format", "other"), ("stats", {"layer_importance": {"0": "high"}})]
    for k, text in enumerate(_draws(doc, wrong, random.Random(261), 10)):
        plan = tmp_path / f"plan{k}.json"
        plan.write_text(text)
        _refused(["inspect", str(plan)], tmp_path, f"{plan} ", capsys)


VALID_PROFILE = {"target": {"name": "cpu-x86", "latency": {"context": 128}}, "provenance": {"host": {}},
                 "artifacts": [{"path": "artifacts/model-q8_0.gguf", "format": "gguf", "dtype": "q8_0",
                                "reference_dense": {"path": "reference/model-q8_0.gguf"}, "speedup": {"decode_ideal": 1.3}}]}


def test_fuzz_profiles(tmp_path, capsys):
    from edgeprune.run.bench import read_profile
    from edgeprune.io.schema import SchemaError

    wrong = [("target.name", 5), ("target.latency.context", 0), ("target.latency.context", "128"), ("artifacts", {}),
             ("artifacts.0", {}), ("artifacts.0.path", None), ("artifacts.0.speedup.decode_ideal", "2x"),
             ("artifacts.0.reference_dense", "reference"), ("provenance", [])]
    (tmp_path / "ok.json").write_text(json.dumps(VALID_PROFILE))
    read_profile(tmp_path / "ok.json")  # the unchanged document passes: each draw fails by its change alone
    (tmp_path / "ok.json").unlink()
    for k, text in enumerate(_draws(VALID_PROFILE, wrong, random.Random(262), 10)):
        b = tmp_path / f"b{k}"
        b.mkdir()
        (b / "profile.json").write_text(text)
        _refused(["bench", str(b)], tmp_path, f"{b / 'profile.json'} is not a valid build profile", capsys)
        with pytest.raises(SchemaError):
            read_profile(b / "profile.json")


def _interrupted_build(tmp: Path, state: dict, report: str | None) -> Path:
    """A build directory as an interrupted build leaves it, holding `state` and, when given, one
    exported artifact with `report` as its verify report."""
    b = tmp / "B"
    (b / "artifacts").mkdir(parents=True)
    (b / ".edgeprune-incomplete").write_text("edgeprune build in progress\n")
    art = b / "artifacts" / "model-q8_0.gguf"
    art.write_bytes(b"GGUF" + bytes(60))
    if report is not None:
        (b / "artifacts" / "model-q8_0.gguf.verify.json").write_text(report)
    (b / "build_state.json").write_text(json.dumps(state) if isinstance(state, dict) else state)
    return b


VALID_REPORT = {"dtype": "q8_0", "passed": True, "max_abs_logit_diff": 0.01, "top1_agreement": 1.0,
                "greedy_tokens_match": True, "perplexity": {"relative_delta": 0.001}}


def _state(b_art: str) -> dict:
    return {"args": {}, "inputs": {}, "done": {"prune": {}, "export": {"pruned:gguf-q8_0": {
        "format": "gguf", "dtype": "q8_0", "path": b_art, "bytes": 64, "verify": VALID_REPORT}}}}


def test_fuzz_build_states_and_verify_reports(base, tmp_path, capsys):
    """build --resume reads build_state.json and trusts every artifact it records as verified:
    a malformed state, a malformed or missing verify report, or a missing artifact is refused."""
    from edgeprune.run.build import _read_state

    rng = random.Random(263)
    argv = ["build", "--model", str(base / "good"), "--calib", str(base / "calib.txt"), "--method", "wanda-sp", "--resume"]
    art = str(tmp_path / "B" / "artifacts" / "model-q8_0.gguf")
    ok = _interrupted_build(tmp_path, _state(art), json.dumps(VALID_REPORT))
    _read_state(ok / "build_state.json")  # the unchanged pair passes
    shutil.rmtree(ok)
    states = _draws(_state(art), [("args", []), ("done", None), ("done.export", []), ("inputs", {"a": 1}),
                                  ("done.export.pruned:gguf-q8_0.path", 5), ("done.dtypes", {"gguf-q8_0": {}})], rng, 5)
    reports = _draws(VALID_REPORT, [("passed", "yes"), ("top1_agreement", "high"), ("perplexity", 0.1),
                                    ("max_abs_logit_diff", -1)], rng, 4)
    cases = [(text, json.dumps(VALID_REPORT), "build_state.json is not a valid build state") for text in states]
    cases += [(None, r, "model-q8_0.gguf.verify.json is not a valid verify report") for r in reports]
    cases += [(None, None, "model-q8_0.gguf.verify.json is missing"), ("gone", json.dumps(VALID_REPORT),
                                                                       "recorded as exported and verified, is missing")]
    for k, (state, report, expected) in enumerate(cases):
        watch = tmp_path / f"w{k}"
        art = str(watch / "B" / "artifacts" / "model-q8_0.gguf")
        state = _state(art) if state is None else _state(art + ".gone") if state == "gone" else state
        b = _interrupted_build(watch, state, report)
        _refused([*argv, "--out", str(b)], watch, expected, capsys)


@pytest.mark.parametrize("flag,value,expected", [
    ("--protect", "a,b", "argument --protect: 'a' is not a layer index"),
    ("--protect", "1.5", "'1.5' is not a layer index"),
    ("--protect", ",", "no layer index given"),
    ("--protect", "99", "--protect 99: the model has 2 layers"),
    ("--protect", "-3", "--protect -3: the model has 2 layers"),
    ("--layers", "abc", "argument --layers: 'abc' is not a whole number"),
    ("--layers", "-1", "--layers must be >= 0"),
    ("--layers", "1.5", "'1.5' is not a whole number"),
    ("--layers", "2", "cannot remove 2 of 2 layers"),
    ("--layers", "99", "cannot remove 99 of 2 layers"),
])
def test_fuzz_list_flags(flag, value, expected, base, tmp_path, capsys):
    method = "shortgpt" if flag == "--layers" else "flap"
    argv = ["prune", "--method", method, "--model", str(base / "good"), "--calib", str(base / "calib.txt"),
            "--out", str(tmp_path / "o"), "--nsamples", "4", "--seq-len", "32", "--quiet", f"{flag}={value}"]
    argv += [] if flag == "--layers" else ["--ratio", "0.2"]
    _refused(argv, tmp_path, expected, capsys)

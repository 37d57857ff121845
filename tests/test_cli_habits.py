"""The CLI's habits: every --help describes its command and shows its defaults; build
--dry-run resolves everything and creates nothing; --formats is validated; targets --json."""
from __future__ import annotations

import argparse
import json
import os

import pytest

from edgeprune.cli.main import main
from edgeprune.cli.args import SUBCOMMANDS, build_parser


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = build_parser({name: (lambda a: 0) for name in SUBCOMMANDS})
    act = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(act.choices)


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_help_has_a_description_and_its_defaults(name, capsys):
    sp = _subparsers()[name]
    assert sp.description and len(sp.description) > 20, name
    for a in sp._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        assert a.help, f"{name} {a.option_strings or a.dest} has no help"
        if a.option_strings and a.default not in (None, False, argparse.SUPPRESS):
            assert "default" in sp.formatter_class("x")._get_help_string(a), f"{name} {a.option_strings} hides its default"
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert sp.description.split()[0] in out


def test_build_help_says_the_target_decides_ratio_and_method(capsys):
    main(["build", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--ratio", "--method", "--align", "--formats"):
        after = out.split(flag, 2)[-1][:400]
        assert "the target's value" in after, flag


def _snapshot(root) -> list:
    return sorted((str(p), p.stat().st_size) for p in root.rglob("*")) if root.exists() else []


def test_dry_run_creates_nothing(tiny_models, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(cache))
    before_model = _snapshot(tiny_models["llama"])
    out = tmp_path / "build"
    # the demo model is not cached: reported, not trained
    assert main(["build", "--dry-run", "--out", str(out)]) == 0
    assert "not cached" in capsys.readouterr().out
    assert main(["build", "--dry-run", "--json", "--model", str(tiny_models["llama"]), "--target", "cpu-x86",
                 "--formats", "gguf:q8_0,onnx:f32", "--calib", "demo", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dry_run"] and res["method"] == "search" and res["ratio"] is None  # cpu-x86: speedup = 1.2
    assert res["budget"] == {"kind": "speedup", "requested": 1.2} and "latency model" in res["ratio_reason"]
    assert [(a["format"], a["dtype"]) for a in res["artifacts"]] == [("gguf", "q8_0"), ("onnx", "f32")]
    assert all(a["estimated_bytes"] > 0 for a in res["artifacts"]) and res["estimate"]["plan_flop"] > 0
    assert not out.exists() and os.listdir(cache) == []
    assert _snapshot(tiny_models["llama"]) == before_model


@pytest.mark.parametrize("spec, why", [("gguf:q9", "not a gguf dtype"), ("tflite:f32", "not FORMAT:DTYPE"),
                                       ("gguf", "not FORMAT:DTYPE"), ("onnx:q8_0", "not a onnx dtype")])
def test_formats_is_validated_in_one_line(spec, why, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["build", "--dry-run", "--formats", spec, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgeprune: error: --formats") and why in err[0]
    assert not out.exists()


def test_targets_json_has_every_setting(capsys):
    assert main(["targets", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    names = {t["name"] for t in res["targets"]}
    assert {"cpu-x86", "raspberry-pi-5", "jetson-orin-nano"} <= names
    for t in res["targets"]:
        assert t["artifacts"]["formats"] and t["hardware"]["bandwidth_gb_s"] > 0 and ("ratio" in t["pruning"]) != ("speedup" in t["pruning"])


def test_third_party_logs_quiet_unless_verbose(monkeypatch):
    from edgeprune.cli.main import _third_party_logs

    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    monkeypatch.setenv("EDGEPRUNE_VERBOSE", "")  # restored after the test
    _third_party_logs(False)
    assert os.environ["EDGEPRUNE_VERBOSE"] == "" and os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    _third_party_logs(True)
    assert os.environ["EDGEPRUNE_VERBOSE"] == "1"


@pytest.mark.parametrize("loud", [False, True])
def test_llama_cpp_warnings_only_with_verbose(loud, tiny_models, tmp_path, monkeypatch, capfd):
    """A latency probe with per-layer KV widths makes llama.cpp warn "padding V cache" (a WARN
    that llama-cpp-python's own callback lets through): quiet by default, shown under -v."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from edgeprune.io.checkpoint import load_config
    from edgeprune.measure.latency import _session
    from edgeprune.measure.latency_probe import write_probe
    from edgeprune.models import LayerShape, get_adapter

    monkeypatch.setenv("EDGEPRUNE_VERBOSE", "1" if loud else "")
    ad = get_adapter(load_config(tiny_models["llama"]))
    d = ad.layer_shapes()[0]
    half = LayerShape(d.intermediate_size // 2, d.num_heads // 2, d.num_kv_heads // 2)
    path = write_probe(ad, "gguf", "f32", [d, half], tmp_path / "probe", 64)
    capfd.readouterr()
    _session(path, 16, 2, 1).timed_run(__import__("numpy").arange(8), 2)
    err = capfd.readouterr().err
    assert ("padding V cache" in err) == loud, err[-400:]


def test_provenance_command_is_what_the_user_types(monkeypatch):
    """`python -m edgeprune` leaves __main__.py's path in argv[0]: provenance records `edgeprune ...`."""
    from edgeprune.cli.build_commands import command_line

    monkeypatch.setattr("sys.argv", ["/site/edgeprune/__main__.py", "build", "--out", "my build"])
    assert command_line() == "edgeprune build --out 'my build'"

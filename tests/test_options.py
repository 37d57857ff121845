"""Method options are declared once (methods/registry.py) and everything else is generated:
the prune / build flags, the target's [pruning] keys, the request's values, the build's
resume arguments. Cheap: no model is pruned."""
from pathlib import Path

import pytest

from edgeprune.cli.args import build_parser
from edgeprune.errors import PlanError
from edgeprune.methods import BUILD_OPTIONS, OPTIONS, READERS, REGISTRY
from edgeprune.methods.base import PruneRequest

TARGETS = Path(__file__).resolve().parent.parent / "targets"


def _parser():
    return build_parser({k: None for k in ("eval", "prune", "export", "build", "bench", "inspect", "targets", "sweep")})


def test_every_declared_option_with_a_flag_is_a_prune_flag_read_by_a_method():
    helps = {a.dest: a for a in _parser()._subparsers._group_actions[0].choices["prune"]._actions}
    for name, o in OPTIONS.items():
        assert READERS[name], name  # declared by at least one method
        if o.switch is None:
            assert name not in helps
            continue
        assert o.switch in helps[name].option_strings
        assert helps[name].default == o.default  # the prune default is the declaration's


def test_build_options_are_build_and_sweep_flags_defaulting_to_the_target():
    assert "search_evals" in BUILD_OPTIONS
    for cmd in ("build", "sweep"):
        args = _parser().parse_args([cmd])
        assert all(getattr(args, n) is None for n in BUILD_OPTIONS)  # None: the target's value, else the default
        args = _parser().parse_args([cmd, "--search-evals", "7"])
        assert args.search_evals == 7


def test_a_bad_value_is_one_argparse_line(capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["prune", "--out", "x", "--search-evals", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("edgeprune: error: argument --search-evals") and ">= 1" in err


def test_request_fills_defaults_takes_keywords_and_refuses_unknown_names():
    r = PruneRequest(ratio=0.2, search_evals=8)
    assert r.search_evals == 8 and r.damp == OPTIONS["damp"].default and r.options["search_evals"] == 8
    with pytest.raises(TypeError, match="serch_evals"):
        PruneRequest(ratio=0.2, serch_evals=8)
    with pytest.raises(PlanError, match="importance"):
        PruneRequest(importance="bogus")
    with pytest.raises(AttributeError):
        r.not_an_option


def _target(tmp_path, line: str) -> Path:
    text = (TARGETS / "cpu-x86.toml").read_text().replace("[pruning]", f"[pruning]\n{line}", 1)
    p = tmp_path / "t.toml"
    p.write_text(text)
    return p


def test_a_target_sets_a_build_option_checked_by_its_declaration(tmp_path):
    from edgeprune.run.build import method_options
    from edgeprune.run.targets import TargetError, load_target

    t = load_target(_target(tmp_path, "search_evals = 16"))
    assert method_options(t, {})["search_evals"] == 16
    assert method_options(t, {"search_evals": 4})["search_evals"] == 4  # the flag wins
    assert method_options(load_target(TARGETS / "cpu-x86.toml"), {})["search_evals"] == OPTIONS["search_evals"].default
    with pytest.raises(TargetError, match="pruning.search_evals must be a whole number >= 1"):
        load_target(_target(tmp_path, "search_evals = 0"))
    with pytest.raises(TargetError, match="unknown key 'pruning.damp'"):  # not a build option: no target key
        load_target(_target(tmp_path, "damp = 0.1"))


def test_only_registered_methods_declare_options():
    declared = {o.name for m in REGISTRY.values() for o in m.options}
    assert declared == set(OPTIONS)


def test_the_ipr_schedule_is_declared_read_and_recorded(tiny_models):
    """SlimGPT's layer schedule is a declared option (its choices SlimGPT's schedules), read as
    `req.ipr` by both methods that use it and recorded in their plans."""
    import torch

    from edgeprune.methods.slimgpt import SCHEDULES
    from edgeprune.run.pipeline import make_plan

    o = OPTIONS["ipr"]
    assert set(o.choices) == set(SCHEDULES) and o.default == "log" and READERS["ipr"] == ["slimgpt", "comp-slimgpt"]
    with pytest.raises(PlanError, match="ipr must be one of log, linear, uniform"):
        PruneRequest(ratio=0.2, ipr="cubic")
    windows = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    for method in ("slimgpt", "comp-slimgpt"):
        for schedule in ("log", "uniform"):
            req = PruneRequest(ratio=0.2, progress=False, ipr=schedule)
            assert make_plan(tiny_models["llama"], method, req, windows)[0].options["ipr"] == schedule

"""The README and docs/ name only what exists: repository files, `edgeprune` subcommands and
their flags, benchmark scripts and theirs, methods, targets and dtypes. The names are read
from the CLI's parser builder, the method registry, the dtype table and the targets, so a
renamed flag or a deleted file fails here instead of misleading a reader."""
from __future__ import annotations

import argparse
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("edgeprune/", "exporters/", "benchmarks/", "tests/", "targets/", "docs/", ".ci/")
GENERATED = ("benchmarks/work/",)  # written by the benchmarks when they run
# flags of the other tools the docs show (pip, pytest, llama.cpp's programs)
OTHER_TOOLS = re.compile(r"^\s*(pip|pytest|python -m pytest|llama-cli|llama-server|llama-imatrix|yes|/usr/bin/time)\b")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


@lru_cache(maxsize=1)
def edgeprune_flags() -> dict[str, set[str]]:
    from edgeprune.cli.args import SUBCOMMANDS, build_parser

    p = build_parser({n: (lambda a: 0) for n in SUBCOMMANDS})
    act = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    out = {n: {o for a in sp._actions for o in a.option_strings} for n, sp in act.choices.items()}
    out[""] = {o for a in p._actions for o in a.option_strings}
    return out


@lru_cache(maxsize=None)
def script_flags(path: str) -> set[str]:
    text = (ROOT / path).read_text()
    return set(re.findall(r"add_argument\(\s*[\"'](--[\w-]+)", text)) | {"--help"}


@lru_cache(maxsize=1)
def names() -> dict[str, set[str]]:
    from exporters.dtypes import ALIASES, allowed
    from exporters.formats import names as format_names
    from edgeprune.methods import REGISTRY
    from edgeprune.run.targets import list_targets

    dtypes = {d for f in format_names() for d in allowed(f)} | set(ALIASES) | {"bf16", "f16", "f32"}
    targets = {t["name"] for t in list_targets()} | {a for t in list_targets() for a in t["aliases"]}
    return {"method": set(REGISTRY), "dtype": dtypes, "target": targets}


def _code(text: str) -> list[str]:
    """Every command-like piece of text: fenced block lines (continuations joined) and inline spans."""
    out, fence = [], False
    buf = ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fence = not fence
            continue
        if fence:
            buf += line.rstrip("\\") + " " if line.rstrip().endswith("\\") else line
            if not line.rstrip().endswith("\\"):
                out.append(buf.split("  #")[0])
                buf = ""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    out += re.findall(r"`([^`\n]+)`", prose)
    return out


def _check_value(kind: str, value: str, where: str) -> list[str]:
    problems = []
    for v in re.split(r"[|,]", value):
        v = v.strip()
        if not v or v.isupper() or v.startswith(("<", "$", "...")) or v.endswith(".toml") or v == "...":
            continue  # a placeholder (NAME, DTYPE) or a path
        if kind == "dtype" and ":" in v:
            continue
        if v not in names()[kind]:
            problems.append(f"{where}: unknown {kind} {v!r}")
    return problems


def check_line(line: str, where: str) -> list[str]:
    """What is wrong with one piece of code text (empty when every name in it exists)."""
    problems: list[str] = []
    s = line.strip()
    m = re.match(r"^(?:python -m )?edgeprune\s+([a-z][\w-]*)(.*)$", s)
    if OTHER_TOOLS.match(s):
        return problems
    if m:
        cmd, rest = m.groups()
        flags = edgeprune_flags()
        if cmd not in flags:
            return [f"{where}: `edgeprune {cmd}` is not a subcommand ({', '.join(sorted(set(flags) - {''}))})"]
        problems += [f"{where}: `edgeprune {cmd}` has no flag {f}" for f in FLAG.findall(rest) if f not in flags[cmd]]
    b = re.match(r"^python\s+(benchmarks/[\w.]+\.py)(.*)$", s)
    if b:
        script, rest = b.groups()
        if not (ROOT / script).is_file():
            return [f"{where}: {script} does not exist"]
        problems += [f"{where}: {script} has no flag {f}" for f in FLAG.findall(rest) if f not in script_flags(script)]
        for v in re.findall(r"--methods\s+([\w,-]+)", rest):  # registered, or the script's own variants
            text = (ROOT / script).read_text()
            problems += [p for p in _check_value("method", v, where) if f'"{p.split(chr(39))[1]}"' not in text]
    if s.startswith("--"):  # a flag named in prose
        known = set().union(*edgeprune_flags().values(), *(script_flags(str(p.relative_to(ROOT)))
                                                           for p in (ROOT / "benchmarks").glob("*.py")))
        f = FLAG.match(s)
        if f and f.group(1) not in known:
            problems.append(f"{where}: no command has the flag {f.group(1)}")
    for kind in ("method", "target", "dtype"):
        for v in re.findall(rf"--{kind}[ =]([\w.|/-]+)", s):
            problems += _check_value(kind, v, where)
    for v in re.findall(r"\bmethod=[\"']([\w-]+)[\"']", s):  # the Python API's keyword
        problems += _check_value("method", v, where)
    for v in re.findall(r"\bedgeprune\.(\w+)\(", s):  # a function of the Python API
        import edgeprune

        if not hasattr(edgeprune, v):
            problems.append(f"{where}: the Python API has no edgeprune.{v}")
    for v in re.findall(r"--formats[ =]([\w:,]+)", s):
        from edgeprune.errors import EdgePruneError
        from edgeprune.run.target_formats import with_formats
        from edgeprune.run.targets import load_target

        try:
            with_formats(load_target("cpu-x86"), v)
        except EdgePruneError as e:
            problems.append(f"{where}: {e}")
    return problems + check_paths(s, where)


def check_paths(s: str, where: str, base: Path = ROOT) -> list[str]:
    problems = []
    for tok in re.findall(r"(?<![\w./-])((?:edgeprune|exporters|benchmarks|tests|targets|docs|\.ci)/[\w./-]*[\w/])", s):
        tok, _, test = tok.partition("::")
        if tok.startswith(GENERATED):
            continue
        if not (ROOT / tok).exists():
            problems.append(f"{where}: {tok} does not exist in the repository")
    for f, test in re.findall(r"(tests/[\w/]+\.py)::(\w+)", s):
        if (ROOT / f).is_file() and f"def {test}(" not in (ROOT / f).read_text():
            problems.append(f"{where}: {f} has no test {test}")
    return problems


def check_links(text: str, page: Path) -> list[str]:
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            problems.append(f"{page.name}: link {target} points at nothing")
    return problems


def check_page(page: Path) -> list[str]:
    text = page.read_text()
    rel = page.relative_to(ROOT)
    problems = check_links(text, page)
    for i, piece in enumerate(_code(text)):
        problems += check_line(piece, f"{rel}")
    return problems


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_only_what_exists(page):
    problems = check_page(page)
    assert not problems, "\n".join(problems)


def test_readme_fits_on_a_page_and_links_every_docs_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in text, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("bad, why", [
    ("edgeprune build --ratio 0.2 --no-such-flag", "no flag --no-such-flag"),
    ("edgeprune compress --model x", "not a subcommand"),
    ("edgeprune prune --method sparsegpt --ratio 0.2 --out p/", "unknown method 'sparsegpt'"),
    ("edgeprune build --target jetson-nano-9000", "unknown target"),
    ("edgeprune export m --format gguf --dtype q3_k --out m.gguf", "unknown dtype 'q3_k'"),
    ("edgeprune build --formats gguf:q9", "not a gguf dtype"),
    ("python benchmarks/quality.py --no-such-option 1", "has no flag"),
    ("python benchmarks/nothing.py", "does not exist"),
    ("see edgeprune/nowhere.py", "does not exist in the repository"),
    ("tests/test_build.py::test_that_was_never_written", "has no test"),
    ("--frobnicate", "no command has the flag"),
    ('edgeprune.prune("m", method="sparsegpt", ratio=0.2)', "unknown method 'sparsegpt'"),
    ('model = edgeprune.load_pruned("build/model")', "no edgeprune.load_pruned"),
])
def test_the_check_fails_on_a_bad_line(bad, why):
    problems = check_line(bad, "x")
    assert any(why in p for p in problems), problems


def test_a_good_line_passes():
    assert check_line("edgeprune build --target raspberry-pi-5 --ratio 0.2 --method slimgpt --out build/", "x") == []
    assert check_line('model = edgeprune.load("build/model")', "x") == []
    assert check_links("[a](docs/METHODS.md#why)", ROOT / "README.md") == []
    assert check_links("[a](docs/NOPE.md)", ROOT / "README.md")


def test_the_targets_page_names_every_optional_key():
    """docs/TARGETS.md says which keys a target may leave out: each optional key of the table
    (`run/target_keys.py: KEYS`; the method options by their rule, not one by one)."""
    from edgeprune.run.target_keys import KEYS

    text = (ROOT / "docs" / "TARGETS.md").read_text()
    missing = [k.path for k in KEYS if k.optional and k.option is None and f"`{k.path}`" not in text]
    assert not missing, f"docs/TARGETS.md does not name the optional key(s) {', '.join(missing)}"

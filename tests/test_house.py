"""The house rules a reviewer checks by reading, checked here so they stay true: no import
cycle between the modules of `edgeprune/` and `exporters/` (imports inside functions count:
a lazy import is still a dependency), no module over the size the project allows and no
function over its length unless it says why."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edgeprune", "exporters")
SIZED = (*PACKAGES, "benchmarks")  # the folders whose modules and functions are held to the sizes below
MAX_MODULE_LINES = 300
# A longer function carries `# long: <reason>` on its `def` line, the line above it or another
# line of its signature.
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    return mods


def _targets(mods: dict[str, Path], cur: str, node: ast.AST) -> list[str]:
    """The project modules one import statement of module `cur` reads."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = cur.split(".") if mods[cur].name == "__init__.py" else cur.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    out = []
    for n in names:
        while n and n not in mods:
            n = n.rpartition(".")[0]
        if n and n != cur:
            out.append(n)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "module", None) != "__future__":
                graph[m].update(_targets(mods, m, node))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_a_lazy_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_the_modules():
    found = cycles(import_graph())
    assert not found, "import cycles (lazy imports count): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_core_does_not_import_the_exporters():
    """Upstream stages (load, calibrate, plan, apply) never reach downstream to `exporters`."""
    graph = import_graph()
    core = [m for m in graph if m.split(".")[1:2] and m.split(".")[1] in ("io", "calibrate", "methods", "apply", "models")]
    bad = sorted(f"{m} -> {t}" for m in core for t in graph[m] if t.startswith("exporters"))
    assert not bad, bad


def test_every_module_imports():
    """A name moved between modules leaves no stale `from .x import name` behind (pyflakes does
    not see those). A missing optional third-party package is not this test's business."""
    import importlib
    import pkgutil

    broken = []
    for pkg in PACKAGES:
        for info in pkgutil.walk_packages([str(ROOT / pkg)], f"{pkg}."):
            try:
                importlib.import_module(info.name)
            except ImportError as e:
                if e.name is None or e.name.split(".")[0] in PACKAGES:
                    broken.append(f"{info.name}: {e}")
    assert not broken, broken


def _sized_sources() -> list[Path]:
    return sorted(p for d in SIZED for p in (ROOT / d).rglob("*.py"))


def long_functions(text: str) -> list[tuple[str, int, int]]:
    """(name, line, length) of every function (nested ones too) over `MAX_FUNCTION_LINES`,
    counted from its `def` line to its last, whose signature has no `# long:` reason."""
    lines = text.splitlines()
    out = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = node.end_lineno - node.lineno + 1
        header = lines[max(0, node.lineno - 2): max(node.lineno, node.body[0].lineno - 1)]
        if length > MAX_FUNCTION_LINES and not any("# long:" in line for line in header):
            out.append((node.name, node.lineno, length))
    return out


def test_the_length_check_reads_the_reason_on_the_signature():
    def body(n: int) -> str:
        return "".join(f"    x = {i}\n" for i in range(n))

    over = body(MAX_FUNCTION_LINES)  # with its def line, one line over
    assert [(n, k) for n, _, k in long_functions(f"def f():\n{over}")] == [("f", MAX_FUNCTION_LINES + 1)]
    assert long_functions(f"def f():  # long: a table\n{over}") == []
    assert long_functions(f"# long: a table\ndef f():\n{over}") == []
    assert long_functions(f"def f(a,\n      b):  # long: a table\n{over}") == []
    assert long_functions(f"def f():\n{body(MAX_FUNCTION_LINES - 1)}") == []
    assert long_functions(f"def f():\n{over}# long: not the signature\n    y = 1\n") != []


def test_no_module_is_over_the_size_the_project_allows():
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in _sized_sources()
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not big, f"over {MAX_MODULE_LINES} lines (split the module): " + "; ".join(big)


def test_no_function_is_over_its_length_without_a_reason():
    found = [f"{p.relative_to(ROOT)}:{line} {name} ({n} lines)" for p in _sized_sources()
             for name, line, n in long_functions(p.read_text())]
    assert not found, (f"over {MAX_FUNCTION_LINES} lines without a `# long: <reason>` on the signature: "
                       + "; ".join(found))

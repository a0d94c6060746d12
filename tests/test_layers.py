"""Layers point down only, and no two modules import each other (however lazily).

    kernel (cnmlab.kernel)  <  engine (the rest of cnmlab)  <  checks (cnmlab.checks)
        <  workshop (cnmlab.workshop)  <  tui (cnmlab.tui)  <  cli (cnmlab.cli)

plus ``cnmlab.errors`` underneath everything. A module may import its own layer and the layers
below it. Every ``import`` statement counts wherever it is written (module level, inside a
function, under ``if TYPE_CHECKING:``) and so do ``importlib.import_module("...")`` and
``__import__("...")`` with a literal name: a lazy import still is a dependency, and a lazy
import that closes a cycle is exactly what this test exists to refuse. Imports whose module
name is computed at run time (a lab's own Python check) cannot be seen and are not counted.

Plain ``ast``, no third-party tool: the rules are short and the messages name ``file:line``.
"""
from __future__ import annotations

import ast
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# import package -> folder, as pyproject's [tool.setuptools.package-dir] maps them
ROOTS = {"cnmlab": "cnmlab", "cnmlab.checks": "checks", "cnmlab.tui": "tui"}
# (layer, module prefixes), bottom first; the most specific prefix decides a module's layer
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("cnmlab.errors",)),
    ("kernel", ("cnmlab.kernel",)),
    ("engine", ("cnmlab",)),
    ("checks", ("cnmlab.checks",)),
    ("workshop", ("cnmlab.workshop",)),
    ("tui", ("cnmlab.tui",)),
    ("cli", ("cnmlab.cli",)),
]


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported module
    path: str  # file of src, relative to the tree's root
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def discover(root: Path, roots: dict[str, str] = ROOTS) -> dict[str, Path]:
    """Module name -> file for every .py under the mapped folders (packages as ``__init__``)."""
    found: dict[str, Path] = {}
    for package, folder in roots.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            # a folder mapped on its own (checks/ -> cnmlab.checks) is not also part of cnmlab/
            owner = max((p for p in roots if name == p or name.startswith(p + ".")), key=len)
            if owner == package:
                found[name] = path
    return found


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> tuple[int, str]:
    best: tuple[int, int, str] | None = None  # (prefix length, rank, layer)
    for rank, (layer, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank, layer)
    if best is None:
        raise ValueError(f"{module} is in no layer")
    return best[1], best[2]


def _literal_import(node: ast.Call) -> str | None:
    """``importlib.import_module("x")`` / ``import_module("x")`` / ``__import__("x")``."""
    fn = node.func
    name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def imports_of(module: str, path: Path, source: str, known: set[str], rel_to: Path) -> list[Edge]:
    """Edges from ``module`` to the known modules it imports, with their lines."""
    tree = ast.parse(source, filename=str(path))
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    shown = os.path.relpath(path, rel_to)
    out: list[Edge] = []

    def add(target: str, line: int) -> None:
        # the deepest known module the name points into (``cnmlab.kernel.netlink.Netlink`` ->
        # ``cnmlab.kernel.netlink``)
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != module:
            out.append(Edge(module, target, shown, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                full = f"{mod}.{alias.name}"
                add(full if full in known else mod, node.lineno)
        elif isinstance(node, ast.Call):
            name = _literal_import(node)
            if name:
                add(name, node.lineno)
    return out


def check(modules: dict[str, tuple[Path, str]], rel_to: Path,
          layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> list[str]:
    """Every upward import and every import cycle, one message each (``file:line: ...``)."""
    known = set(modules)
    edges = [e for name, (path, src) in sorted(modules.items())
             for e in imports_of(name, path, src, known, rel_to)]
    problems = []
    for e in edges:
        src_rank, src_layer = layer_of(e.src, layers)
        dst_rank, dst_layer = layer_of(e.dst, layers)
        if dst_rank > src_rank:
            problems.append(f"{e.where()}: {e.src} ({src_layer}) imports {e.dst} ({dst_layer}), "
                            f"a higher layer: move the shared code down or invert the call")
    for cycle in cycles(edges):
        steps = " -> ".join(f"{e.src} ({e.where()})" for e in cycle)
        problems.append(f"{cycle[0].where()}: import cycle {steps} -> {cycle[0].src}")
    return problems


def cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected group of modules (Tarjan)."""
    graph: dict[str, list[Edge]] = {}
    for e in edges:
        graph.setdefault(e.src, []).append(e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for e in graph.get(v, []):
            if e.dst not in index:
                visit(e.dst)
                low[v] = min(low[v], low[e.dst])
            elif e.dst in on_stack:
                low[v] = min(low[v], index[e.dst])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for group in groups:
        start = min(group)
        path = _path_back(graph, start, group)
        out.append(path)
    return out


def _path_back(graph: dict[str, list[Edge]], start: str, group: set[str]) -> list[Edge]:
    """The shortest cycle through ``start`` inside ``group`` (breadth first)."""
    prev: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for e in sorted(graph.get(v, []), key=lambda e: e.dst):
                if e.dst not in group:
                    continue
                if e.dst == start:
                    path = [e]
                    while path[0].src != start:
                        path.insert(0, prev[path[0].src])
                    return path
                if e.dst not in prev:
                    prev[e.dst] = e
                    nxt.append(e.dst)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def load_tree(root: Path, roots: dict[str, str] = ROOTS) -> dict[str, tuple[Path, str]]:
    return {name: (path, path.read_text()) for name, path in discover(root, roots).items()}


# ---- the real tree ----------------------------------------------------------------------------

def test_layers_point_down_and_no_cycles():
    modules = load_tree(REPO)
    assert "cnmlab.kernel.netlink" in modules and "cnmlab.workshop.runner" in modules
    assert "cnmlab.checks.api" in modules and "cnmlab.tui.app" in modules
    problems = check(modules, REPO)
    assert not problems, "\n".join(problems)


def test_every_module_has_a_layer():
    for name in load_tree(REPO):
        layer_of(name)


def test_no_raw_netlink_outside_the_kernel_layer():
    """Netlink sockets and rtnetlink wire formats are the kernel layer's alone."""
    needles = ("AF_NETLINK", "NETLINK_ROUTE", "import pyroute2", "from pyroute2")
    offenders = []
    for name, (path, src) in load_tree(REPO).items():
        if name.startswith("cnmlab.kernel."):
            continue
        for lineno, line in enumerate(src.splitlines(), 1):
            if any(n in line for n in needles):
                offenders.append(f"{os.path.relpath(path, REPO)}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_one_dns_codec():
    """The DNS wire format is dnslib's, reached through cnmlab.dnswire and nowhere else."""
    users = sorted(name for name, (path, src) in load_tree(REPO).items()
                   if "import dnslib" in src or "from dnslib" in src)
    assert users == ["cnmlab.dnswire"]


# ---- the checker catches what it exists to catch ---------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return tmp_path


FAKE = {
    "cnmlab/__init__.py": "",
    "cnmlab/errors.py": "class CnmError(Exception): ...\n",
    "cnmlab/kernel/__init__.py": "",
    "cnmlab/kernel/netns.py": "from cnmlab.errors import CnmError\n",
    "cnmlab/lab.py": "from cnmlab.kernel import netns\n",
    "cnmlab/workshop/__init__.py": "",
    "cnmlab/workshop/runner.py": "from cnmlab.lab import Lab\nfrom cnmlab.checks import api\n",
    "checks/__init__.py": "",
    "checks/api.py": "from cnmlab import lab\n",
    "tui/__init__.py": "",
    "tui/app.py": "from cnmlab.workshop import runner\n",
    "cnmlab/cli.py": "from cnmlab.tui import app\n",
}


def test_a_clean_fake_tree_passes(tmp_path):
    root = _tree(tmp_path, FAKE)
    assert check(load_tree(root), root) == []


@pytest.mark.parametrize("where, line, text, target", [
    # kernel -> engine, written lazily inside a function
    ("cnmlab/kernel/netns.py", 3, "def f():\n    from cnmlab.lab import Lab\n", "cnmlab.lab"),
    # engine -> checks, only for type hints
    ("cnmlab/lab.py", 3, "if TYPE_CHECKING:\n    from cnmlab.checks.api import Target\n",
     "cnmlab.checks.api"),
    # checks -> workshop through importlib
    ("checks/api.py", 3, "import importlib\nimportlib.import_module('cnmlab.workshop.runner')\n",
     "cnmlab.workshop.runner"),
    # engine -> tui, relative
    ("cnmlab/lab.py", 2, "from .tui import app\n", "cnmlab.tui.app"),
])
def test_an_upward_import_is_reported_by_file_and_line(tmp_path, where, line, text, target):
    files = dict(FAKE)
    files[where] = files[where] + text
    root = _tree(tmp_path, files)
    problems = check(load_tree(root), root)
    upward = [p for p in problems if "a higher layer" in p]
    assert len(upward) == 1, problems
    assert upward[0].startswith(f"{where}:{line}: ")
    assert f"imports {target} (" in upward[0]
    # going back down from there closes a loop, which is reported as a cycle too
    assert all("a higher layer" in p or "import cycle" in p for p in problems)


def test_an_upward_import_injected_into_the_real_tree_is_reported():
    modules = load_tree(REPO)
    path, src = modules["cnmlab.kernel.netlink"]
    modules["cnmlab.kernel.netlink"] = (path, src + "\nfrom cnmlab.workshop import runner\n")
    line = len(src.splitlines()) + 2
    before = set(check(load_tree(REPO), REPO))
    new = [p for p in check(modules, REPO) if p not in before]
    assert new and new[0].startswith(f"cnmlab/kernel/netlink.py:{line}: cnmlab.kernel.netlink "
                                     "(kernel) imports cnmlab.workshop.runner (workshop)"), new


def test_a_lazy_import_cycle_is_reported(tmp_path):
    files = dict(FAKE)
    files["cnmlab/driverapi.py"] = "def _builtin():\n    from cnmlab.drivers import bridge\n"
    files["cnmlab/drivers/__init__.py"] = ""
    files["cnmlab/drivers/bridge.py"] = "from cnmlab.driverapi import Capability\n"
    root = _tree(tmp_path, files)
    problems = check(load_tree(root), root)
    assert problems == [
        "cnmlab/driverapi.py:2: import cycle cnmlab.driverapi (cnmlab/driverapi.py:2) -> "
        "cnmlab.drivers.bridge (cnmlab/drivers/bridge.py:1) -> cnmlab.driverapi"]


def test_a_folder_mapped_as_a_subpackage_gets_its_layer(tmp_path):
    root = _tree(tmp_path, FAKE)
    modules = load_tree(root)
    assert layer_of("cnmlab.checks.api")[1] == "checks" and "cnmlab.checks.api" in modules
    assert layer_of("cnmlab.kernel.netns")[1] == "kernel"
    assert layer_of("cnmlab.errors")[1] == "base"
    assert layer_of("cnmlab.cli")[1] == "cli" and layer_of("cnmlab.lab")[1] == "engine"

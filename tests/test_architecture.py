"""The package's shape, checked from its source with `ast` (nothing is imported):

(a) no import cycle between ditkit modules;
(b) no import that runs up the layers of docs/architecture.md;
(c) no module over 500 lines unless its docstring says why (a line "Over 500 lines because ...");
(d) benchmarks/*.py use only ditkit's public names and never touch sys.path;
(e) every relative link in docs/*.md and README.md points at a file that exists.

Every import counts, wherever it stands: module level, inside functions, under
`if TYPE_CHECKING:`. A function-level import still runs when the function runs, and a
TYPE_CHECKING import still makes the reader climb to another layer to understand the
types, so neither may go up the layers or close a cycle (docs/architecture.md).
Each test collects every violation before failing, so one run shows all that is left.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "ditkit"

# docs/architecture.md's layer table, bottom to top.
LAYERS = {"data": 0, "core": 1, "interop": 2, "engine": 3, "tasks": 4, "evaluation": 5, "training": 6,
          "analysis": 7, "accel": 8, "api": 9, "cli": 10, "serve": 10}
# ditkit/__init__.py (lazy re-exports) and __main__.py (runs the CLI) are the entry points above all layers.
ENTRY_RANK = len(LAYERS)
MAX_LINES = 500
REASON = re.compile(r"^\s*Over 500 lines because\b", re.MULTILINE)


def module_name(path: Path) -> str:
    """src/ditkit/core/model.py -> ditkit.core.model; a package's __init__.py -> the package."""
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def layer_rank(module: str) -> int:
    """ditkit.core.model -> 1; ditkit -> entry point; ditkit.__main__ -> entry point."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return ENTRY_RANK
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module} is in no layer of docs/architecture.md; add its package to the table")
    return LAYERS[parts[1]]


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ImportFrom names (relative levels resolved against `module`)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, ditkit module) for every import of a ditkit module in the file, wherever it stands.

    `from ditkit.core import model` names the module ditkit.core.model when that is a
    module, else the package ditkit.core (the name is an attribute of it)."""
    module = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ditkit"]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, path.name == "__init__.py")
            if target.split(".")[0] != "ditkit":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in known else target))
    return found


def _owner(target: str, known: set[str]) -> str | None:
    """The ditkit module an imported name lives in (ditkit.core.model.DiT -> ditkit.core.model)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported ditkit module: first line}, self-imports dropped."""
    mods = modules()
    known = set(mods)
    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges: dict[str, int] = {}
        for line, target in imported_modules(path, known):
            owner = _owner(target, known)
            if owner and owner != name:
                edges.setdefault(owner, line)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # recursion depth <= number of modules (~60)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(sccs)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_every_module_is_in_a_layer():
    unplaced = []
    for name in modules():
        try:
            layer_rank(name)
        except AssertionError as e:
            unplaced.append(str(e))
    assert not unplaced, "\n".join(unplaced)


def test_no_import_cycles():
    graph = import_graph()
    mods = modules()
    lines = []
    for comp in find_cycles(graph):
        lines.append(f"cycle among {len(comp)} modules: {', '.join(comp)}")
        members = set(comp)
        for src in comp:
            for dst, line in sorted(graph[src].items()):
                if dst in members:
                    lines.append(f"    {_rel(mods[src])}:{line}  {src} -> {dst}")
    assert not lines, "import cycles (docs/architecture.md: no cycles):\n" + "\n".join(lines)


def test_imports_only_go_down_the_layers():
    graph = import_graph()
    mods = modules()
    up = []
    for src, edges in sorted(graph.items()):
        for dst, line in sorted(edges.items(), key=lambda e: e[1]):
            if layer_rank(dst) > layer_rank(src):
                src_layer = src.split(".")[1] if "." in src else "ditkit"
                dst_layer = dst.split(".")[1]
                up.append(f"{_rel(mods[src])}:{line}  {src} ({src_layer} {layer_rank(src)}) imports "
                          f"{dst} ({dst_layer} {layer_rank(dst)})")
    assert not up, (f"{len(up)} imports go up the layers (docs/architecture.md: a module imports only "
                    f"from its own layer or lower ones):\n" + "\n".join(up))


def test_only_the_serve_verb_imports_serve():
    """serve is an entry point beside cli: only ditkit.cli.serve starts it, and serve needs nothing of cli."""
    bad = []
    for src, edges in sorted(import_graph().items()):
        for dst, line in edges.items():
            into_serve = dst.split(".")[:2] == ["ditkit", "serve"] and src.split(".")[:2] != ["ditkit", "serve"]
            if (into_serve and src != "ditkit.cli.serve") or (src.startswith("ditkit.serve") and dst.startswith("ditkit.cli")):
                bad.append(f"{src}:{line} imports {dst}")
    assert not bad, "docs/architecture.md: only ditkit.cli.serve imports serve; serve imports no cli\n" + "\n".join(bad)


def test_modules_over_500_lines_say_why():
    long = []
    for name, path in modules().items():
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if not REASON.search(doc):
                long.append(f"{_rel(path)}: {n} lines")
    assert not long, (f"modules over {MAX_LINES} lines without a docstring line 'Over 500 lines because ...':\n"
                      + "\n".join(long))


def test_benchmarks_use_only_public_api():
    bad = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ditkit":
                private = [a.name for a in node.names if a.name.startswith("_")]
                private_mod = [p for p in node.module.split(".") if p.startswith("_")]
                if private or private_mod:
                    bad.append(f"{_rel(path)}:{node.lineno}  from {node.module} import "
                               f"{', '.join(a.name for a in node.names)} (private)")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "ditkit" and any(p.startswith("_") for p in a.name.split(".")):
                        bad.append(f"{_rel(path)}:{node.lineno}  import {a.name} (private)")
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                # ditkit.x._helper or module._helper reached through an attribute
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id == "ditkit":
                    bad.append(f"{_rel(path)}:{node.lineno}  ditkit...{node.attr} (private)")
            elif isinstance(node, ast.Attribute) and node.attr == "path" and \
                    isinstance(node.value, ast.Name) and node.value.id == "sys":
                bad.append(f"{_rel(path)}:{node.lineno}  sys.path (run benchmarks against the installed package)")
    assert not bad, "benchmarks must use ditkit's public API only:\n" + "\n".join(bad)


LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "research").glob("*.md"))


def broken_links(path: Path) -> list[str]:
    """Relative links (and image links) of a markdown file whose target file does not exist.
    Web links, mail links and pure #anchors are not checked; code spans are skipped."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))  # keep line numbers
    text = re.sub(r"```.*?```", blank, path.read_text(), flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", blank, text)
    broken = []
    for m in LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0]
        if file and not (path.parent / file).exists():
            line = text.count("\n", 0, m.start()) + 1
            broken.append(f"{_rel(path)}: ({target}) near line {line}")
    return broken


def test_docs_relative_links_resolve():
    broken = [b for p in markdown_files() if p.exists() for b in broken_links(p)]
    assert not broken, "broken relative links:\n" + "\n".join(broken)

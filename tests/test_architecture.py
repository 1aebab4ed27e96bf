"""The house's shape, checked: no import cycle anywhere in paradiff_gui, the app's window stays a
composition root, and the command line stays one module per command.

import-linter's contracts (pyproject.toml, run by ``make lint``) keep the engine's layers in
order; this test finds any cycle at all, including inside one folder, where layers don't look."""

from __future__ import annotations

from pathlib import Path

import grimp

QT = Path(__file__).resolve().parents[1] / "paradiff_gui" / "qt"
CLI = QT.parent / "cli"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycle_anywhere():
    # Imports inside functions count: a lazy import that closes a loop is still a knot.
    graph = grimp.build_graph("paradiff_gui", include_external_packages=False)
    assert len(graph.modules) > 40  # the whole package was scanned
    assert _cycles(graph) == []


def test_cycle_finder_sees_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_the_main_window_stays_a_composition_root():
    # A new mode is a module of its own (a controller like generate.py or upscale.py), so the
    # window does not grow back into one file that does everything.
    assert _lines(QT / "window.py") <= 400
    assert {str(p.relative_to(QT)): n for p in sorted(QT.rglob("*.py")) if (n := _lines(p)) > 500} == {}


def test_the_command_line_is_one_module_per_command():
    # A command's parser and its cmd_* live in a module of their own, over shared flag shapes
    # (cli/args.py), so cli/ does not grow back into one file that holds every command.
    commands = {"generate", "upscale", "refine", "inspect", "models"}
    assert commands <= {p.stem for p in CLI.glob("*.py")}
    assert {p.name: n for p in sorted(CLI.rglob("*.py")) if (n := _lines(p)) > 400} == {}

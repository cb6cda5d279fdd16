"""The serving stack's imports point one way: server → protocol → engine → backends → params/config.

Read from the source (``ast``), imports under ``TYPE_CHECKING`` included: an arrow that runs back up
makes the layers impossible to teach one at a time, and tends to end in an import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "corolab"

#: Lower numbers are lower layers. A module may import its own layer or lower ones only.
LAYERS = {"choices": 0, "params": 0, "config": 0, "backends": 1, "engine": 2, "protocol": 3, "server": 4}


def layer_of(module: str) -> int | None:
    """The layer of a module of the serving stack (``corolab.serving.<layer>...``); ``None`` outside it."""
    parts = module.split(".")
    return LAYERS.get(parts[2]) if parts[:2] == ["corolab", "serving"] and len(parts) > 2 else None


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_nothing_below_imports_anything_above():
    upward = []
    for path in SRC.rglob("*.py"):
        module = "corolab." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        own = layer_of(module)
        if own is None:
            continue
        for name in imports(path):
            target = layer_of(name)
            if target is not None and target > own:
                upward.append(f"{module} imports {name}")
    assert upward == []


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from corolab.serving.engine.base import Delta\n")
    assert [layer_of(n) for n in imports(bad)] == [LAYERS["engine"]] and LAYERS["engine"] > LAYERS["backends"]
    assert layer_of("corolab.serving.backends.cpu.kernels") == LAYERS["backends"]


def houses_imported_by(house: str) -> dict[str, set[str]]:
    """For each module of ``corolab.<house>``, the other top-level houses of corolab it imports."""
    found: dict[str, set[str]] = {}
    for path in (SRC / house).rglob("*.py"):
        module = "corolab." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        others = {name.split(".")[1] for name in imports(path)
                  if name.startswith("corolab.") and name.split(".")[1] != house}
        if others:
            found[module] = others
    return found


def test_the_serving_stack_imports_no_other_house():
    """The serving stack is the bottom house: the book's helpers (teach), the load tester (bench) and the
    grader (labs) may use it, never the other way round, so the server ships and reads on its own."""
    assert houses_imported_by("serving") == {}


def test_the_teaching_helpers_use_only_the_serving_stack():
    assert all(others <= {"serving"} for others in houses_imported_by("teach").values()), houses_imported_by("teach")


def test_the_load_tester_imports_no_other_house():
    """``corolab bench`` speaks only the wire, so it measures corolab and its peers alike."""
    assert houses_imported_by("bench") == {}

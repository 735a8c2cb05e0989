"""The package's layers (``ivfuse._layers.LAYERS``, drawn in ``docs/architecture.md``) hold for every import of every
module — module-level, function-level, under ``TYPE_CHECKING``, relative or absolute, ``from . import x``, lazy
re-exports — and the checker fails on an import that climbs (shown on deliberate ones). It replaces
``tests/test_engine.py::test_task_modules_do_not_import_the_engine``, which saw module-level imports only."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from ivfuse import _layers as L

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "ivfuse"

# Imports that break the rule and cannot be fixed in this change, as (importer, target) — target ``module:name`` for
# a private name. The test fails on any violation not listed here AND on a listed one that no longer exists, so the
# list can only shrink. Each entry: why it stays, and the issue that removes it.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


def _unexpected_and_stale(found: list[L.Violation], known) -> tuple[list[str], list[tuple[str, str]]]:
    """Violations not in ``known`` (as text with file:line), and entries of ``known`` that no violation has."""
    return [str(v) for v in found if v.key not in known], sorted(set(known) - {v.key for v in found})


def _found() -> list[L.Violation]:
    return L.check(SRC)


def test_every_unit_is_in_exactly_one_layer_and_every_listed_unit_exists():
    names = [u for line in L.LAYERS for u in line]
    assert len(names) == len(set(names)), "a unit is listed twice"
    present = {L.unit(m) for m in L._modules(SRC, "ivfuse")}
    assert sorted(set(names) - present) == [], "listed in LAYERS but not in the package"
    assert [str(v) for v in _found() if v.kind == "unlisted"] == []


def test_no_import_climbs_a_layer():
    unexpected, stale = _unexpected_and_stale(_found(), KNOWN_VIOLATIONS)
    assert unexpected == [], "imports that break ivfuse._layers.LAYERS (docs/architecture.md):\n" + "\n".join(
        unexpected
    )
    assert stale == [], f"KNOWN_VIOLATIONS lists imports that no longer exist; delete them: {stale}"


def test_no_import_cycles_between_units():
    assert L.cycles(SRC, excused=set(KNOWN_VIOLATIONS)) == []


def test_docs_show_the_declared_layers():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert L.render() in doc, "docs/architecture.md must show ivfuse._layers.render() verbatim"


def test_checker_sees_function_level_imports_of_the_real_package():
    where = {(i.importer, i.target): i.where for i in L.imports(SRC)}
    assert where[("ivfuse.cli.train", "ivfuse.engine")] == "function"  # `from ..engine import RECIPES, train` in run()
    assert where[("ivfuse", "ivfuse.fusion")] == "lazy"  # the root package's lazy re-exports
    assert where[("ivfuse.engine", "ivfuse.engine.recipe")] == "module"  # `from .recipe import RECIPES, ...`


def test_a_deliberate_climbing_import_fails(tmp_path):
    """A copy of the real package with one import that climbs (tasks -> engine, inside a function) and one peer import
    (fusion -> evaluate, at module level): both found, with file and line; the unmodified copy has neither."""
    pkg = tmp_path / "ivfuse"
    shutil.copytree(SRC, pkg, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors", "*.yaml", "*.txt"))
    before = {v.key for v in L.check(pkg)}
    assert L.cycles(pkg, excused=set(KNOWN_VIOLATIONS)) == []
    det = pkg / "tasks" / "detectors.py"
    det.write_text(det.read_text() + "\n\ndef _climb():\n    from ..engine import train\n\n    return train\n")
    line = len(det.read_text().splitlines()) - 2
    fus = pkg / "fusion.py"
    fus.write_text("import ivfuse.evaluate\n" + fus.read_text())
    found = {v.key: v for v in L.check(pkg)}
    new = set(found) - before
    assert new == {("ivfuse.tasks.detectors", "ivfuse.engine"), ("ivfuse.fusion", "ivfuse.evaluate")}
    v = found[("ivfuse.tasks.detectors", "ivfuse.engine")]
    assert v.kind == "climbs" and v.imp.line == line and v.imp.where == "function" and str(v).endswith("climbs")
    assert str(v).startswith(f"{det}:{line}:") or f"detectors.py:{line}:" in str(v)
    assert found[("ivfuse.fusion", "ivfuse.evaluate")].kind == "peer"
    cyc = L.cycles(pkg, excused=set(KNOWN_VIOLATIONS))  # the climbing import closes a cycle (engine imports tasks)
    assert len(cyc) == 1 and {"engine", "tasks"} <= set(cyc[0])


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / "ivfuse" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root / "ivfuse"


def test_checker_resolves_every_import_form(tmp_path):
    """A synthetic package, layers low < mid < high: each import form that climbs is caught; downward ones are not."""
    layers = (("_lazy", "low"), ("mid", "mid2"), ("high",), ("ivfuse",))
    pkg = _write(
        tmp_path,
        {
            "__init__.py": (
                "from ._lazy import lazy_exports\n"
                "__getattr__, __dir__, __all__ = lazy_exports(__name__, {'high': ['h']})\n"
            ),
            "_lazy.py": "def lazy_exports(p, e):\n    return None, None, []\n",
            "low/__init__.py": "",
            "low/a.py": """\
            from typing import TYPE_CHECKING
            from . import b                       # same unit: free
            if TYPE_CHECKING:
                from ..mid import M               # climbs (TYPE_CHECKING)

            def f():
                from .. import high               # climbs: `from .. import x` is the submodule ivfuse.high
                import ivfuse.mid.sub             # climbs (absolute)
                import importlib
                return importlib.import_module("ivfuse.high")   # climbs (constant import_module)
            """,
            "low/b.py": "",
            "mid/__init__.py": "M = 1\n",
            "mid/sub.py": "from ..low import a\nfrom ..low.a import _hidden\n",  # down: fine; private name: not
            "mid2.py": "from .mid import M\n",  # a peer
            "high.py": "from .mid import sub\nfrom ivfuse.low import b\nh = 1\n",  # down: fine
        },
    )
    got = sorted((v.kind, v.imp.importer, v.imp.target, v.imp.where) for v in L.check(pkg, layers))
    assert got == [
        ("climbs", "ivfuse.low.a", "ivfuse.high", "function"),
        ("climbs", "ivfuse.low.a", "ivfuse.high", "import_module"),
        ("climbs", "ivfuse.low.a", "ivfuse.mid", "TYPE_CHECKING"),
        ("climbs", "ivfuse.low.a", "ivfuse.mid.sub", "function"),
        ("peer", "ivfuse.mid2", "ivfuse.mid", "module"),
        ("private", "ivfuse.mid.sub", "ivfuse.low.a", "module"),
    ]
    assert L.cycles(pkg) == [["high", "low", "mid"]]
    assert (
        L.cycles(
            pkg,
            excused={
                ("ivfuse.low.a", "ivfuse.high"),
                ("ivfuse.low.a", "ivfuse.mid"),
                ("ivfuse.low.a", "ivfuse.mid.sub"),
            },
        )
        == []
    )
    (pkg / "extra.py").write_text("")
    assert [v.kind for v in L.check(pkg, layers) if v.kind == "unlisted"] == ["unlisted"]


@pytest.mark.parametrize("case", ["missing", "stale"])
def test_known_violations_cannot_rot(case, tmp_path):
    """The allow-list logic itself: an unlisted violation fails, and so does a listed one that is gone."""
    pkg = _write(tmp_path, {"__init__.py": "", "low.py": "def f():\n    from . import high\n", "high.py": ""})
    layers = (("low",), ("high",), ("ivfuse",))
    found = L.check(pkg, layers)
    if case == "missing":
        unexpected, stale = _unexpected_and_stale(found, {})
        assert unexpected == [f"{found[0].imp.file}:2: {found[0].message}"] and stale == []
    else:
        unexpected, stale = _unexpected_and_stale(
            found, {("ivfuse.low", "ivfuse.high"): "x", ("ivfuse.low", "ivfuse.gone"): "y"}
        )
        assert unexpected == [] and stale == [("ivfuse.low", "ivfuse.gone")]


# Modules that still import a moved name from its old path, because this change could not edit them.
OLD_PATH_CALLERS: dict[str, str] = {}  # none left


MOVED = [  # (old public path, new home) of the moves of #21 item 1
    ("ivfuse.masks:partition", "ivfuse.regions:partition"),
    ("ivfuse.masks:class_map", "ivfuse.regions:class_map"),
    ("ivfuse.masks:object_masks_from_class_map", "ivfuse.regions:object_masks_from_class_map"),
    ("ivfuse.masks:CLASS_NAMES", "ivfuse.regions:CLASS_NAMES"),
    ("ivfuse.masks:MaskGenerator", "ivfuse.tasks.pseudo:MaskGenerator"),
    ("ivfuse.masks:DEFAULT_CLASSES", "ivfuse.tasks.pseudo:DEFAULT_CLASSES"),
    ("ivfuse.engine.tsjnet:pseudo_mask", "ivfuse.tasks.pseudo:pseudo_mask"),
    ("ivfuse.engine.tsjnet:MergedSegmenter", "ivfuse.tasks.pseudo:MergedSegmenter"),
    ("ivfuse.engine.tsjnet:MSRS_SEG_CLASSES", "ivfuse.tasks.pseudo:MSRS_SEG_CLASSES"),
    ("ivfuse.engine.tsjnet:PSEUDO_SOURCES", "ivfuse.tasks.pseudo:PSEUDO_SOURCES"),
    ("ivfuse.engine.tsjnet:CITYSCAPES_TO_MSRS", "ivfuse.tasks.pseudo:CITYSCAPES_TO_MSRS"),
    ("ivfuse.engine.tsjnet:map_to_msrs", "ivfuse.tasks.pseudo:map_to_msrs"),
    ("ivfuse.export:OnnxFusionModel", "ivfuse.models.onnx:OnnxFusionModel"),
    ("ivfuse.export:load_onnx_model", "ivfuse.models.onnx:load_onnx_model"),
    ("ivfuse.export:ONNX_PREFIX", "ivfuse.models.onnx:ONNX_PREFIX"),
]


@pytest.mark.parametrize("old, new", MOVED)
def test_moved_names_keep_their_old_paths(old, new):
    """Moves of #21 item 1: the public old path gives the very object of the new home (``from old import name``)."""
    import importlib

    (om, on), (nm, nn) = old.split(":"), new.split(":")
    ns: dict = {}
    exec(f"from {om} import {on} as x", ns)
    assert ns["x"] is getattr(importlib.import_module(nm), nn)


def test_moved_names_are_imported_from_their_new_home():
    """Inside the package, only the modules of ``OLD_PATH_CALLERS`` still use an old path (and all of them do, so the
    list cannot rot)."""
    old = {tuple(o.split(":")) for o, _ in MOVED}
    users = {i.importer for i in L.imports(SRC) for n in i.names if (i.target, n) in old}
    assert users == set(OLD_PATH_CALLERS)

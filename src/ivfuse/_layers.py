"""The package's layers, declared once, and the import checker that enforces them (``tests/test_layers.py``).

:data:`LAYERS` lists the *units* of ``ivfuse`` — a top-level module (``errors``, ``fusion``) or a subpackage with
everything in it (``engine`` is ``ivfuse.engine.*``) — bottom first. ``ivfuse`` is the root package's own
``__init__`` (the lazy public API). The rule, for every import in every module, at module level, inside functions
and under ``TYPE_CHECKING`` alike:

* a unit may import from units on **lower** lines only. An import of a unit on a higher line *climbs*;
* units on **one line are peers and do not import each other**: a unit that needs another goes on a later line
  (the list says which may import which, nothing else does);
* inside a unit, modules import each other freely (the unit's own business);
* a name or module starting with ``_`` belongs to its unit: another unit may not import it (``__version__``-style
  dunder names are public);
* the root package's lazy re-exports (``lazy_exports(__name__, {...})``) count as imports, as do
  ``importlib.import_module("ivfuse....")`` calls with a constant name.

With no climbing import the units form no import cycle; :func:`cycles` checks that separately (over the imports not
allowed by an explicit exception), so a cycle is reported as one even when its climbing edge is excused.

Standard library only: it reads the sources with :mod:`ast` and imports nothing from ``ivfuse``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LAYERS", "Import", "Violation", "check", "cycles", "imports", "rank", "render", "unit"]

#: bottom first; one line = one layer of peers
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_lazy", "_layers", "errors", "allocator"),  # no ivfuse imports (lazy re-exports, this list) / the exception
    # types / the C allocator setting
    ("registry", "utils", "config", "regions", "tiling"),  # registries, files and devices, key=value configs, OCCO's
    # regions, tiled inference and the memory guard (torch only)
    ("checkpoint", "weights"),  # checkpoint files, shared weight paths
    ("data",),  # images, pairing, datasets, labels
    ("metrics", "models"),  # fusion metrics; fusion networks (incl. the onnxruntime-backed one)
    ("tasks",),  # detectors, segmenters, SAM, their metrics and data, pseudo-labels
    ("losses",),  # training losses (guided by task networks)
    ("engine",),  # recipes, the Trainer, detector/segmenter fine-tuning
    ("fusion", "evaluate"),  # fuse files/folders; score folders
    ("export", "masks", "video"),  # ONNX export; `ivfuse masks`; video and streaming fusion
    ("ivfuse",),  # the root package: lazy public API
    ("bench",),  # `ivfuse bench`
    ("cli",),  # the command line
    ("__main__",),  # python -m ivfuse
)

PACKAGE = "ivfuse"


def rank(unit_name: str, layers=LAYERS) -> int | None:
    """Line of ``unit_name`` in ``layers`` (0 = bottom), ``None`` when it is not listed."""
    for i, line in enumerate(layers):
        if unit_name in line:
            return i
    return None


def unit(module: str, package: str = PACKAGE) -> str:
    """``ivfuse.engine.tsjnet`` -> ``engine``; ``ivfuse`` -> ``ivfuse``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def render(layers=LAYERS) -> str:
    """The list as text, top first (what ``docs/architecture.md`` shows)."""
    return "\n".join(f"{i:2d}  {'  '.join(line)}" for i, line in reversed(list(enumerate(layers))))


@dataclass(frozen=True)
class Import:
    importer: str  # module, e.g. ivfuse.tasks.downstream
    target: str  # module, e.g. ivfuse.engine.finetune
    names: tuple[str, ...]  # imported names that are not submodules (empty for `import x`)
    file: str
    line: int
    where: str  # "module", "function", "TYPE_CHECKING", "lazy", "import_module"


@dataclass(frozen=True)
class Violation:
    imp: Import
    kind: str  # "climbs", "peer", "private", "unlisted"
    message: str

    @property
    def key(self) -> tuple[str, str]:
        """``(importer, target)`` (``target:name`` for a private name): stable under line shifts."""
        if self.kind == "private" and self.imp.names:
            private = [n for n in self.imp.names if _private(n)]
            if private:
                return self.imp.importer, f"{self.imp.target}:{','.join(private)}"
        return self.imp.importer, self.imp.target

    def __str__(self) -> str:
        return f"{self.imp.file}:{self.imp.line}: {self.message}"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = [package, *p.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _where(node: ast.AST, parents: dict) -> str:
    n = node
    while n in parents:
        n = parents[n]
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return "function"
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            return "TYPE_CHECKING"
    return "module"


def imports(root: str | Path, package: str = PACKAGE) -> list[Import]:
    """Every import of a ``package`` module by a module under ``root`` (the package folder)."""
    root = Path(root)
    mods = _modules(root, package)
    found: list[Import] = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]
        rel = _shown(path)

        def add(node, target, names=(), where=None):
            if target == package or target.startswith(package + "."):
                found.append(Import(mod, target, tuple(names), rel, node.lineno, where or _where(node, parents)))

        def split_from(node, base: str, names: list[str]):
            sub = [n for n in names if f"{base}.{n}" in mods]  # `from pkg import submodule`
            plain = [n for n in names if f"{base}.{n}" not in mods]
            for n in sub:
                add(node, f"{base}.{n}")
            if plain or not sub:
                add(node, base, plain)

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    add(node, a.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = here[: len(here) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                split_from(node, base, [a.name for a in node.names])
            elif isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                args = node.args
                if (
                    name == "import_module"
                    and args
                    and isinstance(args[0], ast.Constant)
                    and isinstance(args[0].value, str)
                ):
                    add(node, args[0].value, where="import_module")
                elif name == "lazy_exports" and len(args) >= 2:
                    table = args[1]
                    if isinstance(table, ast.Name):  # a module-level dict assigned to that name
                        table = next(
                            (
                                a.value
                                for a in tree.body
                                if isinstance(a, ast.Assign)
                                and any(getattr(t, "id", None) == table.id for t in a.targets)
                            ),
                            None,
                        )
                    if isinstance(table, ast.Dict):
                        for k, v in zip(table.keys, table.values):
                            if isinstance(k, ast.Constant):
                                names = [e.value for e in getattr(v, "elts", []) if isinstance(e, ast.Constant)]
                                add(node, f"{mod if is_pkg else '.'.join(here)}.{k.value}", names, "lazy")
    return found


def check(root: str | Path, layers=LAYERS, package: str = PACKAGE) -> list[Violation]:
    """Every import under ``root`` that breaks the rule of :data:`LAYERS` (see the module docstring)."""
    out = []
    mods = _modules(Path(root), package)
    for u in sorted({unit(m, package) for m in mods}):
        if rank(u, layers) is None:
            m = package if u == package else f"{package}.{u}"
            imp = Import(m, "", (), _shown(mods[m]), 1, "module")
            out.append(Violation(imp, "unlisted", f"unit '{u}' is in no layer: add it to ivfuse._layers.LAYERS"))
    for imp in imports(root, package):
        a, b = unit(imp.importer, package), unit(imp.target, package)
        if a == b:
            continue
        ra, rb = rank(a, layers), rank(b, layers)
        if ra is None or rb is None:
            continue
        how = "" if imp.where == "module" else f" ({imp.where})"
        what = imp.target + (f" [{', '.join(imp.names)}]" if imp.names else "")
        if rb > ra:
            out.append(
                Violation(
                    imp, "climbs", f"{imp.importer} ({a}, layer {ra}) imports {what} ({b}, layer {rb}){how}: climbs"
                )
            )
        elif rb == ra:
            out.append(Violation(imp, "peer", f"{imp.importer} ({a}) imports {what} ({b}), a peer on layer {ra}{how}"))
        tail = imp.target.split(".")[2:]
        private = [n for n in (*tail, *imp.names) if _private(n)]
        if private:
            out.append(
                Violation(
                    imp,
                    "private",
                    f"{imp.importer} ({a}) imports {b}'s private {', '.join(private)} from {imp.target}{how}",
                )
            )
    return out


def cycles(root: str | Path, package: str = PACKAGE, excused=frozenset()) -> list[list[str]]:
    """Import cycles between units (strongly connected components of more than one unit), leaving out the imports
    whose ``(importer, target)`` is in ``excused``."""
    graph: dict[str, set[str]] = {}
    for imp in imports(root, package):
        a, b = unit(imp.importer, package), unit(imp.target, package)
        if a != b and (imp.importer, imp.target) not in excused:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps

"""Cache of the bench: fused images and per-method/per-protocol results, keyed so that a rerun reuses them.

Keys:

* a **method key** ``<name>-<12 hex>``: the hash covers the method name, its options, the SHA-256 of its
  state dict (every parameter and buffer, in key order) and the SHA-256 of the code of the source file defining
  its class and of the modules it imports from its own package (their syntax trees without docstrings:
  :func:`code_hash`; reformatting and comments keep the key).
  Learned methods therefore change key when their weights change, whichever file they came from;
  parameter-free (classical) methods hash name + options (+ source file) only.
* a **data key** ``<dataset>-<split>-<8 hex>``: the hash covers the resolved root folder, the split, the IR
  normalisation and the sorted list of pair names (so ``limit=`` subsets never collide with full runs).

Layout under ``<out>/cache``::

    fused/<data key>/<method key>/<stem>.png          one file per pair, written atomically
    results/<protocol>/<data key>/<method key>[-<extra>].json

A fused image or a result file that exists *and checks out* is reused; everything else is computed. Delete a folder
to force a recomputation.

Faults (``docs/reliability.md``): every file is written atomically (temporary file + ``os.replace``), so a killed
bench never leaves a torn entry, and two benches on one ``--out`` at once at worst compute an entry twice (the same
bytes; the last rename wins). Anything that is damaged all the same (a disk fault, a copy cut short, a hand edit) is
detected and recomputed, never trusted: a result file must be a JSON object, and one written by this version carries
``"cache_sha256"``, the SHA-256 of its canonical JSON (checked on every read; entries written before it have none
and stay valid); a fused PNG must pass Pillow's ``verify()`` (the CRC-32 of every chunk, the IEND chunk present)
when its folder is opened (:meth:`BenchCache.fused_dir`), else it is deleted and fused again. Each recomputation
is reported by a one-line warning on the ``ivfuse`` logger.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..utils import atomic_write_text

__all__ = [
    "state_hash",
    "method_key",
    "data_key",
    "folder_hash",
    "BenchCache",
    "short_hash",
    "CHECKSUM_KEY",
    "valid_png",
]

log = logging.getLogger("ivfuse")

#: key of the checksum in a result file (absent in files written before it: those stay valid when they parse)
CHECKSUM_KEY = "cache_sha256"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, allow_nan=True).encode()


def _checksum(value: dict) -> str:
    return hashlib.sha256(_canonical(value)).hexdigest()


def valid_png(path: str | Path) -> bool:
    """Whether ``path`` is a complete PNG: the signature, every chunk's CRC-32 and the IEND chunk (no pixel
    decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                return False
            im.verify()
        return True
    except Exception:  # Pillow raises OSError, SyntaxError, struct.error, EOFError... for damaged files
        return False


def short_hash(obj: Any, n: int = 12) -> str:
    """Stable hex digest of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def state_hash(module: torch.nn.Module) -> str | None:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes, in key order); ``None`` if it has none."""
    sd = module.state_dict()
    if not sd:
        return None
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _code_text(path: Path) -> tuple[str, ast.Module | None]:
    """A file's code as text for hashing: its syntax tree (``ast.dump``, no line numbers) with the docstrings removed;
    a file Python cannot parse, its bytes' SHA-256."""
    data = path.read_bytes()
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError):
        return "sha256:" + hashlib.sha256(data).hexdigest(), None
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree), tree


def _sibling_imports(path: Path, tree: ast.Module) -> list[Path]:
    """The files of the modules ``path`` imports from its own package (``from .x import …``, ``from . import x``)."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level != 1:
            continue
        names = [node.module] if node.module else [a.name for a in node.names]
        for name in names:
            rel = Path(*name.split("."))
            out += [f for f in (path.parent / rel.with_suffix(".py"), path.parent / rel / "__init__.py") if f.is_file()]
    return out


def code_hash(module: torch.nn.Module) -> str | None:
    """SHA-256 of the code that defines the module's class (a code change must not reuse stale images): the source
    file of the class and, transitively, the modules it imports from its own package (``from ._fused import …``,
    ``from .base import …``: the helpers a network runs through). Each file counts by its syntax tree without
    docstrings, so that reformatting, comments and docstrings keep the key and any change of a statement changes it;
    a file Python cannot parse counts byte for byte. Imports from other packages (PyTorch, timm, ``ivfuse.errors``)
    are not followed: their versions are the environment's."""
    try:
        src = inspect.getsourcefile(type(module))
    except TypeError:
        return None
    if not src or not Path(src).is_file():
        return None
    root = Path(src).resolve()
    parts, seen, todo = [], set(), [root]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        text, tree = _code_text(path)
        label = "" if path == root else path.relative_to(root.parent).as_posix()  # the class's own file: unnamed
        parts.append(f"{label}\n{text}")
        if tree is not None:
            todo += [p.resolve() for p in _sibling_imports(path, tree)]
    return hashlib.sha256("\n\0".join(sorted(parts)).encode()).hexdigest()


def method_key(name: str, options: dict | None, module: torch.nn.Module | None) -> tuple[str, dict]:
    """``(key, identity)``: the folder-safe key and the dict it hashes (kept in the results for provenance)."""
    ident = {
        "method": name,
        "options": options or {},
        "weights_sha256": state_hash(module) if module is not None else None,
        "code_sha256": code_hash(module) if module is not None else None,
    }
    return f"{name}-{short_hash(ident)}", ident


def folder_hash(folder: str | Path, exts: tuple[str, ...], recursive: bool = True) -> str:
    """SHA-256 over the relative paths and the SHA-256 of the bytes of every file under ``folder`` whose suffix is in
    ``exts`` (case-insensitive), in sorted order: the cache key of a ``dir:`` method and of ``--seg-masks``."""
    folder = Path(folder)
    h = hashlib.sha256()
    files = folder.rglob("*") if recursive else folder.iterdir()
    for f in sorted(p for p in files if p.is_file() and p.suffix.lower() in exts):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def data_key(dataset: str, split: str, root: str | Path, names: list[str], ir_norm: str) -> str:
    return f"{dataset}-{split}-{short_hash([str(Path(root).resolve()), split, ir_norm, sorted(names)], 8)}"


class BenchCache:
    """JSON results and fused-image folders under ``root`` (``<out>/cache``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def fused_dir(self, dkey: str, mkey: str) -> Path:
        """The folder of one method's fused images on one split; damaged PNGs in it are deleted (and so fused again)."""
        d = self.root / "fused" / dkey / mkey
        if d.is_dir():
            bad = [p for p in sorted(d.glob("*.png")) if not valid_png(p)]
            for p in bad:
                p.unlink(missing_ok=True)
            if bad:
                log.warning(
                    f"{d}: {len(bad)} damaged cached fused image(s) deleted and fused again "
                    f"({', '.join(p.name for p in bad[:4])}{' ...' if len(bad) > 4 else ''})"
                )
        return d

    def result_path(self, protocol: str, dkey: str, mkey: str, extra: str = "") -> Path:
        return self.root / "results" / protocol / dkey / (mkey + (f"-{extra}" if extra else "") + ".json")

    def get(self, protocol: str, dkey: str, mkey: str, extra: str = "") -> dict | None:
        """The cached result, or ``None`` (a miss) when there is none or it does not check out (then it is recomputed
        and overwritten by :meth:`put`)."""
        p = self.result_path(protocol, dkey, mkey, extra)
        if not p.is_file():
            return None
        why = None
        try:
            out = json.loads(p.read_bytes())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            out, why = None, f"unreadable ({type(e).__name__})"
        if why is None and not isinstance(out, dict):
            why = "not a JSON object"
        elif why is None and CHECKSUM_KEY in out:
            want = out.pop(CHECKSUM_KEY)
            if want != _checksum(out):
                why = "checksum mismatch"
        if why is not None:
            log.warning(f"{p}: damaged cache entry ({why}); recomputing it")
            return None
        self.hits += 1
        return out

    def put(self, protocol: str, dkey: str, mkey: str, value: dict, extra: str = "") -> dict:
        """Write a result atomically with its checksum; returns ``value`` (unchanged)."""
        self.misses += 1
        stored = json.loads(json.dumps(value, allow_nan=True))  # what a reader will parse (int keys -> str ...)
        stored[CHECKSUM_KEY] = _checksum(stored)
        atomic_write_text(self.result_path(protocol, dkey, mkey, extra), json.dumps(stored, indent=1) + "\n")
        return value

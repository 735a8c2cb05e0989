"""What ``--methods`` accepts: registered methods, checkpoints, a folder of the user's fused images, a user's model.

Forms (comma-separated in ``--methods``; ``LABEL=`` names the row, and is required for ``dir:`` and ``py:``):

* ``gff``, ``tim@FILE``, ``laplacian?levels=5``, ``tim@FILE?preset=official`` — a registered method (``ivfuse list
  methods``, entry-point plugins included), with a checkpoint (``weights=FILE``) and method options after ``?``
  (``key=value`` joined by ``&``; quote them in a shell); ``ir`` / ``vis`` are the reference rows.
* ``LABEL=dir:PATH`` — pre-fused images: ``PATH/<split>/<pair>.<ext>`` (e.g. ``PATH/dev-val/00004N.png`` and, for
  ``retrain``/``seg``, ``PATH/dev-train/00001D.png``), or ``PATH/<pair>.<ext>`` directly for the judged split
  (ext: png, jpg, jpeg, bmp, tif, tiff). Gray or RGB, 8-bit (or 16-bit) at each pair's size. Every pair the bench
  needs must be there and readable, at the pair's size: otherwise a one-line error names the pair and the folder,
  before anything is computed.
* ``LABEL=py:package.module:attr`` — the user's model in-process: ``attr`` is a :class:`~ivfuse.models.FusionModel`
  class or a factory called without arguments that returns one (any ``nn.Module`` called as ``model(ir, vis)``),
  or a function ``fused = attr(ir, vis)`` on ``B×C×H×W`` float tensors in [0, 1].

The cache key of a ``dir:`` method is a hash of the names and bytes of its image files, so a changed folder is never
served stale results; a folder holding exactly a registered method's fused images scores exactly that method's rows
(the protocols read the same bytes). A ``py:`` method is keyed like a registered one: its state dict and the source
file that defines it.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.datasets import FusionDataset
from ..errors import InputError
from ..models import FusionModel, check_pair
from .cache import folder_hash, method_key

__all__ = ["BenchMethod", "parse_method", "FunctionModel", "FOLDER_EXTS"]

FOLDER_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class FunctionModel(FusionModel):
    """A plain function ``fused = fn(ir, vis)`` seen as a :class:`FusionModel` (``py:`` methods)."""

    def __init__(self, fn, name: str) -> None:
        super().__init__()
        self.fn, self.name = fn, name

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        check_pair(ir, vis, self.min_size, self.name)
        out = self.fn(ir, vis)
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[-2:] != ir.shape[-2:]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(
                f"method '{self.name}' must return a B×C×H×W tensor of the input size "
                f"{ir.shape[-1]}x{ir.shape[-2]}, got {got}"
            )
        return out.float().clamp(0, 1)


@dataclass
class BenchMethod:
    """One row of the bench: its label, kind (``model``, ``reference``, ``dir``), cache key and what fuses it."""

    label: str
    kind: str
    key: str
    identity: dict
    model: nn.Module | None = None
    folder: Path | None = None
    params: int = 0
    _files: dict[Path, dict[str, Path]] = field(default_factory=dict, repr=False)

    @property
    def reference(self) -> bool:
        return self.kind == "reference"

    def folder_images(self, ds: FusionDataset, split: str, judged: bool) -> dict[str, Path]:
        """``dir:`` methods: ``{pair: file}`` of ``split`` — checked complete, readable and at each pair's size."""
        from PIL import Image

        sub = self.folder / split
        if sub.is_dir():
            where = sub
        elif judged:
            where = self.folder
        else:
            raise InputError(
                f"{self.folder}: no folder {split}/ with the fused training images that retrain/seg "
                f"fine-tune on ({self.label}=dir:{self.folder}; layout in docs/bench.md)"
            )
        if where in self._files:
            return self._files[where]
        index = {f.stem: f for f in sorted(where.iterdir()) if f.suffix.lower() in FOLDER_EXTS and f.is_file()}
        out = {}
        for name, ir_path, _ in ds.pairs:
            f = index.get(name)
            if f is None:
                raise InputError(
                    f"{where}: no fused image for pair {name} ({name}.png) of {ds.spec.name}:{split} "
                    f"(method {self.label})"
                )
            try:
                with Image.open(f) as im:
                    im.load()
                    size = im.size
                with Image.open(ir_path) as im:
                    want = im.size
            except (OSError, ValueError) as e:
                raise InputError(
                    f"{f}: unreadable fused image for pair {name} (method {self.label}: "
                    f"{type(e).__name__}: {str(e)[:80]})"
                ) from None
            if size != want:
                raise InputError(
                    f"{f}: fused image is {size[0]}x{size[1]} but pair {name} is {want[0]}x{want[1]} "
                    f"(method {self.label})"
                )
            out[name] = f
        self._files[where] = out
        return out


def _user_model(label: str, target: str) -> nn.Module:
    mod_name, _, attr = target.rpartition(":")
    if not mod_name or not attr:
        raise InputError(f"{label}=py:{target}: expected py:package.module:attr")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError(f"{label}=py:{target}: cannot import {mod_name} ({e})") from None
    obj = getattr(mod, attr, None)
    if obj is None:
        raise InputError(f"{label}=py:{target}: module {mod_name} has no attribute {attr}")
    if isinstance(obj, nn.Module):
        model = obj
    elif isinstance(obj, type) and issubclass(obj, nn.Module):
        model = obj()
    elif callable(obj):
        required = [
            p
            for p in inspect.signature(obj).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        model = FunctionModel(obj, label) if len(required) >= 2 else obj()
    else:
        raise InputError(f"{label}=py:{target}: {attr} is not a model, a factory or a function")
    if not isinstance(model, nn.Module):
        raise InputError(f"{label}=py:{target}: the factory returned {type(model).__name__}, not a FusionModel")
    return model


def parse_method(text: str, device: str = "cpu") -> BenchMethod:
    """One ``--methods`` item -> :class:`BenchMethod` (module docstring for the forms)."""
    from .protocols import build_method

    text = text.strip()
    label, eq, spec = text.partition("=")
    if not eq or any(c in label for c in "?@:/\\&"):  # no LABEL= (the '=' belongs to an option or a path)
        label, eq, spec = text, "", text
    label, spec = label.strip(), spec.strip()
    if eq and not label:
        raise InputError(f"--methods {text}: empty label before '='")
    if spec.startswith("dir:"):
        folder = Path(spec[4:]).expanduser()
        if not folder.is_dir():
            raise InputError(f"{folder}: folder of fused images not found (--methods {text})")
        ident = {"method": label, "folder": str(folder.resolve()), "files_sha256": folder_hash(folder, FOLDER_EXTS)}
        return BenchMethod(label, "dir", f"{label}-dir-{ident['files_sha256'][:12]}", ident, folder=folder.resolve())
    if spec.startswith("py:"):
        model = _user_model(label, spec[3:]).to(device).eval()
        key, ident = method_key(f"py_{label}", {"target": spec[3:]}, model)
        return BenchMethod(label, "model", key, ident, model=model, params=sum(p.numel() for p in model.parameters()))
    if eq and (":" in spec.partition("?")[0].partition("@")[0]):
        raise InputError(
            f"--methods {text}: unknown method form (LABEL=dir:PATH, LABEL=py:module:attr or a method name)"
        )
    name, model, opts, is_ref = build_method(spec, device)
    key, ident = method_key(name if not is_ref else f"ref_{name}", opts, model if not is_ref else None)
    return BenchMethod(
        label,
        "reference" if is_ref else "model",
        key,
        ident,
        model=model,
        params=sum(p.numel() for p in model.parameters()),
    )

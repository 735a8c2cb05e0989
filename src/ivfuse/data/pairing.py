"""Pairing infrared and visible files by name — strictly, never by sorted position."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError, PairingError
from .images import IMAGE_EXTENSIONS

__all__ = ["list_images", "pair_by_stem"]


def list_images(folder: str | os.PathLike, recursive: bool = False) -> dict[str, Path]:
    """Map each image's key (file stem, or relative path without extension if ``recursive``) to its path.

    Two files with the same key (``a.png`` and ``a.jpg``) are an error naming both. So is an image name that is a
    broken symbolic link or a symbolic-link loop, and a name that is not valid UTF-8 (it could not be written into
    results, reports or the fused file names faithfully): an :class:`InputError` naming it (invalid bytes shown as
    ``\\xff``). Symbolic links to folders are not followed in recursive listings (a link loop cannot recurse).
    """
    d = Path(folder)
    if not d.exists():
        raise InputError(f"{d}: folder not found")
    if not d.is_dir():
        raise InputError(f"{d}: is a file, expected a folder of images")
    files = d.rglob("*") if recursive else d.iterdir()
    out: dict[str, Path] = {}
    for f in sorted(files):
        if f.name.startswith(".") or f.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if not _utf8(f.name):
            raise InputError(f"{shown(f)}: file name is not valid UTF-8; rename the file")
        if not f.is_file():
            if f.is_symlink():
                why = "a symbolic-link loop" if _loops(f) else "a broken symbolic link"
                raise InputError(f"{f}: is {why} (target {shown(Path(os.readlink(f)))})")
            continue
        key = f.relative_to(d).with_suffix("").as_posix() if recursive else f.stem
        if key in out:
            raise PairingError(f"{d}: two images share the name '{key}' ({out[key].name}, {f.name})")
        out[key] = f
    return out


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.listdir maps undecodable bytes to lone surrogates (PEP 383)
        return False
    return True


def shown(p: str | os.PathLike) -> str:
    """A path printable on one line whatever its bytes: undecodable bytes as ``\\xNN``."""
    return os.fsencode(p).decode("utf-8", "backslashreplace")


def _loops(f: Path) -> bool:
    try:
        f.resolve(strict=True)
    except RuntimeError:  # Python < 3.13: "Symlink loop"
        return True
    except OSError as e:
        import errno

        return e.errno == errno.ELOOP
    return False


def _fmt(names: list[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def pair_by_stem(
    ir_dir: str | os.PathLike,
    vis_dir: str | os.PathLike,
    *,
    recursive: bool = False,
    allow_unmatched: bool = False,
) -> list[tuple[str, Path, Path]]:
    """Return ``[(key, ir_path, vis_path)]`` sorted by key for files present in both folders.

    Unmatched names raise :class:`PairingError` listing them (unless ``allow_unmatched``); an empty
    folder raises too.
    """
    ir, vis = list_images(ir_dir, recursive), list_images(vis_dir, recursive)
    if not ir:
        raise InputError(f"{ir_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    if not vis:
        raise InputError(f"{vis_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    only_ir, only_vis = sorted(set(ir) - set(vis)), sorted(set(vis) - set(ir))
    if (only_ir or only_vis) and not allow_unmatched:
        parts = []
        if only_ir:
            parts.append(f"only in {ir_dir}: {_fmt(only_ir)}")
        if only_vis:
            parts.append(f"only in {vis_dir}: {_fmt(only_vis)}")
        raise PairingError("unpaired images (pairs are matched by file name): " + "; ".join(parts))
    keys = sorted(set(ir) & set(vis))
    if not keys:
        raise PairingError(f"no file names in common between {ir_dir} and {vis_dir}")
    return [(k, ir[k], vis[k]) for k in keys]

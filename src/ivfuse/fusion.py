"""Fusing tensors, file pairs and folders with any registered method.

>>> fused = ivfuse.fuse(ir, vis, method="gff")                 # tensors B×C×H×W in [0, 1]
>>> ivfuse.fuse_files("ir.png", "vis.png", "fused.png")         # colour kept, original size
>>> ivfuse.fuse_folder("IR_DIR", "VIS_DIR", "OUT_DIR")          # pairs matched by file stem

Outputs are written atomically; in folder mode everything is staged in a hidden folder and moved into
place only when every pair has been fused, so a bad pair leaves no partial output behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .data.images import IMAGE_EXTENSIONS, is_planar, read_ir, read_vis, write_image
from .data.pairing import pair_by_stem
from .errors import InputError, IvfuseError, PairingError
from .models import FusionModel, create_model

__all__ = ["DEFAULT_METHOD", "get_model", "fuse", "fuse_files", "fuse_folder"]

#: method used when none is named
DEFAULT_METHOD = "metafusion"


def get_model(method: str | FusionModel | None = None, device: str | torch.device = "cpu", **options: Any) -> FusionModel:
    """A ready (eval-mode) model: an instance is returned as is, a name is created with ``options``."""
    if isinstance(method, FusionModel):
        return method.to(device).eval()
    return create_model(method or DEFAULT_METHOD, **options).to(device).eval()


@torch.inference_mode()
def fuse(
    ir: torch.Tensor,
    vis: torch.Tensor,
    method: str | FusionModel | None = None,
    device: str | torch.device | None = None,
    **options: Any,
) -> torch.Tensor:
    """Fuse ``ir`` (B×1×H×W or 1×H×W) with ``vis`` (B×{1,3}×H×W or {1,3}×H×W); returns the same layout."""
    single = ir.ndim == 3
    if single:
        ir, vis = ir[None], vis[None]
    device = device or ir.device
    model = get_model(method, device, **options)
    out = model(ir.to(device, torch.float32), vis.to(device, torch.float32)).cpu()
    return out[0] if single else out


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header without decoding the pixels (TIFF through tifffile)."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as t:
                shape = t.pages[0].shape
        except Exception as e:
            raise InputError(f"{path}: cannot be read as a TIFF image ({e})") from None
        if is_planar(shape):
            shape = shape[1:]
        return shape[1], shape[0]
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: cannot be read as an image ({' '.join(str(e).split())[:120]})") from None


def _check_pair_files(ir_path: Path, vis_path: Path, min_size: int, method: str) -> None:
    wi, hi = _image_size(ir_path)
    wv, hv = _image_size(vis_path)
    if (wi, hi) != (wv, hv):
        raise PairingError(f"{vis_path}: visible image is {wv}x{hv} but infrared {ir_path.name} is {wi}x{hi}")
    if min(wi, hi) < min_size:
        raise InputError(f"{ir_path}: image {wi}x{hi} is smaller than the {min_size}x{min_size} minimum of '{method}'")


def _fuse_pair(model: FusionModel, ir_path: Path, vis_path: Path, ir_norm: str, device: str | torch.device = "cpu") -> torch.Tensor:
    ir, vis = read_ir(ir_path, ir_norm), read_vis(vis_path)
    if ir.shape[-2:] != vis.shape[-2:]:
        raise PairingError(
            f"{vis_path}: visible image is {vis.shape[-1]}x{vis.shape[-2]} but infrared is {ir.shape[-1]}x{ir.shape[-2]}"
        )
    dev = torch.device(device)  # classical methods have no parameters to tell the device
    try:
        with torch.inference_mode():
            return model(ir[None].to(dev), vis[None].to(dev))[0].cpu()
    except IvfuseError as e:
        raise type(e)(f"{ir_path}: {e}") from None


def _check_output(out: Path) -> None:
    if out.suffix.lower() not in IMAGE_EXTENSIONS:
        raise InputError(f"{out}: unsupported output extension '{out.suffix}' (use {', '.join(IMAGE_EXTENSIONS)})")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give an image file name, or fuse folders with folder inputs")


def fuse_files(
    ir_path: str | os.PathLike,
    vis_path: str | os.PathLike,
    out_path: str | os.PathLike,
    method: str | FusionModel | None = None,
    device: str = "cpu",
    ir_norm: str = "minmax",
    **options: Any,
) -> Path:
    """Fuse one pair of files and write the result (RGB visible -> RGB fused, input size)."""
    ir_path, vis_path, out = Path(ir_path), Path(vis_path), Path(out_path)
    _check_output(out)
    model = get_model(method, device, **options)
    _check_pair_files(ir_path, vis_path, model.min_size, model.name)
    return write_image(out, _fuse_pair(model, ir_path, vis_path, ir_norm, device))


def fuse_folder(
    ir_dir: str | os.PathLike,
    vis_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    method: str | FusionModel | None = None,
    device: str = "cpu",
    ext: str = ".png",
    ir_norm: str = "minmax",
    progress: bool = True,
    **options: Any,
) -> list[Path]:
    """Fuse every pair of two folders (matched by file stem, strictly) into ``out_dir/<stem><ext>``."""
    out_dir = Path(out_dir)
    ext = ext if ext.startswith(".") else "." + ext
    if ext.lower() not in IMAGE_EXTENSIONS:
        raise InputError(f"unsupported output extension '{ext}' (use {', '.join(IMAGE_EXTENSIONS)})")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    pairs = pair_by_stem(ir_dir, vis_dir)
    model = get_model(method, device, **options)
    for _, ip, vp in pairs:  # header-only checks first: fail before writing anything
        _check_pair_files(ip, vp, model.min_size, model.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".ivfuse-", dir=out_dir))
    try:
        from tqdm.auto import tqdm

        for key, ip, vp in tqdm(pairs, desc=f"fuse[{model.name}]", unit="pair", disable=not progress):
            write_image(stage / f"{key}{ext}", _fuse_pair(model, ip, vp, ir_norm, device))
        written = []
        for key, _, _ in pairs:
            dest = out_dir / f"{key}{ext}"
            os.replace(stage / f"{key}{ext}", dest)
            written.append(dest)
        return written
    finally:
        shutil.rmtree(stage, ignore_errors=True)

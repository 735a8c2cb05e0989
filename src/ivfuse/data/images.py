"""Reading and writing images, and the colour convention of ivfuse.

* :func:`read_ir` returns a float tensor ``1×H×W`` in [0, 1]:
  8-bit data is divided by 255; 16-bit and float data (raw thermal counts, temperatures) are
  normalised per image according to ``ir_norm`` (default ``"minmax"``: ``(x - min) / (max - min)``;
  ``"percentile"``: the same between the 0.5 and 99.5 percentiles, clipped — robust to hot pixels;
  ``"scale"``: divide by the dtype's maximum, floats must already lie in [0, 1]).
  Colour-stored IR (three equal channels, as TNO/MSRS/LLVIP ship it) is read as one channel;
  three different channels (a false-colour palette) are reduced to BT.601 luma.
* :func:`read_vis` returns ``3×H×W`` RGB in [0, 1], or ``1×H×W`` for gray images (including RGB files
  whose three channels are identical, as in TNO).
* Palette images are expanded to RGB; an alpha channel is dropped (the colour is used as stored).
* :func:`write_image` writes atomically: a temporary file in the target folder, then ``os.replace``.

Colour fusion in ivfuse happens on luminance: RGB -> YCbCr (BT.601 full range, kornia), fuse Y with the
IR image, put Cb/Cr back (:func:`ivfuse.fusion.fuse_tensors`).
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..utils import atomic_write_bytes

if TYPE_CHECKING:  # torch is imported lazily so that metric evaluation starts fast
    import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "read_array",
    "read_ir",
    "read_vis",
    "read_pair",
    "image_size",
    "read_gray_u8",
    "to_tensor",
    "write_image",
    "IR_NORMS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IR_NORMS = ("minmax", "percentile", "scale")


def read_array(path: str | os.PathLike) -> np.ndarray:
    """Read an image file into a numpy array ``H×W`` or ``H×W×C`` with its stored dtype.

    Palette images become RGB, LA becomes L, RGBA/ CMYK become RGB. Raises :class:`InputError` naming
    the file if it is missing, not an image, truncated, or of an unsupported layout.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, expected an image file")
    if p.suffix.lower() in (".tif", ".tiff"):
        arr = _read_tiff(p)
    else:
        with _open_pil(p) as im:
            im.load()
            arr = _pil_to_array(im, p)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[2] == 2:  # gray + alpha
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise InputError(f"{p}: unsupported image layout {arr.shape}")
    if arr.size == 0 or min(arr.shape[:2]) < 1:
        raise InputError(f"{p}: image is empty")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"{p}: contains NaN or inf values")
    return arr


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the file's header, no pixel decoded (TIFF through tifffile); the same one-line
    :class:`InputError` as :func:`read_array` for a missing, unreadable or oversized (decompression-bomb) file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if p.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(p) as t:
                shape = t.pages[0].shape
        except Exception as e:  # tifffile raises many types for corrupt files
            raise InputError(f"{p}: cannot be read as a TIFF image ({_short(e)})") from None
        if is_planar(shape):
            shape = shape[1:]
        if Image.MAX_IMAGE_PIXELS and shape[0] * shape[1] > Image.MAX_IMAGE_PIXELS:
            raise InputError(f"{p}: {_bomb(Image.DecompressionBombError(f'({shape[0] * shape[1]} pixels)'))}")
        return shape[1], shape[0]
    with _open_pil(p) as im:
        return im.size


def read_pair(ir_path: str | os.PathLike, vis_path: str | os.PathLike, ir_norm: str = "minmax"):
    """``(ir 1×H×W, vis C×H×W)`` float tensors in [0, 1] of one pair (:func:`read_ir`, :func:`read_vis`);
    :class:`~ivfuse.errors.PairingError` naming the visible file when the sizes differ."""
    from ..errors import PairingError

    ir, vis = read_ir(ir_path, ir_norm), read_vis(vis_path)
    if ir.shape[-2:] != vis.shape[-2:]:
        raise PairingError(
            f"{vis_path}: visible image is {vis.shape[-1]}x{vis.shape[-2]} "
            f"but infrared is {ir.shape[-1]}x{ir.shape[-2]}"
        )
    return ir, vis


@contextmanager
def _open_pil(p: Path):
    """``Image.open(p)`` for :func:`read_array` and :func:`image_size`: the header's size is checked before any pixel
    is decoded (Pillow warns above ``MAX_IMAGE_PIXELS`` and raises above twice that: both are refused here), and
    every failure inside the block becomes a one-line :class:`InputError` naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{p}: {_bomb(e)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        raise InputError(f"{p}: cannot be read as an image ({_short(e)})") from None


def _bomb(e: Exception) -> str:
    m = re.search(r"\((\d+) pixels\)", str(e))
    size = f"{int(m.group(1))} pixels" if m else "its size"
    return (
        f"image of {size} exceeds the limit of {Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS; "
        f"a decompression bomb?); raise that limit if the image is genuine"
    )


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:160] or type(e).__name__


def _pil_to_array(im: Image.Image, p: Path) -> np.ndarray:
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    if im.mode == "1":
        im = im.convert("L")
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im, dtype=np.uint16)
    if im.mode == "I":
        a = np.asarray(im)
        return a.astype(np.uint16) if a.min() >= 0 and a.max() <= 65535 else a.astype(np.float64)
    return np.asarray(im)


def is_planar(shape: tuple[int, ...]) -> bool:
    """Whether a TIFF page shape is planar ``C×H×W`` (channels first) rather than ``H×W×C``."""
    return len(shape) == 3 and shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4)


def _read_tiff(p: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:  # the header's size first: a hostile file may claim 100k x 100k
            shape = tf.series[0].shape if tf.series else ()
        n = int(np.prod(sorted(shape)[-2:], dtype=np.int64)) if shape else 0  # H x W (channels are the smaller axes)
        if Image.MAX_IMAGE_PIXELS and n > Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"({n} pixels)")
        arr = tifffile.imread(p)
    except Image.DecompressionBombError as e:
        raise InputError(f"{p}: {_bomb(e)}") from None
    except Exception as e:  # tifffile raises many types for corrupt files
        raise InputError(f"{p}: cannot be read as a TIFF image ({_short(e)})") from None
    arr = np.asarray(arr)
    if is_planar(arr.shape):
        arr = np.moveaxis(arr, 0, -1)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    return arr


def _same_channels(arr: np.ndarray) -> bool:
    return arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])


def luma(arr: np.ndarray) -> np.ndarray:
    """BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` of an ``H×W×3`` array, float64 (not rounded)."""
    a = arr.astype(np.float64)
    return 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]


def _to_unit(arr: np.ndarray, p: Path, norm: str) -> np.ndarray:
    """Map one single-channel array to float32 [0, 1]."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if norm not in IR_NORMS:
        raise InputError(f"{p}: unknown ir_norm '{norm}' (choose from {', '.join(IR_NORMS)})")
    a = arr.astype(np.float64)
    if norm == "scale":
        if np.issubdtype(arr.dtype, np.integer):
            return (a / np.iinfo(arr.dtype).max).astype(np.float32)
        if a.min() < 0 or a.max() > 1:
            raise InputError(f"{p}: float values outside [0, 1] ({a.min():.4g}..{a.max():.4g}); use ir_norm=minmax")
        return a.astype(np.float32)
    lo, hi = (np.percentile(a, 0.5), np.percentile(a, 99.5)) if norm == "percentile" else (a.min(), a.max())
    if hi <= lo:
        return np.zeros_like(a, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0, 1).astype(np.float32)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``H×W`` -> ``1×H×W``, ``H×W×C`` -> ``C×H×W`` float tensor (no scaling)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def read_ir(path: str | os.PathLike, ir_norm: str = "minmax") -> torch.Tensor:
    """Read an infrared image as a ``1×H×W`` float tensor in [0, 1] (see module docstring)."""
    p = Path(path)
    arr = read_array(p)
    if arr.ndim == 3:
        if _same_channels(arr):
            arr = arr[..., 0]
        elif arr.dtype == np.uint8:
            return to_tensor(luma(arr) / 255.0)
        else:
            arr = luma(arr)
    return to_tensor(_to_unit(arr, p, ir_norm))


def read_vis(path: str | os.PathLike, ir_norm: str = "minmax") -> torch.Tensor:
    """Read a visible image as ``3×H×W`` RGB or ``1×H×W`` gray float tensor in [0, 1]."""
    p = Path(path)
    arr = read_array(p)
    if arr.ndim == 3 and _same_channels(arr):
        arr = arr[..., 0]
    if arr.ndim == 2:
        return to_tensor(_to_unit(arr, p, ir_norm))
    if arr.dtype == np.uint8:
        return to_tensor(arr.astype(np.float32) / 255.0)
    if np.issubdtype(arr.dtype, np.integer):
        return to_tensor(arr.astype(np.float32) / np.iinfo(arr.dtype).max)
    a = arr.astype(np.float64)
    if a.min() < 0 or a.max() > 1:
        raise InputError(f"{p}: float RGB values outside [0, 1] ({a.min():.4g}..{a.max():.4g})")
    return to_tensor(a)


def read_gray_u8(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit image as float64 gray on 0–255 for metrics (colour -> rounded BT.601 luma, as CDDFuse)."""
    p = Path(path)
    arr = read_array(p)
    if arr.dtype != np.uint8:
        raise InputError(f"{p}: metrics expect 8-bit images, got {arr.dtype}")
    if arr.ndim == 3:
        return arr[..., 0].astype(np.float64) if _same_channels(arr) else np.round(luma(arr))
    return arr.astype(np.float64)


def write_image(path: str | os.PathLike, img: torch.Tensor | np.ndarray) -> Path:
    """Write a ``C×H×W`` / ``H×W`` float image in [0, 1] as 8-bit, atomically (temp file + rename)."""
    import torch

    p = Path(path)
    if isinstance(img, torch.Tensor):
        t = img.detach().to("cpu", torch.float32)
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise InputError(f"{p}: cannot write a batch of {t.shape[0]} images to one file")
            t = t[0]
        arr = t.permute(1, 2, 0).numpy() if t.ndim == 3 else t.numpy()
    else:
        arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not np.isfinite(arr).all():
        raise InputError(f"{p}: refusing to write an image with NaN or inf values")
    u8 = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    ext = p.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise InputError(f"{p}: unsupported output extension '{p.suffix}' (use {', '.join(IMAGE_EXTENSIONS)})")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}[ext]
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return atomic_write_bytes(p, buf.getvalue())

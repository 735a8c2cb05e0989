"""Tiled inference and the memory guard: fuse images of any size in bounded memory.

>>> fused = fuse_tiled(model, ir, vis, tile=256, overlap=32)   # B×1×H×W, B×C×H×W -> B×C×H×W
>>> check_memory(model, 9000, 12000)                           # InputError before an out-of-memory kill

**Tiling** (:func:`fuse_tiled`, ``ivfuse fuse --tile N [--tile-overlap M]``, ``Runner(..., tile=N)``): the image
is cut into ``tile × tile`` windows that overlap by at least ``overlap`` pixels; the last window of a row/column is
shifted inside the image (never zero-padded), so every window is a real crop of at least ``tile × tile`` (an image
side smaller than ``tile`` is taken whole). Window starts are multiples of 16 (:func:`default_align`), so networks
that downsample see the same sampling grid as on the whole image. Each window goes through the model's whole
``forward`` (colour conversion included: BT.601 YCbCr is per pixel, so tiling it changes nothing), and the windows
are blended with separable raised-cosine weights that fall from 1 to 0 across each overlap (no ramp at the image
border), so there are no seams. Peak memory is that of one window's forward pass plus the full-size input and
output buffers.

Which methods match their untiled output (MSRS 00004N, 640×480, ``tile=256, overlap=32``; mean / max absolute
difference in grey levels; table in ``docs/deployment.md``): methods whose output at a pixel depends on a
neighbourhood only (convolutions, local attention) match within the blending error at the seams: ``lite``
0.0006 / 0.25, ``metafusion`` 0.0004 / 0.35, ``tim`` 0.0014 / 0.77, and the peers ``ifcnn``, ``didfuse``,
``densefuse``, ``u2fusion``, ``sdnet``, ``stdfusionnet``, ``sage`` and ``tardal`` (default ``tardal++``, running
BatchNorm statistics), all ≤ 0.003 mean. Methods with **per-image global operations** compute them on each tile
instead of the whole image:

* close, not exact (< 1/255 mean, a few grey levels at most): ``occo`` 0.45 / 4.5 (channel attention on global
  mean/max pooling, global ``Kᵀ V`` context), ``tsjnet`` 0.37 / 4.3 (squeeze-excitation and ResNeSt split
  attention on global average pooling), ``csf`` 0.31 / 14.7 (per-image means of the saliency);
* different: ``pmgi`` 4.9 / 39 (standardises each input image, so each tile is standardised alone);
* data-dependent: ``seafusion`` (min–max stretch of each output) matched on the test pair (0.0007) because every
  tile's fused range already spans ~[0, 1]; a tile without dark or bright pixels is stretched differently. Not
  measured and expected to differ: ``tardal`` with ``variant="tardal"`` or ``bn="image"`` (per-image BatchNorm
  statistics) and the ``preset="official"`` variants of OCCO/TSJNet/TIM (min–max stretch, batch statistics).

**Memory guard** (:func:`check_memory`): before a forward pass, the peak memory it needs is estimated as
``batch × H × W × bytes_per_pixel`` plus the input/output buffers and compared with the available memory
(``/proc/meminfo`` ``MemAvailable`` plus the freed memory the heap keeps on the CPU, ``torch.cuda.mem_get_info`` on
CUDA, no check elsewhere).
``bytes_per_pixel`` is, in order: the model's ``peak_bytes_per_pixel`` attribute, the value measured for the
method in :data:`PEAK_BYTES_PER_PIXEL` (``python benchmarks/bench_tiling.py --calibrate``: growth of the peak RSS
``VmHWM`` of a fresh process over its RSS before the forward, at 640×480 and 1280×960 fp32 on the CPU, the larger
of the two, ×1.25; the larger of the values measured with glibc's default allocator and with the one
:mod:`ivfuse.allocator` sets, which keeps freed memory and raised some peaks by up to 50 %), or a generic estimate
from the widest convolution (:func:`generic_bytes_per_pixel`). A pass that would not fit raises a one-line
:class:`InputError` naming the size, the estimate, the memory available and the options that help (``--tile 1024``,
``--batch 1``). ``IVFUSE_AVAILABLE_MEMORY`` (bytes, or with a ``K``/``M``/``G`` suffix) overrides the available
memory (tests); ``IVFUSE_AVAILABLE_MEMORY=off`` disables the check.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import torch

from .allocator import retained
from .errors import InputError

__all__ = [
    "PEAK_BYTES_PER_PIXEL",
    "TILE_HINT",
    "available_memory",
    "check_memory",
    "check_tile",
    "default_align",
    "default_overlap",
    "estimate_memory",
    "fuse_tiled",
    "generic_bytes_per_pixel",
    "tile_starts",
]

log = logging.getLogger("ivfuse")

#: the tile size the memory error suggests
TILE_HINT = 1024

#: measured peak working memory of one fp32 CPU forward pass, bytes per input pixel (batch 1), ×1.25 margin;
#: ``python benchmarks/bench_tiling.py --calibrate [--malloc system]`` prints this table: each value is the larger of
#: the two allocator settings (2026-12-07)
PEAK_BYTES_PER_PIXEL: dict[str, float] = {
    "average": 126,
    "csf": 2140,
    "densefuse": 1429,
    "didfuse": 8727,
    "gff": 344,
    "ifcnn": 1767,
    "laplacian": 262,
    "lite": 286,
    "max": 118,
    "metafusion": 1988,
    "occo": 3758,
    "pmgi": 2567,
    "sage": 1513,
    "sdnet": 1521,
    "seafusion": 2171,
    "stdfusionnet": 4451,
    "tardal": 3256,
    "thermal_chroma": 128,
    "tim": 1084,
    "tsjnet": 3684,
    "u2fusion": 5183,
    "warm_average": 131,
}


def default_overlap(tile: int) -> int:
    """The overlap used when none is given: ``tile // 8`` (32 for 256, 128 for 1024), at least 1 px, below ``tile``."""
    return max(1, min(tile // 8, tile - 1))


def check_tile(
    tile: int | None, overlap: int | None = None, min_size: int = 1, name: str = "method"
) -> tuple[int, int] | None:
    """Validate ``tile``/``overlap`` (one-line :class:`InputError`s); returns ``(tile, overlap)`` or ``None`` (no
    tiling)."""
    if tile is None or tile == 0:
        if overlap is not None:
            raise InputError(f"--tile-overlap {overlap}: needs --tile N")
        return None
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise InputError(f"--tile {tile}: must be a positive number of pixels (or 0 for no tiling)")
    if tile < min_size:
        raise InputError(
            f"--tile {tile}: smaller than the {min_size}x{min_size} minimum of '{name}' "
            f"(use --tile {max(min_size, 64)} or more)"
        )
    if overlap is None:
        overlap = default_overlap(tile)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise InputError(f"--tile-overlap {overlap}: must be >= 0 pixels")
    if overlap >= tile:
        raise InputError(f"--tile-overlap {overlap}: must be smaller than --tile {tile}")
    return tile, overlap


def default_align(tile: int) -> int:
    """Window starts are multiples of this: 16, or the largest power of two <= ``tile / 4`` for small tiles."""
    return 1 << int(math.log2(max(1, min(16, tile // 4))))


def tile_starts(n: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """``(start, size)`` of windows covering ``0..n``: ``tile`` pixels each, starts multiples of ``align``,
    neighbours overlapping by at least ``overlap``; the last window ends at ``n`` (shifted inside the image, never
    padded), and is up to ``align - 1`` pixels longer than ``tile`` so that its start stays aligned. ``n <= tile``:
    one window ``(0, n)``.

    Aligned starts keep every window on the sampling grid of the whole image: a network that downsamples by 2^k
    computes the same coarse pixels in a window as in the whole image only when the window starts at a multiple of
    2^k (with an odd start, ``lite``'s stride-2 context differs by ~1 grey level on average). When
    ``tile - overlap < align`` the alignment is halved until the overlap fits."""
    if n <= tile:
        return [(0, n)]
    align = max(1, min(align, tile))
    while align > 1 and tile - overlap < align:  # the overlap asked for wins over the alignment
        align //= 2
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, n - tile, stride))
    last = (n - tile) // align * align
    if last > starts[-1]:
        starts.append(last)
    return [(s, tile) for s in starts[:-1]] + [(starts[-1], n - starts[-1])]


def _ramps(n: int, overlap: int, windows: list[tuple[int, int]], device) -> list[torch.Tensor]:
    """Per-window 1-D weights: raised-cosine ramps of ``overlap`` px at inner edges, 1 elsewhere (> 0 everywhere)."""
    out = []
    for s, size in windows:
        w = torch.ones(size, device=device, dtype=torch.float32)
        ov = min(overlap, size)
        if ov > 0:
            i = torch.arange(ov, device=device, dtype=torch.float64)
            up = (0.5 - 0.5 * torch.cos(math.pi * (i + 0.5) / ov)).float()
            if s > 0:
                w[:ov] = up
            if s + size < n:
                w[size - ov :] = torch.minimum(w[size - ov :], up.flip(0))
        out.append(w)
    return out


def fuse_tiled(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ir: torch.Tensor,
    vis: torch.Tensor,
    tile: int,
    overlap: int | None = None,
    align: int | None = None,
) -> torch.Tensor:
    """Fuse ``(ir, vis)`` window by window and blend the windows without seams.

    Args:
        model: a fusion model or any callable ``model(ir_tile, vis_tile) -> fused_tile`` (its ``min_size``, if
            any, is checked against ``tile``).
        ir: infrared ``B×1×H×W``.
        vis: visible ``B×1×H×W`` or ``B×3×H×W``.
        tile: window side in pixels (a side of the image shorter than ``tile`` is taken whole).
        overlap: minimum overlap of neighbouring windows in pixels (default :func:`default_overlap`), blended with
            raised-cosine weights.
        align: window starts are multiples of ``align`` (default: the model's ``tile_align`` attribute, else
            :func:`default_align`: 16 for tiles of 64 px and more), so that downsampling networks see the same grid
            as on the whole image (:func:`tile_starts`).

    Returns:
        ``B×C×H×W`` float32 (``C`` = the model's output channels), on the inputs' device. When one window covers
        the image (``tile >= H`` and ``>= W``) it is exactly ``model(ir, vis)``.

    Memory: one ``B×C×tile×tile`` forward pass at a time plus a float32 output buffer ``B×C×H×W``. Run it under
    ``torch.inference_mode()`` (as :class:`ivfuse.fusion.Runner` does) or every window's graph is kept.
    """
    if ir.ndim != 4 or vis.ndim != 4:
        raise InputError(f"expected B×C×H×W tensors, got ir {tuple(ir.shape)} and vis {tuple(vis.shape)}")
    if ir.shape[0] != vis.shape[0] or ir.shape[-2:] != vis.shape[-2:]:
        raise InputError(
            f"infrared {ir.shape[-1]}x{ir.shape[-2]} and visible {vis.shape[-1]}x{vis.shape[-2]} "
            "differ in size or batch"
        )
    name = getattr(model, "name", "method")
    tile, overlap = check_tile(tile, overlap, getattr(model, "min_size", 1), name)
    h, w = ir.shape[-2:]
    if tile >= h and tile >= w:
        return model(ir, vis)
    align = align or getattr(model, "tile_align", None) or default_align(tile)
    ys, xs = tile_starts(h, tile, overlap, align), tile_starts(w, tile, overlap, align)
    wy, wx = _ramps(h, overlap, ys, ir.device), _ramps(w, overlap, xs, ir.device)
    norm_y = torch.zeros(h, device=ir.device)
    norm_x = torch.zeros(w, device=ir.device)
    for (s, n), r in zip(ys, wy):
        norm_y[s : s + n] += r
    for (s, n), r in zip(xs, wx):
        norm_x[s : s + n] += r
    log.debug(
        "%s: %dx%d in %d windows of ~%d px (overlap >= %d, starts aligned to %d)",
        name,
        w,
        h,
        len(ys) * len(xs),
        tile,
        overlap,
        align,
    )
    out = None
    for (y0, th), ry in zip(ys, wy):
        for (x0, tw), rx in zip(xs, wx):
            f = model(ir[..., y0 : y0 + th, x0 : x0 + tw], vis[..., y0 : y0 + th, x0 : x0 + tw])
            if out is None:
                out = torch.zeros(ir.shape[0], f.shape[1], h, w, device=f.device, dtype=torch.float32)
            out[..., y0 : y0 + th, x0 : x0 + tw] += f.float() * (ry[:, None] * rx[None, :]).to(f.device)
    out /= norm_y.to(out.device)[:, None]
    out /= norm_x.to(out.device)[None, :]
    return out


# ---------------------------------------------------------------------------------------------------------------
# memory guard


def _parse_bytes(text: str) -> int | None:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(float(t))
    except ValueError:
        raise InputError(f"IVFUSE_AVAILABLE_MEMORY={text!r}: expected bytes (e.g. 8000000000 or 8G) or 'off'") from None


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes available for a forward pass on ``device``: ``$IVFUSE_AVAILABLE_MEMORY`` if set (``off``: ``None``),
    ``torch.cuda.mem_get_info`` free bytes (plus the unused part of PyTorch's cache) on CUDA, ``MemAvailable`` of
    ``/proc/meminfo`` on a Linux CPU (plus the freed memory the heap keeps, :func:`ivfuse.allocator.retained`), else
    ``None`` (unknown: no check)."""
    env = os.environ.get("IVFUSE_AVAILABLE_MEMORY", "").strip()
    if env:
        return None if env.lower() in ("off", "none", "0") else _parse_bytes(env)
    dev = torch.device(device)
    if dev.type == "cuda":
        try:  # free device memory + what PyTorch's caching allocator holds but does not use
            cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
            return int(torch.cuda.mem_get_info(dev)[0] + cached)
        except Exception:  # noqa: BLE001 - no driver / not initialised: unknown
            return None
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):  # + the freed memory the tuned heap keeps for reuse
                    return int(line.split()[1]) * 1024 + retained()
    except OSError:
        pass
    return None


def generic_bytes_per_pixel(model: object) -> float:
    """Conservative estimate for a method that was not measured: twelve float32 activations of its widest
    convolution at full resolution per pixel (256 bytes per pixel at least, and for a model without convolutions).
    Every measured method needs less than this (``bench_tiling.py --calibrate``: 2 to 10 such activations)."""
    width = 0
    if isinstance(model, torch.nn.Module):
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                width = max(width, m.in_channels, m.out_channels)
    return float(max(256, 12 * 4 * width))


def _bytes_per_pixel(model: object) -> tuple[float, str]:
    own = getattr(model, "peak_bytes_per_pixel", None)
    if own:
        return float(own), "model"
    name = str(getattr(model, "method", None) or getattr(model, "name", "")).lower()
    if name in PEAK_BYTES_PER_PIXEL:
        return PEAK_BYTES_PER_PIXEL[name], "measured"
    return generic_bytes_per_pixel(model), "generic"


def estimate_memory(
    model: object, height: int, width: int, batch: int = 1, channels: int = 3, tile: int | None = None
) -> int:
    """Peak bytes one fused image (or batch) of ``height × width`` needs: the forward pass of the whole image, or
    of one ``tile × tile`` window when ``tile`` is set, plus the float32 input and output buffers (``1 + 2·channels``
    values per pixel, twice: tensors and their copies)."""
    bpp, _ = _bytes_per_pixel(model)
    th, tw = (min(tile + 15, height), min(tile + 15, width)) if tile else (height, width)  # last windows: +align-1
    buffers = 2 * 4 * (1 + 2 * channels) * height * width
    return int(batch * (bpp * th * tw + buffers))


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_memory(
    model: object,
    height: int,
    width: int,
    batch: int = 1,
    channels: int = 3,
    tile: int | None = None,
    device: str | torch.device = "cpu",
    available: int | None = None,
) -> None:
    """Raise a one-line :class:`InputError` if fusing ``batch`` images of ``height × width`` (in ``tile`` windows if
    set) would need more memory than is available (``available`` bytes, default :func:`available_memory`); nothing
    is allocated. The message names the size, the estimate and the option that helps (the caller prefixes the file)."""
    avail = available if available is not None else available_memory(device)
    if avail is None:
        return
    need = estimate_memory(model, height, width, batch, channels, tile)
    if need <= avail:
        return
    name = getattr(model, "name", "method")
    min_size = getattr(model, "min_size", 1)
    size = f"image {width}x{height}" + (f" (batch {batch})" if batch > 1 else "")
    where = "on the CPU" if torch.device(device).type == "cpu" else f"on {device}"
    hints = []
    if batch > 1 and estimate_memory(model, height, width, 1, channels, tile) <= avail:
        hints.append("--batch 1")
    tiles = [
        t for t in (TILE_HINT, 512, 256, 128, 64) if t < max(height, width) and t >= min_size and (not tile or t < tile)
    ]
    fits = [t for t in tiles if estimate_memory(model, height, width, 1 if hints else batch, channels, t) <= avail]
    if fits:
        hints.append(f"--tile {fits[0]}")
    if hints:
        hint = "use " + " or ".join(hints)
    else:
        hint = "no --tile or --batch makes it fit: free memory or fuse a smaller image"
    what = f" (--tile {tile})" if tile else ""
    raise InputError(
        f"{size} needs about {_gib(need)} with '{name}'{what} but {_gib(avail)} is available {where}; {hint}"
    )

"""Classical fusion baselines — the floor every learned method must beat.

* ``average``: (IR + Y) / 2.
* ``max``: pixel-wise maximum (the max-abs rule on non-negative intensities).
* ``thermal_chroma``: the infrared image as luminance with the visible image's chroma — *keep the thermal image,
  add colour*; a trivial baseline, not a fusion rule (a gray visible image gives the infrared image back).
* ``laplacian``: Laplacian-pyramid fusion (Burt & Adelson 1983; Toet): detail levels by max-abs
  selection, the coarsest Gaussian level averaged.
* ``gff``: guided-filtering fusion (Li, Kang & Hu, IEEE TIP 2013) with the paper's parameters
  (31×31 mean filter; 3×3 Laplacian; Gaussian r=5, sigma=5; guided filters r1=45, eps1=0.3, r2=7, eps2=1e-6).

All run on any device, batched, with no learned weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d, laplacian

from .base import FusionModel, register_model


@register_model("average")
class AverageFusion(FusionModel):
    """Pixel-wise mean of IR and visible luminance."""

    def fuse_luma(self, ir, y):
        return (ir + y) / 2


@register_model("max")
class MaxFusion(FusionModel):
    """Pixel-wise maximum of IR and visible luminance (max-abs selection on non-negative intensities)."""

    def fuse_luma(self, ir, y):
        return torch.maximum(ir, y)


@register_model("thermal_chroma")
class ThermalChroma(FusionModel):
    """Trivial baseline: the infrared image as luminance, the visible image's chroma (Cb, Cr) kept."""

    def fuse_luma(self, ir, y):
        return ir


def _gauss5(x: torch.Tensor) -> torch.Tensor:
    return gaussian_blur2d(x, (5, 5), (1.0, 1.0), border_type="reflect")


def _down(x: torch.Tensor) -> torch.Tensor:
    return _gauss5(x)[..., ::2, ::2]


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return _gauss5(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``levels`` band-pass images followed by the coarsest Gaussian level (exactly invertible)."""
    pyr, cur = [], x
    for _ in range(levels):
        nxt = _down(cur)
        pyr.append(cur - _up(nxt, cur.shape[-2:]))
        cur = nxt
    pyr.append(cur)
    return pyr


def reconstruct_laplacian(pyr: list[torch.Tensor]) -> torch.Tensor:
    cur = pyr[-1]
    for band in reversed(pyr[:-1]):
        cur = band + _up(cur, band.shape[-2:])
    return cur


@register_model("laplacian")
class LaplacianPyramidFusion(FusionModel):
    """Laplacian-pyramid fusion: max-abs detail selection, averaged base.

    Args:
        levels: number of band-pass levels (image sides must be at least ``2**levels * 2``).
    """

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError("levels must be >= 1")
        self.levels = levels
        self.min_size = 2 ** (levels + 1)

    def fuse_luma(self, ir, y):
        pa, pb = laplacian_pyramid(ir, self.levels), laplacian_pyramid(y, self.levels)
        fused = [torch.where(a.abs() >= b.abs(), a, b) for a, b in zip(pa[:-1], pb[:-1])]
        fused.append((pa[-1] + pb[-1]) / 2)
        return reconstruct_laplacian(fused)


def box_mean(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over the (2r+1)² window clipped to the image (He et al.'s ``boxfilter`` / N), O(1) per pixel.

    Integral images keep the 91×91 window of GFF's base-layer guided filter cheap (kornia's guided_blur
    convolves with the dense window, ~100× slower at that size).
    """

    def csum(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim]
        c = F.pad(t.cumsum(dim), (0, 0, 1, 0) if dim == -2 else (1, 0))
        idx = torch.arange(n, device=t.device)
        hi = (idx + r + 1).clamp(max=n)
        lo = (idx - r).clamp(min=0)
        return c.index_select(dim, hi) - c.index_select(dim, lo)

    ones = torch.ones_like(x[:1, :1])
    return csum(csum(x, -2), -1) / csum(csum(ones, -2), -1)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, r: int, eps: float) -> torch.Tensor:
    """He, Sun & Tang guided filter (gray guide), box windows of radius ``r``."""
    mg, ms = box_mean(guide, r), box_mean(src, r)
    cov = box_mean(guide * src, r) - mg * ms
    var = box_mean(guide * guide, r) - mg * mg
    a = cov / (var + eps)
    b = ms - a * mg
    return box_mean(a, r) * guide + box_mean(b, r)


@register_model("gff")
class GuidedFilterFusion(FusionModel):
    """Guided-filtering fusion (Li, Kang & Hu 2013) of IR and visible luminance."""

    def __init__(
        self,
        mean_size: int = 31,
        r1: int = 45,
        eps1: float = 0.3,
        r2: int = 7,
        eps2: float = 1e-6,
        rg: int = 5,
        sigma_g: float = 5.0,
    ) -> None:
        super().__init__()
        self.mean_size, self.r1, self.eps1, self.r2, self.eps2 = mean_size, r1, eps1, r2, eps2
        self.rg, self.sigma_g = rg, sigma_g
        self.min_size = 2 * rg + 2  # box windows clip at the border; the Gaussian needs reflect room

    def fuse_luma(self, ir, y):
        imgs = torch.stack([ir, y])  # 2×B×1×H×W
        n, b = imgs.shape[:2]
        flat = imgs.flatten(0, 1)
        base = box_mean(flat, self.mean_size // 2)
        detail = flat - base
        sal = laplacian(flat, 3, border_type="replicate", normalized=False).abs()
        k = 2 * self.rg + 1
        sal = gaussian_blur2d(sal, (k, k), (self.sigma_g, self.sigma_g), border_type="replicate")
        sal = sal.view(n, b, *sal.shape[1:])
        winner = sal.argmax(0, keepdim=True)
        p = (torch.arange(n, device=ir.device).view(n, 1, 1, 1, 1) == winner).to(ir.dtype).flatten(0, 1)
        wb = guided_filter(flat, p, self.r1, self.eps1).view(n, b, *flat.shape[1:])
        wd = guided_filter(flat, p, self.r2, self.eps2).view(n, b, *flat.shape[1:])
        wb = wb / wb.sum(0, keepdim=True).clamp_min(1e-8)
        wd = wd / wd.sum(0, keepdim=True).clamp_min(1e-8)
        base, detail = base.view(n, b, *flat.shape[1:]), detail.view(n, b, *flat.shape[1:])
        return (wb * base).sum(0) + (wd * detail).sum(0)

"""Fusion losses on luminance: SSIM, intensity and gradient terms (function + module pairs, kornia-style).

All take ``fused``, ``ir``, ``vis`` as ``B×1×H×W`` tensors in [0, 1] (for colour inputs pass the Y channel).

* :func:`ssim_loss`: ``(1 - SSIM(F, IR)) / 2 + (1 - SSIM(F, VIS)) / 2`` (kornia SSIM, 11×11 Gaussian window).
* :func:`intensity_loss`: ``|F - max(IR, VIS)|_1`` — keeps the salient (hot or bright) intensity.
* :func:`gradient_loss`: ``| |∇F| - max(|∇IR|, |∇VIS|) |_1`` with Sobel gradients — keeps the stronger texture.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from kornia.filters import spatial_gradient
from kornia.losses import ssim_loss as _kornia_ssim_loss
from torch import nn

__all__ = ["ssim_loss", "intensity_loss", "gradient_loss", "FusionLoss"]


def ssim_loss(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, window: int = 11) -> torch.Tensor:
    """Mean structural dissimilarity of the fused image to both sources (kornia's ``(1 - SSIM) / 2``)."""
    return _kornia_ssim_loss(fused, ir, window) + _kornia_ssim_loss(fused, vis, window)


def intensity_loss(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    return (fused - torch.maximum(ir, vis)).abs().mean()


def _grad_mag(x: torch.Tensor) -> torch.Tensor:
    g = spatial_gradient(x, mode="sobel", order=1)  # B×C×2×H×W
    return g.abs().sum(2)


def gradient_loss(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    return (_grad_mag(fused) - torch.maximum(_grad_mag(ir), _grad_mag(vis))).abs().mean()


_TERMS = {"ssim": ssim_loss, "intensity": intensity_loss, "gradient": gradient_loss}


class FusionLoss(nn.Module):
    """Weighted sum of fusion loss terms.

    Args:
        weights: ``{"ssim": 1.0, "intensity": 1.0, "gradient": 1.0}``-like mapping (unknown names raise).

    Returns ``(total, {term: value})`` when called as ``loss(fused, ir, vis)``.
    """

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        weights = dict(weights or {"ssim": 1.0})
        from ..errors import suggest

        for k in weights:
            if k not in _TERMS:
                raise suggest(k, _TERMS, "fusion loss term")
        self.weights = {k: float(v) for k, v in weights.items() if float(v) != 0}

    def forward(self, fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor):
        parts = {k: _TERMS[k](fused, ir, vis) for k in self.weights}
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}

"""``warm_average``: the pixel average, with locally warm regions of the infrared image kept at full thermal contrast.

A classical candidate of issue 20 (ivfuse's own rule, no learned weights). Issue 20's per-class table shows what the
fine-tuned judge rewards: the infrared image keeps person AP (warm people stand out against a cooler background),
the pixel average keeps cars and bicycles (the visible band's texture). This rule takes each of them where it
helps, deciding *without boxes* where a warm target is:

* local thermal contrast ``c = IR − G_σ(IR)`` (a Gaussian of ``sigma`` pixels estimates the local background;
  persons are 20–80 px tall on MSRS 640×480 frames);
* weight ``w = clamp(c / tau, 0, 1)``, smoothed by a Gaussian of ``soften`` pixels (no seams);
* fused luminance ``w·IR + (1 − w)·(IR + Y)/2``; colour from the visible image (the base class's YCbCr path).

So a pixel at least ``tau`` (0.08 ≈ 20 grey levels) warmer than its surroundings is the infrared image, a pixel
no warmer than its surroundings is the average, with a linear ramp between. The parameters were fixed before any
dev-val run (docs/bench.md, "Issue 20: candidates and the rule written before judging them").
"""

from __future__ import annotations

import torch
from kornia.filters import gaussian_blur2d

from ..errors import InputError
from .base import FusionModel, register_model

__all__ = ["WarmAverage", "warm_weight"]


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = 2 * int(3 * sigma) + 1
    return gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


def warm_weight(ir: torch.Tensor, sigma: float = 12.0, tau: float = 0.08, soften: float = 2.0) -> torch.Tensor:
    """``B×1×H×W`` weight of the infrared image in [0, 1] from its local thermal contrast (``ir``: ``B×1×H×W``)."""
    w = ((ir - _blur(ir, sigma)) / tau).clamp(0, 1)
    return _blur(w, soften).clamp(0, 1) if soften > 0 else w


@register_model("warm_average")
class WarmAverage(FusionModel):
    """The pixel average, with the locally warm infrared regions kept (see the module docstring).

    Args:
        sigma: Gaussian sigma (px) of the local thermal background.
        tau: contrast (in [0, 1] intensity) above the background at which the infrared image is taken fully.
        soften: Gaussian sigma (px) that smooths the weight map (0: none).
    """

    def __init__(self, sigma: float = 12.0, tau: float = 0.08, soften: float = 2.0) -> None:
        super().__init__()
        if sigma <= 0 or tau <= 0 or soften < 0:
            raise InputError(f"warm_average needs sigma > 0, tau > 0, soften >= 0 (got {sigma}, {tau}, {soften})")
        self.sigma, self.tau, self.soften = float(sigma), float(tau), float(soften)
        self.min_size = int(3 * self.sigma) + 2  # reflect padding of the background Gaussian (pad < side)

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = warm_weight(ir, self.sigma, self.tau, self.soften)
        return w * ir + (1 - w) * (ir + y) / 2

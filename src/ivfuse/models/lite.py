"""``lite``: a small real-time fusion CNN (≥ 15 images/s at 640×480 on 2 CPU cores, fp32).

Design (ivfuse's own, not a paper's): the expensive part of a fusion net is full-resolution convolution, so
``LiteFusionNet`` works mostly at half resolution and keeps only a thin full-resolution path.

* stem: 3×3 conv (IR, Y) → ``width`` channels at full resolution (ReLU);
* context: a stride-2 3×3 conv to ``2·width`` channels and two 3×3 convs at half resolution (ReLU), upsampled
  bilinearly back to full resolution;
* head: 3×3 conv of the stem features plus a 1×1 conv of the context features (taken at half resolution and
  upsampled, 2 channels only — cheaper than upsampling and concatenating the features) → 2 maps: a weight
  ``w = sigmoid(a)`` and a detail term ``d = 0.25·tanh(b)``; fused luminance ``= w·IR + (1 − w)·Y + d``
  (clamped to [0, 1]).

The weight keeps the fused image a convex mix of the sources where that suffices (what the pixel average does
with ``w = 0.5``); the detail term lets the net add back contrast and texture the mix loses. Colour: the base
class's YCbCr path (fuse Y, keep Cb/Cr of the visible image).

It is trained by the ``lite`` recipe (:mod:`ivfuse.engine.lite`, ``ivfuse train lite preset=cpu``) with a fusion
loss (:class:`ivfuse.losses.FusionLoss`) and/or distillation from a bigger method; the shipped weights
``weights/lite_default.safetensors`` are distilled from the task-guided TIM (see ``docs/deployment.md`` for how
they were chosen, scores and speed).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .base import FusionModel, load_checked, load_state, register_model, resolve_weights

__all__ = ["LiteFusionNet", "lite"]


class LiteFusionNet(FusionModel):
    """See the module docstring. Args: ``width`` — channels of the full-resolution path (context has twice)."""

    name = "lite"
    min_size = 4

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        if width < 1:
            raise InputError(f"lite width must be >= 1, got {width}")
        self.width = int(width)
        w, w2 = self.width, 2 * self.width
        self.stem = nn.Conv2d(2, w, 3, 1, 1)
        self.down = nn.Conv2d(w, w2, 3, 2, 1)
        self.ctx1 = nn.Conv2d(w2, w2, 3, 1, 1)
        self.ctx2 = nn.Conv2d(w2, w2, 3, 1, 1)
        self.head = nn.Conv2d(w, 2, 3, 1, 1)
        self.head_ctx = nn.Conv2d(w2, 2, 1)

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.stem(torch.cat([ir, y], 1)))
        c = F.relu(self.down(s))
        c = F.relu(self.ctx2(F.relu(self.ctx1(c))))
        c = F.interpolate(self.head_ctx(c), size=s.shape[-2:], mode="bilinear", align_corners=False)
        a, b = (self.head(s) + c).chunk(2, 1)
        w = torch.sigmoid(a)
        return (w * ir + (1 - w) * y + 0.25 * torch.tanh(b)).clamp(0, 1)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> LiteFusionNet:
        """Load any ivfuse container (:func:`~ivfuse.models.base.load_state`: a safetensors export, an engine
        checkpoint, ``{"state_dict", "config"}`` or a bare state dict); the width is read off the weights if absent."""
        sd, cfg, _, _ = load_state(path, "lite", module="net")
        cfg = cfg or {}
        if not isinstance(sd, dict) or "stem.weight" not in sd and not cfg.get("width"):
            raise InputError(f"{path}: not lite weights (no stem.weight)")
        width = int(cfg.get("width") or sd["stem.weight"].shape[0])
        return load_checked(cls(width=width), {k: v.float() for k, v in sd.items()}, path, "lite")


@register_model("lite", default_weights="lite_default.safetensors")
def lite(weights: str | os.PathLike | None = "default", width: int = 8) -> LiteFusionNet:
    """Real-time fusion CNN; default: the shipped trained model; ``weights=FILE``: another; ``weights=None``: an
    untrained net of ``width`` (:func:`~ivfuse.models.base.resolve_weights`)."""
    path = resolve_weights("lite", weights)
    return LiteFusionNet(width=width).eval() if path is None else LiteFusionNet.from_checkpoint(path)

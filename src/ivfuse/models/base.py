"""Base class and registry for fusion methods (learned and classical).

Every method is an ``nn.Module`` called as ``model(ir, vis)`` with float tensors in [0, 1]:
``ir`` ``B×1×H×W``, ``vis`` ``B×1×H×W`` (gray) or ``B×3×H×W`` (RGB); it returns the fused image with the
visible input's channels and the input's size. Colour is handled here once for all methods: RGB visible
images are converted to YCbCr (BT.601, kornia), the method fuses Y with IR (:meth:`FusionModel.fuse_luma`)
and Cb/Cr are restored. A method that needs the colour image itself overrides :meth:`forward`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from kornia.color import rgb_to_ycbcr, ycbcr_to_rgb
from torch import nn

from ..errors import InputError
from ..registry import Registry

__all__ = ["FusionModel", "MODELS", "register_model", "create_model", "list_models", "check_pair"]

MODELS: Registry[Callable[..., FusionModel]] = Registry("method")


def check_pair(ir: torch.Tensor, vis: torch.Tensor, min_size: int = 1, name: str = "method") -> None:
    """Validate a (ir, vis) batch: 4-D, 1-channel IR, 1/3-channel visible, same size, finite, >= min_size."""
    if ir.ndim != 4 or vis.ndim != 4:
        raise InputError(f"expected B×C×H×W tensors, got ir {tuple(ir.shape)} and vis {tuple(vis.shape)}")
    if ir.shape[1] != 1:
        raise InputError(f"infrared input must have 1 channel, got {ir.shape[1]}")
    if vis.shape[1] not in (1, 3):
        raise InputError(f"visible input must have 1 or 3 channels, got {vis.shape[1]}")
    if ir.shape[0] != vis.shape[0] or ir.shape[-2:] != vis.shape[-2:]:
        raise InputError(
            f"infrared {ir.shape[-1]}x{ir.shape[-2]} and visible {vis.shape[-1]}x{vis.shape[-2]} differ in size or batch"
        )
    if min(ir.shape[-2:]) < min_size:
        raise InputError(
            f"image {ir.shape[-1]}x{ir.shape[-2]} is smaller than the {min_size}x{min_size} minimum of '{name}'"
        )


class FusionModel(nn.Module):
    """Base of all fusion methods. Subclasses implement :meth:`fuse_luma` (or override :meth:`forward`).

    Attributes:
        name: registry name.
        min_size: smallest image side the method accepts.
    """

    name: str = "fusion"
    min_size: int = 1

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Fuse ``B×1×H×W`` infrared with ``B×1×H×W`` visible luminance -> ``B×1×H×W`` in [0, 1]."""
        raise NotImplementedError

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        check_pair(ir, vis, self.min_size, self.name)
        if vis.shape[1] == 1:
            return self.fuse_luma(ir, vis).clamp(0, 1)
        ycc = rgb_to_ycbcr(vis)
        y = self.fuse_luma(ir, ycc[:, :1]).clamp(0, 1)
        return ycbcr_to_rgb(torch.cat([y, ycc[:, 1:]], 1)).clamp(0, 1)


def register_model(name: str) -> Callable:
    """Register a :class:`FusionModel` subclass or factory under ``name``."""

    def deco(obj):
        if isinstance(obj, type):
            obj.name = name
        MODELS.add(name, obj)
        return obj

    return deco


def create_model(name: str, **kwargs: Any) -> FusionModel:
    """Instantiate the fusion method ``name`` (``ivfuse list methods``) with keyword options."""
    factory = MODELS.get(name)
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise InputError(f"method '{name}': {e}") from None
    return model.eval()


def list_models() -> list[str]:
    return MODELS.names()

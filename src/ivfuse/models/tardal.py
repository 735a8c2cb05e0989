"""TarDAL — target-aware dual adversarial learning fusion, generator from its official weights.

Paper: J. Liu, X. Fan, Z. Huang, G. Wu, R. Liu, W. Zhong, Z. Luo, "Target-aware Dual Adversarial
Learning and a Multi-scenario Multi-Modality Benchmark to Fuse Infrared and Visible for Object
Detection", CVPR 2022.
Official code: https://github.com/JinyuanLiu-CV/TarDAL (read in the VIF-Benchmark collection copy
``ycc568/my-seafusion`` @ cff58e5: ``TarDAL/modules/generator.py``, ``TarDAL.py``, ``pipeline/eval.py``,
``utils/image_pair.py``).
Weights: ``peers/TarDAL_tardal.pt``, ``TarDAL_tardal+.pt``, ``TarDAL_tardal++.pt`` (the three released
generators; :data:`ivfuse.weights.WEIGHTS` ``"tardal"``, ``"tardal+"``, ``"tardal++"``). The default is
``tardal++``, the one the VIF-Benchmark script and ``../shared/peers_reference/TarDAL`` use.

What ivfuse reproduces (its own code; parameter names follow the official state dict):

* Generator (dim 32, depth 3): ``[IR, Y]`` → 3×3 conv+BN+ReLU (32 ch) → three densely connected
  3×3 conv+BN+ReLU layers (each sees all previous features) → 128-ch concat → 3×3 convs
  128→128 (ReLU), →64 (BN, ReLU), →32 (BN, ReLU), →1 (tanh), then ``clip(0, 1)`` as ``pipeline/eval.py``.
  Same-size convs everywhere: no padding to multiples needed.
* Inputs: infrared gray /255; visible luminance ``.299R + .587G + .114B`` (OpenCV ``BGR2GRAY``).
* Colour (``ImagePair.save_fus``): the fused Y is recombined with the visible image's Cr/Cb from
  OpenCV's ``BGR2YCrCb`` / ``YCrCb2BGR`` — ``Cr = .713(R−Y)+½``, ``Cb = .564(B−Y)+½`` and back with
  1.403/−0.714/−0.344/1.773 (:func:`ivfuse.models.layers.ycrcb_official_to_rgb`).
* BatchNorm statistics (option ``bn``), as the authors' README runs each released file (v0 ``fuse.py``, commit
  ``632b019``): ``tardal.pt`` **without** ``--eval`` — the generator stays in train mode, so every BatchNorm
  normalises with the statistics of the image being fused (batch of one) — and ``tardal+.pt`` / ``tardal++.pt``
  with ``--eval`` (the checkpoint's running statistics). ``bn=None`` (default) follows that per variant;
  ``bn="image"`` / ``bn="running"`` force one or the other (``variant=tardal, bn=running`` is what the
  VIF-Benchmark script, which always passes ``eval=True``, does with ``tardal.pt``). Per-image statistics are
  computed for each image of a batch separately and never change the stored running statistics.

Deviations: the official pipeline works on 8-bit images (OpenCV rounds the visible gray and the chroma,
truncates the fused Y to uint8 before colouring, and rounds the result); ivfuse computes the same
formulas in float and quantises only when an image is written. The official script runs the generator
in float16 on CUDA (``half=True``); ivfuse runs in the input's dtype (the parity reference is fp32 on CPU).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import FusionModel, check_pair, register_model
from .layers import load_peer_state, load_strict, rgb_to_ycrcb_official, ycrcb_official_to_rgb

__all__ = ["TarDAL", "TARDAL_VARIANTS", "TARDAL_BN", "AUTHORS_BN"]

TARDAL_VARIANTS = ("tardal", "tardal+", "tardal++")
TARDAL_BN = ("image", "running")
#: how the authors' README runs each released generator: ``fuse.py`` without / with ``--eval``
AUTHORS_BN = {"tardal": "image", "tardal+": "running", "tardal++": "running"}


class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm2d (same state-dict keys) that can normalise each image with its own statistics: what a
    BatchNorm left in train mode computes on a batch of one image, without touching the running buffers."""

    per_image: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.per_image:
            return super().forward(x)
        return F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def _cbr(cin: int, cout: int, bn: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 1, 1)]
    if bn:
        layers.append(_BatchNorm(cout))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class TarDAL(FusionModel):
    """TarDAL generator (see module docstring). Build it with ``create_model("tardal", variant=...)``."""

    name = "tardal"
    min_size = 1

    def __init__(self, dim: int = 32, depth: int = 3, variant: str = "tardal++", bn: str | None = None) -> None:
        super().__init__()
        self.variant = variant
        self.bn = AUTHORS_BN.get(variant, "running") if bn is None else bn
        self.encoder = _cbr(2, dim)
        self.dense = nn.ModuleList([_cbr(dim * (i + 1), dim) for i in range(depth)])
        self.fuse = nn.Sequential(
            _cbr(dim * (depth + 1), dim * 4, bn=False),
            _cbr(dim * 4, dim * 2),
            _cbr(dim * 2, dim),
            nn.Sequential(nn.Conv2d(dim, 1, 3, 1, 1), nn.Tanh()),
        )
        per_image = self.bn == "image"
        for m in self.modules():
            if isinstance(m, _BatchNorm):
                m.per_image = per_image
        self.min_size = 2 if per_image else 1  # per-image statistics need more than one pixel

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Generator output clipped to [0, 1] (fused luminance)."""
        x = self.encoder(torch.cat([ir, y], 1))
        for layer in self.dense:
            x = torch.cat([x, layer(x)], 1)
        return self.fuse(x).clamp(0, 1)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        check_pair(ir, vis, self.min_size, self.name)
        if vis.shape[1] == 1:
            return self.fuse_luma(ir, vis)
        y, cr, cb = rgb_to_ycrcb_official(vis)
        return ycrcb_official_to_rgb(self.fuse_luma(ir, y), cr, cb)


@register_model("tardal")
def tardal(variant: str = "tardal++", weights: str | os.PathLike | None = None, bn: str | None = None) -> TarDAL:
    """TarDAL (Liu et al. 2022, detection-driven) from official weights; variant tardal, tardal+, tardal++ (default)."""
    from ..errors import InputError

    v = str(variant).strip().lower()
    if v not in TARDAL_VARIANTS:
        raise InputError(f"tardal: unknown variant '{variant}' (choose from {', '.join(TARDAL_VARIANTS)})")
    b = None if bn is None else str(bn).strip().lower()
    if b is not None and b not in TARDAL_BN:
        raise InputError(
            f"tardal: unknown bn '{bn}' (choose from {', '.join(TARDAL_BN)}; default: the authors' choice per variant)"
        )
    path, sd = load_peer_state(v, "tardal", weights)
    model = TarDAL(variant=v, bn=b)
    load_strict(model, sd, path, "TarDAL generator")
    return model.eval()

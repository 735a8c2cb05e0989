"""SAGE — SAM-guided infrared–visible fusion (the distilled sub-network), from its official weights.

Paper: G. Wu, H. Liu, H. Fu, Y. Peng, J. Liu, X. Fan, R. Liu, "Every SAM Drop Counts: Embracing Semantic
Priors for Multi-Modality Image Fusion and Beyond", CVPR 2025, pp. 17882–17891 (arXiv:2503.01210).
Official code (MIT licence, © 2025 Guanyao Wu): https://github.com/RollingPlain/SAGE_IVIF (read at
``377fdbe``: ``model_sub/model.py``, ``test.py``, ``dataset/dataset_test.py``, ``utils.py``, ``train.py``).
Weights: ``peers/SAGE_checkpoints.pt`` = the repository's ``checkpoints/checkpoints.pt`` (byte-identical,
commit ``5960bb0``; :data:`ivfuse.weights.WEIGHTS` ``"sage"``, registered by this module).

What the paper trains and what is released: a large main ("teacher") network with the Semantic Persistent
Attention module fed by SAM masks and a segmentation loss (X-Decoder), whose knowledge is distilled into a
small sub-network by the bi-level distillation with triplet losses (feature, gradient/MSE, contrastive
semantic terms), so that inference needs no SAM (paper: abstract, method section, workflow figure (c)–(d)).
Only the sub-network is released and run at test time; it is what ivfuse implements.

What ivfuse reproduces (its own code; module and parameter names follow the official state dict, which loads
strictly with ``torch.load(weights_only=True)``; 121 tensors, 135,617 parameters):

* Sub-network (``model_sub/model.py``), width 32, every conv 3×3 (padding 1) + BatchNorm (eval) + LeakyReLU 0.01:
  ``[Y_vis, IR]`` (visible first) → ``module1`` (3 convs, 2→32) → max-pool 2 → ``module2`` (3 convs) →
  max-pool 2 → ``module3`` (3 convs) → bilinear up-sampling (``align_corners=False``) to ``module2``'s size,
  concatenated with it → ``adjust_channels4`` (1×1 conv 64→32, BN, LeakyReLU) → ``module4`` → bilinear
  up-sampling to ``module1``'s size, concatenated with it → ``adjust_channels5`` → ``module5`` →
  ``final_decoder`` (3×3 conv 32→1, ``tanh``). The pools floor odd sizes and the up-sampling goes back to the
  exact sizes, so any H×W ≥ 4×4 works without padding (smaller images: one-line error).
* The network output is ``tanh`` in [−1, 1] and the official ``test.py`` uses it **directly** as the fused Y
  (no ``/2 + ½``); negative values are black after the final clamp.

Two colour conventions (option ``preset``):

* ``"ivfuse"`` (default): ivfuse's shared colour path (:class:`~ivfuse.models.base.FusionModel`): float BT.601
  YCbCr of the visible image (kornia, exact inverse), the fused Y is the network output clamped to [0, 1], Cb/Cr
  of the visible image restored. It is the default because it is the convention every ivfuse method follows
  (so ``ivfuse bench`` compares the networks, not colour pipelines), it works on float input without 8-bit
  steps, and it keeps neutral colours neutral: the official pipeline centres OpenCV's 8-bit chroma on
  128/255 but subtracts 0.5, which tints every pixel by about +0.7 / −0.5 / +0.9 grey levels (R/G/B).
* ``"official"``: the official ``test.py`` exactly (used by the parity test): both inputs quantised to 8 bit
  as ``cv2.imread`` sees them, IR ``BGR2GRAY`` and visible ``BGR2YCrCb`` in OpenCV's 14-bit fixed-point
  arithmetic, ``ToTensor`` (/255), ``model(Y, IR)``, the raw ``tanh`` output recombined with the visible
  Cr/Cb by the official matrix (R = Y + 1.403 (Cr − ½), G = Y − 0.714 (Cr − ½) − 0.344 (Cb − ½),
  B = Y + 1.773 (Cb − ½)) and only then clamped to [0, 1] (``torchvision.utils.save_image``; ivfuse's writer
  rounds as ``save_image``'s ``×255 + 0.5`` does, up to exact ties).

Deviations: (1) a gray visible image is fused directly and returned gray (the official loader would read it
as three equal channels: same Y, but the 128/255 chroma centre would tint the output). (2) The official
``test.py`` refuses to run without CUDA; ivfuse runs on any device, in the input's dtype. Parity with the
official outputs: ``tests/test_sage.py``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import FusionModel, check_pair, register_model
from .layers import load_peer_state, load_strict
from .official import PRESETS, check_preset

__all__ = ["SAGE", "SAGE_PRESETS", "opencv_ycrcb_u8"]

SAGE_PRESETS = PRESETS


# OpenCV's fixed-point RGB -> Y/Cr/Cb coefficients for 8-bit images (colour.simd: yuv_shift = 14)
_SHIFT = 14
_R2Y, _G2Y, _B2Y, _CR, _CB = 4899, 9617, 1868, 11682, 9241


def _descale(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``CV_DESCALE(x, 14)``: ``(x + 2**13) >> 14`` on exact integers held in float64."""
    return torch.floor((x + (1 << (_SHIFT - 1))) / (1 << _SHIFT))


def _to_u8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> the 0..255 integers an 8-bit file holds (float64)."""
    return torch.round(x.double().clamp(0, 1) * 255)


def opencv_ycrcb_u8(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``B×3×H×W`` RGB in [0, 1] -> OpenCV ``COLOR_BGR2YCrCb`` of its 8-bit version: ``(Y, Cr, Cb)``, each
    ``B×1×H×W`` float64 holding 0..255 integers (Y rounded; Cr/Cb computed from the rounded Y, centred on 128)."""
    r, g, b = _to_u8(rgb).split(1, 1)
    y = _descale(r * _R2Y + g * _G2Y + b * _B2Y)
    cr = _descale((r - y) * _CR + (128 << _SHIFT)).clamp(0, 255)
    cb = _descale((b - y) * _CB + (128 << _SHIFT)).clamp(0, 255)
    return y, cr, cb


def _official_to_rgb(y: torch.Tensor, cr: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """The official ``utils.YCrCb2RGB`` (chroma minus ½, rounded matrix), clamped as ``save_image`` does."""
    dr, db = cr - 0.5, cb - 0.5
    return torch.cat([y + 1.403 * dr, y - 0.714 * dr - 0.344 * db, y + 1.773 * db], 1).clamp(0, 1)


def _stage(cin: int, dim: int, convs: int = 3, k: int = 3) -> nn.Sequential:
    """``convs`` × (conv k×k, BatchNorm, LeakyReLU 0.01); indices 0, 3, 6 / 1, 4, 7 as in the checkpoint."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else dim, dim, k, padding=k // 2), nn.BatchNorm2d(dim), nn.LeakyReLU(0.01)]
    return nn.Sequential(*layers)


class SAGE(FusionModel):
    """SAGE sub-network (see module docstring). Build it with ``create_model("sage", preset=...)``."""

    name = "sage"
    min_size = 4  # two 2×2 max-pools must leave at least one pixel

    def __init__(self, dim: int = 32, preset: str = "ivfuse") -> None:
        super().__init__()
        self.preset = check_preset(preset, "sage")
        self.module1 = _stage(2, dim)
        self.module2 = _stage(dim, dim)
        self.module3 = _stage(dim, dim)
        self.adjust_channels4 = _stage(2 * dim, dim, convs=1, k=1)
        self.module4 = _stage(dim, dim)
        self.adjust_channels5 = _stage(2 * dim, dim, convs=1, k=1)
        self.module5 = _stage(dim, dim)
        self.final_decoder = nn.Sequential(nn.Conv2d(dim, 1, 3, padding=1), nn.Tanh())

    def network(self, y: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """Raw sub-network output (``tanh``, in [−1, 1]) for visible luminance ``y`` and infrared ``ir``."""
        f1 = self.module1(torch.cat([y, ir], 1))
        f2 = self.module2(F.max_pool2d(f1, 2))
        f3 = self.module3(F.max_pool2d(f2, 2))
        up = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        f4 = self.module4(self.adjust_channels4(torch.cat([up, f2], 1)))
        up = F.interpolate(f4, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        f5 = self.module5(self.adjust_channels5(torch.cat([up, f1], 1)))
        return self.final_decoder(f5)

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fused Y in [0, 1]: the network output used directly as Y, clamped."""
        return self.network(y, ir).clamp(0, 1)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        if self.preset == "ivfuse":
            return super().forward(ir, vis)
        check_pair(ir, vis, self.min_size, self.name)
        dt = ir.dtype
        ir8 = (_to_u8(ir) / 255).to(dt)  # BGR2GRAY of a gray image stored as 8 bit: the same value
        if vis.shape[1] == 1:
            return self.network((_to_u8(vis) / 255).to(dt), ir8).clamp(0, 1)
        y, cr, cb = (c.div(255).to(dt) for c in opencv_ycrcb_u8(vis))
        return _official_to_rgb(self.network(y, ir8), cr, cb)


@register_model("sage")
def sage(preset: str = "ivfuse", weights: str | os.PathLike | None = None) -> SAGE:
    """
    SAGE (Wu et al., CVPR 2025; SAM-guided, segmentation-distilled; MIT) from official weights; preset ivfuse|official.
    """
    p = check_preset(preset, "sage")
    path, sd = load_peer_state("sage", "sage", weights)
    model = SAGE(preset=p)
    load_strict(model, sd, path, "SAGE sub-network")
    return model.eval()

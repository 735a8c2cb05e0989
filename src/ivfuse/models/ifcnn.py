"""IFCNN (MAX fusion) — a general CNN image-fusion framework, from its official weights.

Paper: Y. Zhang, Y. Liu, P. Sun, H. Yan, X. Zhao, L. Zhang, "IFCNN: A general image fusion framework
based on convolutional neural network", Information Fusion 54 (2020) 99–118.
Official code: https://github.com/uzeful/IFCNN (read in the VIF-Benchmark collection copy
``ycc568/my-seafusion`` @ cff58e5: ``IFCNN/model_IFCNN.py``, ``IFCNN/IFCNN.py``, ``utils/myTransforms.py``).
Weights: ``peers/IFCNN_IFCNN-MAX.pth`` (:data:`ivfuse.weights.WEIGHTS` ``"ifcnn_max"``), which contains the
frozen ResNet-101 ``conv1`` (7×7, 3→64, no bias) as ``conv1.weight`` — no ImageNet download is needed.

What ivfuse reproduces (its own code; parameter names follow the official state dict):

* Pre-processing (``IFCNN.py``): both inputs are gray images replicated to 3 channels (the official
  script reads the visible image with ``cv2.imread(..., 0)``, i.e. its luminance) and normalised
  per channel with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
* Network: replicate-pad 3 → ResNet-101 conv1 at stride 1 → ConvBlock (replicate-pad 1, 3×3 conv
  without bias, BN, ReLU) per input → element-wise **max** over the two inputs (fuse_scheme 0) →
  ConvBlock → 1×1 conv 64→3. Same-size throughout: no padding to multiples.
* Post-processing: de-normalise with the same mean/std, clamp to [0, 1], and take the gray value of
  the 3-channel result as OpenCV's ``BGR2GRAY`` does on it (channel 0 is treated as blue:
  ``.114·c0 + .587·c1 + .299·c2``).
* Colour (``img2RGB``): the fused gray replaces Y of the visible image in PIL's (JPEG, BT.601 full
  range) YCbCr — i.e. :class:`FusionModel`'s BT.601 colour path, which ivfuse uses here unchanged.

Deviations: the official pipeline is 8-bit (uint8 truncation of the 3-channel output, OpenCV rounding,
PIL's integer YCbCr); ivfuse computes the same in float and quantises only when writing. Agreement
with the official outputs is measured in tests/test_peers.py and docs/peers.md.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import FusionModel, register_model
from .layers import load_peer_state, load_strict

__all__ = ["IFCNN"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _ConvBlock(nn.Module):
    """Replicate-pad 1, 3×3 conv (no bias), BN, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))))


class IFCNN(FusionModel):
    """IFCNN with element-wise MAX fusion (see module docstring). Build it with ``create_model("ifcnn")``."""

    name = "ifcnn"
    min_size = 1

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=1, padding=0, bias=False)  # ResNet-101 conv1, frozen
        self.conv2 = _ConvBlock(64, 64)
        self.conv3 = _ConvBlock(64, 64)
        self.conv4 = nn.Conv2d(64, 3, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.conv1.weight.requires_grad_(False)

    def _features(self, gray: torch.Tensor) -> torch.Tensor:
        x = (gray.expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.conv2(self.conv1(F.pad(x, (3, 3, 3, 3), mode="replicate")))

    def reconstruct(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The network's de-normalised 3-channel output, clamped to [0, 1] (``B×3×H×W``)."""
        fused = torch.maximum(self._features(ir), self._features(y))
        out = self.conv4(self.conv3(fused))
        return (out * self.std + self.mean).clamp(0, 1)

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        o = self.reconstruct(ir, y)
        return 0.114 * o[:, 0:1] + 0.587 * o[:, 1:2] + 0.299 * o[:, 2:3]


@register_model("ifcnn")
def ifcnn(weights: str | os.PathLike | None = None) -> IFCNN:
    """IFCNN (Zhang et al. 2020), element-wise MAX fusion, from its official weights; ``weights``: a local file."""
    path, sd = load_peer_state("ifcnn_max", "ifcnn", weights)
    model = IFCNN()
    load_strict(model, sd, path, "IFCNN-MAX")
    return model.eval()

"""SeAFusion — semantic-aware real-time infrared and visible image fusion, from its official weights.

Paper: L. Tang, J. Yuan, J. Ma, "Image fusion in the loop of high-level vision tasks: A semantic-aware
real-time infrared and visible image fusion network", Information Fusion 82 (2022) 28–42.
Official code: https://github.com/Linfeng-Tang/SeAFusion (read in the VIF-Benchmark collection copy
``ycc568/my-seafusion`` @ cff58e5, ``SeAFusion/FusionNet.py``, ``SeAFusion.py``, ``utils.py``, ``datasets.py``).
Weights: ``peers/SeAFusion_SeAFusion.pth`` (:data:`ivfuse.weights.WEIGHTS` ``"seafusion"``).

What ivfuse reproduces (its own code; module and parameter names follow the official state dict so it
loads strictly):

* Network: two encoders (visible Y, infrared), each a 3×3 conv (16 ch, LeakyReLU 0.2) and two
  gradient residual dense blocks (RGBD, 16→32→48 ch: a 2-layer dense block + 1×1 conv, plus a depthwise
  |Sobel x| + |Sobel y| branch + 1×1 conv, summed, LeakyReLU 0.1); the concatenated 96 channels are
  decoded by 3×3 convs 96→64→32→16 (LeakyReLU 0.2) and 16→1 with ``tanh(x)/2 + ½``. Every conv keeps the
  size (no padding to multiples needed). The Sobel kernels are stored in the checkpoint and used from it.
* Colour (official ``RGB2YCrCb``/``YCbCr2RGB``): ``Y = .299R+.587G+.114B``, ``Cr = .713(R−Y)+½``,
  ``Cb = .564(B−Y)+½`` (each clamped to [0, 1]); the fused Y is recombined with the visible Cr/Cb through
  1.403/−0.714/−0.344/1.773 and clamped — not kornia's BT.601 pair of :class:`FusionModel`.
* Post-processing of the official ``save_img_single``: each fused image is min–max stretched to [0, 1]
  over all its channels (``is_norm=True``) before it is written (the official code then truncates
  ``x·255`` to uint8; ivfuse returns the float image and its writers round).

Deviations: (1) the checkpoint holds BatchNorm parameters for ``decode1``–``decode4`` that the official
forward never applies; ivfuse keeps them (strict loading) and, like the official code, does not use
them. (2) A gray visible image is fused directly (the official loader would replicate it to RGB, which
gives the same Y and neutral chroma, i.e. the same result). Parity with the official outputs: docs/peers.md.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import FusionModel, check_pair, register_model
from .layers import load_peer_state, load_strict, minmax_per_image, rgb_to_ycrcb_official, ycrcb_official_to_rgb

__all__ = ["SeAFusion"]


class _ConvLReLU(nn.Module):
    """3×3 conv + LeakyReLU(0.2); ``with_bn`` adds the (unused, as in the official code) BatchNorm."""

    def __init__(self, cin: int, cout: int, k: int = 3, with_bn: bool = False, tanh: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2)
        if with_bn:
            self.bn = nn.BatchNorm2d(cout)
        self.tanh = tanh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return torch.tanh(x) / 2 + 0.5 if self.tanh else F.leaky_relu(x, 0.2)


class _Conv1x1(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Dense(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = _ConvLReLU(ch, ch)
        self.conv2 = _ConvLReLU(2 * ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, self.conv1(x)], 1)
        return torch.cat([x, self.conv2(x)], 1)


class _SobelAbs(nn.Module):
    """Depthwise ``|∂x| + |∂y|`` with the kernels stored in the checkpoint (``convx``/``convy``)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        sx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.convx = nn.Conv2d(ch, ch, 3, padding=1, groups=ch, bias=False)
        self.convy = nn.Conv2d(ch, ch, 3, padding=1, groups=ch, bias=False)
        with torch.no_grad():
            self.convx.weight.copy_(sx.expand(ch, 1, 3, 3))
            self.convy.weight.copy_(sx.T.expand(ch, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convx(x).abs() + self.convy(x).abs()


class _RGBD(nn.Module):
    """Gradient residual dense block."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.dense = _Dense(cin)
        self.convdown = _Conv1x1(3 * cin, cout)
        self.sobelconv = _SobelAbs(cin)
        self.convup = _Conv1x1(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.convdown(self.dense(x)) + self.convup(self.sobelconv(x)), 0.1)


class SeAFusion(FusionModel):
    """SeAFusion fusion network (see module docstring). Build it with ``create_model("seafusion")``."""

    name = "seafusion"
    min_size = 1

    def __init__(self) -> None:
        super().__init__()
        self.vis_conv = _ConvLReLU(1, 16)
        self.vis_rgbd1 = _RGBD(16, 32)
        self.vis_rgbd2 = _RGBD(32, 48)
        self.inf_conv = _ConvLReLU(1, 16)
        self.inf_rgbd1 = _RGBD(16, 32)
        self.inf_rgbd2 = _RGBD(32, 48)
        self.decode4 = _ConvLReLU(96, 64, with_bn=True)
        self.decode3 = _ConvLReLU(64, 32, with_bn=True)
        self.decode2 = _ConvLReLU(32, 16, with_bn=True)
        self.decode1 = _ConvLReLU(16, 1, with_bn=True, tanh=True)

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Network output (fused Y in [0, 1]) for visible luminance ``y`` and infrared ``ir``."""
        v = self.vis_rgbd2(self.vis_rgbd1(self.vis_conv(y)))
        i = self.inf_rgbd2(self.inf_rgbd1(self.inf_conv(ir)))
        return self.decode1(self.decode2(self.decode3(self.decode4(torch.cat([v, i], 1)))))

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        check_pair(ir, vis, self.min_size, self.name)
        if vis.shape[1] == 1:
            return minmax_per_image(self.fuse_luma(ir, vis.clamp(0, 1)))
        y, cr, cb = rgb_to_ycrcb_official(vis)
        return minmax_per_image(ycrcb_official_to_rgb(self.fuse_luma(ir, y), cr, cb))


@register_model("seafusion")
def seafusion(weights: str | os.PathLike | None = None) -> SeAFusion:
    """SeAFusion (Tang et al. 2022, segmentation-driven) from its official weights; ``weights``: a local file."""
    path, sd = load_peer_state("seafusion", "seafusion", weights)
    model = SeAFusion()
    load_strict(model, sd, path, "SeAFusion")
    return model.eval()

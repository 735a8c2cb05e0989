"""STDFusionNet — salient-target-detection-guided fusion network, from its official (TensorFlow) weights.

Paper: J. Ma, L. Tang, M. Xu, H. Zhang, G. Xiao, "STDFusionNet: An Infrared and Visible Image Fusion Network Based
on Salient Target Detection", IEEE Transactions on Instrumentation and Measurement 70 (2021) 5009513 (§III-B network:
two feature-extraction networks of residual blocks, concatenation, a residual reconstruction network; the salient
target mask only enters the training loss).
Official code: https://github.com/Linfeng-Tang/STDFusionNet (read in the VIF-Benchmark collection copy
``ycc568/my-seafusion`` @ cff58e5: ``STDFusionNet/STDFusionNet.py``, ``test_network.py``). Licence: MIT
(Linfeng Tang, ``STDFusionNet/LICENSE``).
Weights: ``peers/STDFusionNet.npz`` (checkpoint ``Fusion.model-29`` of the collection, 72 arrays, 282,513
parameters; :data:`ivfuse.models._tf.TF_WEIGHTS` ``"stdfusionnet"``).

What ivfuse reproduces (its own code; the TF layout conversion is :mod:`ivfuse.models._tf`):

* Feature extraction, one network per modality (``{vi,ir}_extraction_network``): ``conv1`` 5×5 1→16 (zero padding 2),
  then three residual blocks 16→16, 16→32, 32→64: 1×1 conv, 3×3 conv (zero padding 1), 1×1 conv, added to the block
  input (block 1) or to a bias-free 1×1 ``identity_conv`` of it (blocks 2–3). LeakyReLU 0.2 after every conv but the
  third and after the sum.
* Reconstruction (``reconstruction_network``): ``[vi_features, ir_features]`` (128 channels, visible first) through
  four such blocks 128→64→32→16→1 (all with ``identity_conv``); the sum is followed by ELU (blocks 1–2), LeakyReLU
  0.2 (block 3), ``tanh`` (block 4).
* Inputs: the PIL-YCbCr float luma, ``x/127.5 − 1``; output ``(x + 1)·127.5``, ``imsave`` min–max stretch, PIL YCbCr
  colour with the visible chroma (:func:`ivfuse.models._tf.official_save`).

Presets (``preset=``, ``--opt preset=...``; see :mod:`ivfuse.models._tf`): ``"ivfuse"`` (default: float luminance
in, ``(tanh + 1)/2`` out without stretch, ivfuse's BT.601 colour path — differentiable, device-agnostic) and
``"official"`` (8-bit Pillow I/O, the SciPy min–max stretch and Pillow's YCbCr colour: what the official script
writes, used for parity). Any size.
Parity with the official outputs: docs/peers.md.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ._tf import TFConv, TFPeer, assign_tf, load_tf_npz, lrelu, tf_weights_path
from .base import register_model

__all__ = ["STDFusionNet"]


class _Block(nn.Module):
    """1×1 → 3×3 → 1×1 residual block; ``identity`` adds a bias-free 1×1 projection of the input."""

    def __init__(self, cin: int, cmid: int, cout: int, identity: bool, act: str) -> None:
        super().__init__()
        self.conv1 = TFConv(cin, cmid, 1)
        self.conv2 = TFConv(cmid, cmid, 3)
        self.conv3 = TFConv(cmid, cout, 1)
        self.identity_conv = TFConv(cin, cout, 1, bias=False) if identity else None
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(lrelu(self.conv2(lrelu(self.conv1(x)))))
        y = y + (self.identity_conv(x) if self.identity_conv is not None else x)
        if self.act == "elu":
            return F.elu(y)
        return torch.tanh(y) if self.act == "tanh" else lrelu(y)

    def targets(self, prefix: str) -> dict[str, torch.Tensor]:
        t = {}
        for n in ("conv1", "conv2", "conv3"):
            c = getattr(self, n)
            t[f"{prefix}/{n}/w"], t[f"{prefix}/{n}/b"] = c.weight, c.bias
        if self.identity_conv is not None:
            t[f"{prefix}/identity_conv/w"] = self.identity_conv.weight
        return t


class _Extraction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = TFConv(1, 16, 5)
        self.blocks = nn.ModuleList(
            [_Block(16, 16, 16, False, "lrelu"), _Block(16, 16, 32, True, "lrelu"), _Block(32, 32, 64, True, "lrelu")]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = lrelu(self.conv1(x))
        for b in self.blocks:
            x = b(x)
        return x

    def targets(self, prefix: str) -> dict[str, torch.Tensor]:
        t = {f"{prefix}/conv1/w": self.conv1.weight, f"{prefix}/conv1/b": self.conv1.bias}
        for i, b in enumerate(self.blocks, 1):
            t.update(b.targets(f"{prefix}/block{i}"))
        return t


class STDFusionNet(TFPeer):
    """STDFusionNet (see module docstring). Build it with ``create_model("stdfusionnet")``."""

    name = "stdfusionnet"
    channels_last = False  # 4 % slower channels-last (2026-12-07, one thread, 640×480)
    min_size = 1
    input_mode = "luma"

    def __init__(self, preset: str = "ivfuse") -> None:
        super().__init__(preset)
        self.vi_extraction = _Extraction()
        self.ir_extraction = _Extraction()
        self.reconstruction = nn.ModuleList(
            [
                _Block(128, 128, 64, True, "elu"),
                _Block(64, 64, 32, True, "elu"),
                _Block(32, 32, 16, True, "lrelu"),
                _Block(16, 16, 1, True, "tanh"),
            ]
        )

    def network(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.vi_extraction(vis), self.ir_extraction(ir)], 1)
        for b in self.reconstruction:
            x = b(x)
        return x

    def scale_in(self, x255: torch.Tensor) -> torch.Tensor:
        return x255 / 127.5 - 1

    def unit_out(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw + 1) / 2

    def tf_targets(self) -> dict[str, torch.Tensor]:
        p = "STDFusion_model"
        t = self.vi_extraction.targets(f"{p}/vi_extraction_network")
        t.update(self.ir_extraction.targets(f"{p}/ir_extraction_network"))
        for i, b in enumerate(self.reconstruction, 1):
            t.update(b.targets(f"{p}/reconstruction_network/block{i}"))
        return t


@register_model("stdfusionnet")
def stdfusionnet(preset: str = "ivfuse", weights: str | os.PathLike | None = None) -> STDFusionNet:
    """STDFusionNet (Ma et al., IEEE TIM 2021; salient-target-driven, not task-driven; licence MIT)
    from official TF weights."""
    path = tf_weights_path("stdfusionnet", "stdfusionnet", weights)
    model = STDFusionNet(preset)
    assign_tf(model.tf_targets(), load_tf_npz(path, "stdfusionnet"), path, "STDFusionNet")
    return model.eval()

"""DenseFuse — dense-block auto-encoder fusion with the addition rule, from its official (TensorFlow) weights.

Paper: H. Li, X.-J. Wu, "DenseFuse: A Fusion Approach to Infrared and Visible Images", IEEE Transactions on Image
Processing 28(5) (2019) 2614–2623 (§III-A network, §III-B addition fusion strategy).
Official code: https://github.com/hli1221/imagefusion_densefuse (read in the VIF-Benchmark collection copy
``ycc568/my-seafusion`` @ cff58e5: ``DenseFuse/DenseFuse.py``, ``generate.py`` (``_handler``), ``densefuse_net.py``,
``encoder.py``, ``decoder.py``, ``fusion_addition.py``, ``utils.py``). Licence: none stated in the official repository
(the authors' terms apply to the weights).
Weights: ``peers/DenseFuse.npz`` (checkpoint ``DeseFuse.ckpt`` of the collection, 16 arrays, 74,193 parameters;
:data:`ivfuse.models._tf.TF_WEIGHTS` ``"densefuse"``).

What ivfuse reproduces (its own code; the TF layout conversion is :mod:`ivfuse.models._tf`):

* Encoder (§III-A): ``conv1_1`` 3×3 1→16, then a dense block of three 3×3 convs 16→16, 32→16, 48→16, each output
  concatenated *in front of* its input (``[new, old]``), 64 channels; decoder ``conv2_1..4`` 64→64→32→16→1. Every
  conv is reflect-padded by 1 and followed by ReLU except the last.
* Inputs: PIL ``'L'`` gray on **0..255, not normalised** (``utils.get_train_images``); the visible image's luma.
* Fusion (§III-B, ``fusion_addition.Strategy``): the encoder features of IR and visible are added; decoded.
* Output (official script): ``imsave`` min–max stretch, then PIL YCbCr colour with the visible chroma
  (:func:`ivfuse.models._tf.official_save`).

Observed behaviour: the released auto-encoder reconstructs its input, so decoding the *sum* of two images' features
gives almost exactly the sum of the images — on MSRS 00004N/00633D the decoder output is ``0.9995·(ir + vis) + 0.03``
(correlation 0.99998) on 0..510; the official look is that sum min–max stretched.

Presets (``preset=``, ``--opt preset=...``; see :mod:`ivfuse.models._tf`): ``"ivfuse"`` (default: float luminance
×255 in, decoder output /(2·255) — the sum of two 0..255 images back to [0, 1] — clamped, no stretch, ivfuse's
BT.601 colour path; differentiable, device-agnostic) and ``"official"`` (8-bit Pillow I/O, the SciPy min–max stretch
and Pillow's YCbCr colour: what the official script writes, used for parity).
Minimum size 2×2 (reflection padding). Parity with the official outputs: docs/peers.md.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ._tf import TFConv, TFPeer, assign_tf, load_tf_npz, tf_weights_path
from .base import register_model

__all__ = ["DenseFuse"]


class DenseFuse(TFPeer):
    """DenseFuse (see module docstring). Build it with ``create_model("densefuse")``."""

    name = "densefuse"
    min_size = 2
    input_mode = "L"

    def __init__(self, preset: str = "ivfuse") -> None:
        super().__init__(preset)
        self.conv1_1 = TFConv(1, 16, 3, "reflect")
        self.dense = nn.ModuleList([TFConv(16 * (i + 1), 16, 3, "reflect") for i in range(3)])
        self.decoder = nn.ModuleList([TFConv(a, b, 3, "reflect") for a, b in ((64, 64), (64, 32), (32, 16), (16, 1))])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1_1(x))
        for conv in self.dense:
            x = torch.cat([torch.relu(conv(x)), x], 1)
        return x

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.decoder):
            f = conv(f)
            if i < len(self.decoder) - 1:
                f = torch.relu(f)
        return f

    def network(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(ir) + self.encode(vis))

    def scale_in(self, x255: torch.Tensor) -> torch.Tensor:
        return x255

    def unit_out(self, raw: torch.Tensor) -> torch.Tensor:
        return raw / 510  # the decoded sum of two 0..255 images

    def tf_targets(self) -> dict[str, torch.Tensor]:
        t: dict[str, torch.Tensor] = {}
        convs = [("encoder/conv1_1", self.conv1_1)] + [
            (f"encoder/dense_block_conv{i + 1}", c) for i, c in enumerate(self.dense)
        ]
        convs += [(f"decoder/conv2_{i + 1}", c) for i, c in enumerate(self.decoder)]
        for k, c in convs:
            t[k + "/kernel"], t[k + "/bias"] = c.weight, c.bias
        return t


@register_model("densefuse")
def densefuse(preset: str = "ivfuse", weights: str | os.PathLike | None = None) -> DenseFuse:
    """DenseFuse (Li & Wu, IEEE TIP 2019; not task-driven; licence: none stated) from its official TF weights."""
    path = tf_weights_path("densefuse", "densefuse", weights)
    model = DenseFuse(preset)
    assign_tf(model.tf_targets(), load_tf_npz(path, "densefuse"), path, "DenseFuse")
    return model.eval()

"""U2Fusion — unified unsupervised fusion network, from its official (TensorFlow) weights.

Paper: H. Xu, J. Ma, J. Jiang, X. Guo, H. Ling, "U2Fusion: A Unified Unsupervised Image Fusion Network", IEEE
Transactions on Pattern Analysis and Machine Intelligence 44(1) (2022) 502–518 (§3.4 network architecture: DenseNet
generator, 3×3 convs, LeakyReLU, tanh output).
Official code: https://github.com/hanna-xu/U2Fusion (read in the VIF-Benchmark collection copy ``ycc568/my-seafusion``
@ cff58e5: ``U2Fusion/U2Fusion.py``, ``model.py``, ``Net.py``). Licence: none stated in the official repository (the
authors' terms apply to the weights).
Weights: ``peers/U2Fusion.npz`` (checkpoint ``model.ckpt`` of the collection = the authors' ``model/model.ckpt``,
20 arrays, 659,217 parameters; :data:`ivfuse.models._tf.TF_WEIGHTS` ``"u2fusion"``).

What ivfuse reproduces (its own code; the TF layout conversion is :mod:`ivfuse.models._tf`):

* Generator (``Net.py``): input ``[ir, vis]`` (2 channels, in this order: ``SOURCE1`` = IR); ``conv1_1`` 2→44, then five
  dense convs (44·k → 44, k = 1..5) whose output is concatenated in front of its input (``[new, old]``), 264
  channels; decoder 264→128→64→32→1. Every conv: reflect padding 1, 3×3, LeakyReLU 0.2 (``max(x, 0.2x)``) except the
  last, which gives ``tanh(x)/2 + ½``. (The TF variable scopes are ``Generator/encoder`` and ``Generator_1/decoder``.)
* Inputs: PIL ``'L'`` gray /255.
* Output: ``imsave`` min–max stretch, then PIL YCbCr colour with the visible chroma
  (:func:`ivfuse.models._tf.official_save`).

Presets (``preset=``, ``--opt preset=...``; see :mod:`ivfuse.models._tf`): ``"ivfuse"`` (default: float luminance
in, ``tanh/2+½`` out without stretch, ivfuse's BT.601 colour path — differentiable, device-agnostic) and
``"official"`` (8-bit Pillow I/O, the SciPy min–max stretch and Pillow's YCbCr colour: what the official script
writes, used for parity). Minimum size 2×2
(reflection padding). Parity with the official outputs: docs/peers.md.
"""

from __future__ import annotations

import itertools
import os

import torch
from torch import nn

from ._tf import TFConv, TFPeer, assign_tf, load_tf_npz, lrelu, tf_weights_path
from .base import register_model

__all__ = ["U2Fusion"]

N = 44


class U2Fusion(TFPeer):
    """U2Fusion generator (see module docstring). Build it with ``create_model("u2fusion")``."""

    name = "u2fusion"
    min_size = 2
    input_mode = "L"

    def __init__(self, preset: str = "ivfuse") -> None:
        super().__init__(preset)
        self.conv1_1 = TFConv(2, N, 3, "reflect")
        self.dense = nn.ModuleList([TFConv(N * (i + 1), N, 3, "reflect") for i in range(5)])
        chans = (6 * N, 128, 64, 32, 1)
        self.decoder = nn.ModuleList([TFConv(a, b, 3, "reflect") for a, b in itertools.pairwise(chans)])

    def network(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        x = lrelu(self.conv1_1(torch.cat([ir, vis], 1)))
        for conv in self.dense:
            x = torch.cat([lrelu(conv(x)), x], 1)
        for conv in self.decoder[:-1]:
            x = lrelu(conv(x))
        return torch.tanh(self.decoder[-1](x)) / 2 + 0.5

    def scale_in(self, x255: torch.Tensor) -> torch.Tensor:
        return x255 / 255

    def unit_out(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def tf_targets(self) -> dict[str, torch.Tensor]:
        convs = [("Generator/encoder/conv1_1", self.conv1_1)]
        convs += [(f"Generator/encoder/dense_block_conv{i + 1}", c) for i, c in enumerate(self.dense)]
        convs += [(f"Generator_1/decoder/conv2_{i + 1}", c) for i, c in enumerate(self.decoder)]
        t: dict[str, torch.Tensor] = {}
        for k, c in convs:
            t[k + "/kernel"], t[k + "/bias"] = c.weight, c.bias
        return t


@register_model("u2fusion")
def u2fusion(preset: str = "ivfuse", weights: str | os.PathLike | None = None) -> U2Fusion:
    """U2Fusion (Xu et al., IEEE TPAMI 2022; not task-driven; licence: none stated) from its official TF weights."""
    path = tf_weights_path("u2fusion", "u2fusion", weights)
    model = U2Fusion(preset)
    assign_tf(model.tf_targets(), load_tf_npz(path, "u2fusion"), path, "U2Fusion")
    return model.eval()

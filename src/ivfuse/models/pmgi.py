"""PMGI — proportional maintenance of gradient and intensity, from its official (TensorFlow) weights.

Paper: H. Zhang, H. Xu, Y. Xiao, X. Guo, J. Ma, "Rethinking the Image Fusion: A Fast Unified Image Fusion Network
based on Proportional Maintenance of Gradient and Intensity", AAAI 2020, 34(07) 12797–12804 (§3.2 network: a
gradient path and an intensity path with pathwise transfer blocks exchanging information, concatenated and fused
by a 1×1 conv).
Official code: https://github.com/HaoZhang1018/PMGI_AAAI2020 (read in the VIF-Benchmark collection copy
``ycc568/my-seafusion`` @ cff58e5: ``PMGI/PMGI.py``). Licence: none stated in the collection's copy (the authors'
terms apply to the weights).
Weights: ``peers/PMGI.npz`` (checkpoint ``PMGI`` of the collection, 74 arrays; the 26 conv arrays used hold 41,633
parameters, the 48 unused BatchNorm arrays 768 values; :data:`ivfuse.models._tf.TF_WEIGHTS` ``"pmgi"``).

What ivfuse reproduces (its own code; the TF layout conversion is :mod:`ivfuse.models._tf`):

* Inputs (``main``): the IR path gets ``[ir, ir, vis]``, the visible path ``[vis, vis, ir]`` (PIL-YCbCr float luma,
  ``(x − 127.5)/127.5``). Per path: ``layer1`` 5×5 3→16, ``layer2`` 3×3 16→16; transfer ``layer2_3{,_vi}`` 1×1 on
  ``[c2_ir, c2_vi]``; ``layer3`` 3×3 on ``[c1, c2, c2_3]`` (48); transfer ``layer3_4{,_vi}`` 1×1 on ``[c3_ir, c3_vi]``;
  ``layer4`` 3×3 on ``[c1, c2, c3, c3_4]`` (64); ``layer5`` 1×1 on ``[c1_ir, c1_vi, …, c4_ir, c4_vi]`` (128 → 1),
  ``tanh``. TF ``SAME`` zero padding; every conv but the last: batch norm, then LeakyReLU 0.2.
* **Batch norm as the official test graph runs it**: the script reads only ``w*/b*`` from the checkpoint and builds
  ``tf.contrib.layers.batch_norm`` (``is_training`` default ``True``, fresh ``gamma = 1``, ``beta = 0``, eps 1e-5) on a
  batch of one image, so every BN standardises each channel of the image with its own mean and biased variance
  (:func:`ivfuse.models._tf.tf_instance_standardise`); the stored ``BatchNorm/*`` arrays (moving statistics, learned
  gamma/beta) are not used by the official output and are not loaded (strict check: they are the only arrays left).
  Each image of an ivfuse batch is standardised on its own, so a batch gives the same result as its images alone.
* Output ``x·127.5 + 127.5``, ``imsave`` min–max stretch, PIL YCbCr colour with the visible chroma
  (:func:`ivfuse.models._tf.official_save`).

Presets (``preset=``, ``--opt preset=...``; see :mod:`ivfuse.models._tf`): ``"ivfuse"`` (default: float luminance
in, ``(tanh + 1)/2`` out without stretch, ivfuse's BT.601 colour path — differentiable, device-agnostic) and
``"official"`` (8-bit Pillow I/O, the SciPy min–max stretch and Pillow's YCbCr colour: what the official script
writes, used for parity). Any size (a
1-pixel image standardises to 0). Parity with the official outputs: docs/peers.md.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ._tf import TFConv, TFPeer, assign_tf, load_tf_npz, lrelu, tf_instance_standardise, tf_weights_path
from .base import register_model

__all__ = ["PMGI"]


class _Path(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1 = TFConv(3, 16, 5)
        self.layer2 = TFConv(16, 16, 3)
        self.layer2_3 = TFConv(32, 16, 1)
        self.layer3 = TFConv(48, 16, 3)
        self.layer3_4 = TFConv(32, 16, 1)
        self.layer4 = TFConv(64, 16, 3)


def _cbl(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return lrelu(tf_instance_standardise(conv(x), 1e-5))


class PMGI(TFPeer):
    """PMGI (see module docstring). Build it with ``create_model("pmgi")``."""

    name = "pmgi"
    min_size = 1
    input_mode = "luma"

    def __init__(self, preset: str = "ivfuse") -> None:
        super().__init__(preset)
        self.ir = _Path()
        self.vi = _Path()
        self.layer5 = TFConv(128, 1, 1)

    def network(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        a, b = self.ir, self.vi
        c1i, c1v = _cbl(a.layer1, torch.cat([ir, ir, vis], 1)), _cbl(b.layer1, torch.cat([vis, vis, ir], 1))
        c2i, c2v = _cbl(a.layer2, c1i), _cbl(b.layer2, c1v)
        mid = torch.cat([c2i, c2v], 1)
        t2i, t2v = _cbl(a.layer2_3, mid), _cbl(b.layer2_3, mid)
        c3i, c3v = _cbl(a.layer3, torch.cat([c1i, c2i, t2i], 1)), _cbl(b.layer3, torch.cat([c1v, c2v, t2v], 1))
        mid = torch.cat([c3i, c3v], 1)
        t3i, t3v = _cbl(a.layer3_4, mid), _cbl(b.layer3_4, mid)
        c4i = _cbl(a.layer4, torch.cat([c1i, c2i, c3i, t3i], 1))
        c4v = _cbl(b.layer4, torch.cat([c1v, c2v, c3v, t3v], 1))
        return torch.tanh(self.layer5(torch.cat([c1i, c1v, c2i, c2v, c3i, c3v, c4i, c4v], 1)))

    def scale_in(self, x255: torch.Tensor) -> torch.Tensor:
        return (x255 - 127.5) / 127.5

    def unit_out(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw + 1) / 2

    def tf_targets(self) -> dict[str, torch.Tensor]:
        t: dict[str, torch.Tensor] = {}
        for suffix, path in (("", self.ir), ("_vi", self.vi)):
            for n in ("1", "2", "2_3", "3", "3_4", "4"):
                c = getattr(path, f"layer{n}")
                scope = f"fusion_model/layer{n}{suffix}"
                t[f"{scope}/w{n}{suffix}"], t[f"{scope}/b{n}{suffix}"] = c.weight, c.bias
        t["fusion_model/layer5/w5"], t["fusion_model/layer5/b5"] = self.layer5.weight, self.layer5.bias
        return t


@register_model("pmgi")
def pmgi(preset: str = "ivfuse", weights: str | os.PathLike | None = None) -> PMGI:
    """PMGI (Zhang et al., AAAI 2020; not task-driven; licence: none stated) from its official TF weights."""
    path = tf_weights_path("pmgi", "pmgi", weights)
    model = PMGI(preset)
    arrays = load_tf_npz(path, "pmgi")
    unused = tuple(k for k in arrays if "/BatchNorm/" in k)  # stored BN arrays: unused by the official test graph
    assign_tf(model.tf_targets(), arrays, path, "PMGI", unused=unused)
    return model.eval()

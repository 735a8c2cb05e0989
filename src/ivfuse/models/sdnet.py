"""SDNet — squeeze-and-decomposition fusion network, from its official (TensorFlow) weights.

Paper: H. Zhang, J. Ma, "SDNet: A Versatile Squeeze-and-Decomposition Network for Real-Time Image Fusion",
International Journal of Computer Vision 129 (2021) 2761–2785 (§3.2 network: a two-branch dense squeeze network whose
fused output is decomposed back into the sources by a second network used only for training).
Official code: https://github.com/HaoZhang1018/SDNet (read in the VIF-Benchmark collection copy ``ycc568/my-seafusion``
@ cff58e5: ``SDNet/SDNet.py``). Licence: none stated in the collection's copy (the authors' terms apply to the
weights).
Weights: ``peers/SDNet.npz`` (checkpoint ``SDNet.model`` of the collection, 32 arrays, 67,091 parameters, of which the
squeeze network used at test time has 28,705; :data:`ivfuse.models._tf.TF_WEIGHTS` ``"sdnet"``).

What ivfuse reproduces (its own code; the TF layout conversion is :mod:`ivfuse.models._tf`):

* Squeeze network (``fusion_model``): per modality ``layer1`` 5×5 1→16, ``layer2`` 3×3 16→16, ``layer3`` 3×3 on
  ``[c1, c2]``, ``layer4`` 3×3 on ``[c1, c2, c3]`` (16 channels each; TF ``SAME`` zero padding, LeakyReLU 0.2);
  ``layer5_fuse`` 1×1 on ``[c1_ir, c1_vi, c2_ir, c2_vi, c3_ir, c3_vi, c4_ir, c4_vi]`` (128 → 1), ``tanh``.
* Decomposition branch ``layer6_sept``–``layer9_*``: computed by the official graph but not part of the fused image;
  loaded (strictly) and not evaluated.
* Inputs: the PIL-YCbCr float luma, ``(x − 127.5)/127.5``; output ``x·127.5 + 127.5``, ``imsave`` min–max stretch,
  PIL YCbCr colour with the visible chroma (:func:`ivfuse.models._tf.official_save`).

Presets (``preset=``, ``--opt preset=...``; see :mod:`ivfuse.models._tf`): ``"ivfuse"`` (default: float luminance
in, ``(tanh + 1)/2`` out without stretch, ivfuse's BT.601 colour path — differentiable, device-agnostic) and
``"official"`` (8-bit Pillow I/O, the SciPy min–max stretch and Pillow's YCbCr colour: what the official script
writes, used for parity). Any size.
Parity with the official outputs: docs/peers.md.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ._tf import TFConv, TFPeer, assign_tf, load_tf_npz, lrelu, tf_weights_path
from .base import register_model

__all__ = ["SDNet"]


def _branch() -> nn.ModuleList:
    return nn.ModuleList([TFConv(1, 16, 5), TFConv(16, 16, 3), TFConv(32, 16, 3), TFConv(48, 16, 3)])


class SDNet(TFPeer):
    """SDNet squeeze network (see module docstring). Build it with ``create_model("sdnet")``."""

    name = "sdnet"
    min_size = 1
    input_mode = "luma"

    def __init__(self, preset: str = "ivfuse") -> None:
        super().__init__(preset)
        self.ir = _branch()
        self.vi = _branch()
        self.fuse = TFConv(128, 1, 1)
        # decomposition network (training only): layer6_sept, layer7..9 per modality
        self.sept = TFConv(1, 128, 1)
        self.decomp = nn.ModuleDict(
            {m: nn.ModuleList([TFConv(128, 16, 3), TFConv(16, 4, 3), TFConv(4, 1, 3)]) for m in ("ir", "vi")}
        )

    @staticmethod
    def _features(branch: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
        c = [lrelu(branch[0](x))]
        c.append(lrelu(branch[1](c[0])))
        c.append(lrelu(branch[2](torch.cat(c, 1))))
        c.append(lrelu(branch[3](torch.cat(c, 1))))
        return c

    def network(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        fi, fv = self._features(self.ir, ir), self._features(self.vi, vis)
        return torch.tanh(self.fuse(torch.cat([t for pair in zip(fi, fv) for t in pair], 1)))

    def scale_in(self, x255: torch.Tensor) -> torch.Tensor:
        return (x255 - 127.5) / 127.5

    def unit_out(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw + 1) / 2

    def tf_targets(self) -> dict[str, torch.Tensor]:
        t: dict[str, torch.Tensor] = {}

        def add(scope: str, suffix: str, conv: nn.Conv2d) -> None:
            t[f"fusion_model/{scope}/w{suffix}"], t[f"fusion_model/{scope}/b{suffix}"] = conv.weight, conv.bias

        for m, branch in (("ir", self.ir), ("vi", self.vi)):
            for i, conv in enumerate(branch, 1):
                add(f"layer{i}_{m}", f"{i}_{m}", conv)
            for i, conv in enumerate(self.decomp[m], 7):
                add(f"layer{i}_{m}", f"{i}_{m}", conv)
        add("layer5_fuse", "5_fuse", self.fuse)
        add("layer6_sept", "6_sept", self.sept)
        return t


@register_model("sdnet")
def sdnet(preset: str = "ivfuse", weights: str | os.PathLike | None = None) -> SDNet:
    """SDNet (Zhang & Ma, IJCV 2021; not task-driven; licence: none stated) from its official TF weights."""
    path = tf_weights_path("sdnet", "sdnet", weights)
    model = SDNet(preset)
    assign_tf(model.tf_targets(), load_tf_npz(path, "sdnet"), path, "SDNet")
    return model.eval()

"""A learnable fusion loss: per-pixel source weights from a small network (TDFusion's idea, ivfuse's own code).

Provenance: H. Bai, J. Zhang, Z. Zhao, Y. Wu, L. Deng, Y. Cui, T. Feng, S. Xu, *Task-driven Image Fusion with
Learnable Fusion Loss* (TDFusion), CVPR 2025, arXiv:2412.03240, Sec. 3: a *loss generation module* ``G`` looks at the
source images and outputs per-pixel weights ``w_a``, ``w_b`` (a softmax over the two sources) of the fusion loss's
intensity term; the fusion loss also keeps a gradient-preservation term. ``G`` is trained by meta-learning from the
downstream task loss (see :meth:`ivfuse.engine.lite.LiteRecipe.meta_step`): a virtual update of the fusion network
with the current learned loss, then the task loss of the updated network's fused images, back-propagated into ``G``.

ivfuse's reading (named deviations, docs/task_driven.md "C4"): the loss acts on luminance (``B×1×H×W``, as every
ivfuse fusion loss), the gradient term is the fixed ``| |∇F| − max(|∇IR|, |∇Y|) |`` of :func:`ivfuse.losses.
gradient_loss`, and :class:`LossGenerator` is a small context network of ivfuse's choosing (the paper's module
architecture is not reproduced). Its last layer starts at zero, so an untrained generator gives ``w_ir = w_vis = ½``:
the loss pulls the fused image to the mean of the two sources.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import gradient_loss

__all__ = ["LossGenerator", "learned_fusion_loss"]


class LossGenerator(nn.Module):
    """``(ir, y) -> B×2×H×W`` per-pixel weights (softmax over the channel: infrared, visible) of the learned loss.

    A 3×3 stem at full resolution, then a stride-2 conv and two dilated 3×3 convs (dilation 2 and 4) at half
    resolution — a receptive field of ≈ 60 px, enough to see a person of MSRS (20–80 px tall) as a whole — upsampled
    bilinearly and mapped to 2 logits by a 1×1 conv that starts at zero (uniform weights).

    Args:
        width: channels of the stem (the half-resolution convs have twice as many).
    """

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w, w2 = int(width), 2 * int(width)
        self.stem = nn.Conv2d(2, w, 3, 1, 1)
        self.down = nn.Conv2d(w, w2, 3, 2, 1)
        self.ctx1 = nn.Conv2d(w2, w2, 3, 1, 2, dilation=2)
        self.ctx2 = nn.Conv2d(w2, w2, 3, 1, 4, dilation=4)
        self.out = nn.Conv2d(w + w2, 2, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.stem(torch.cat([ir, y], 1)))
        c = F.relu(self.ctx2(F.relu(self.ctx1(F.relu(self.down(s))))))
        c = F.interpolate(c, size=s.shape[-2:], mode="bilinear", align_corners=False)
        return torch.softmax(self.out(torch.cat([s, c], 1)), 1)


def learned_fusion_loss(
    fused: torch.Tensor, ir: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, gradient: float = 2.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """``mean(w_ir·|F − IR| + w_vis·|F − Y|) + gradient·| |∇F| − max(|∇IR|, |∇Y|) |`` (all ``B×1×H×W``;
    ``weights``: ``B×2×H×W`` from :class:`LossGenerator`). Returns ``(total, {"intensity": …, "gradient": …,
    "w_ir": mean infrared weight})``."""
    inten = (weights[:, :1] * (fused - ir).abs() + weights[:, 1:] * (fused - y).abs()).mean()
    grad = gradient_loss(fused, ir, y) if gradient else fused.new_zeros(())
    total = inten + gradient * grad
    return total, {
        "intensity": float(inten.detach()),
        "gradient": float(grad.detach()),
        "w_ir": float(weights[:, :1].detach().mean()),
    }

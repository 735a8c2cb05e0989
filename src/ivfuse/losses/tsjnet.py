"""TSJNet losses (Jie et al., arXiv 2402.01212, Eqs. 7–13): ``L = L_MFF + λ_det·L_Det + λ_seg·L_Seg``.

Function + ``nn.Module`` pairs; images are float tensors in [0, 1], ``B×C×H×W``; ``A`` are the decoder's
spatial-attention maps (``B×K×H×W``, ``K`` = 8 heads) from :meth:`ivfuse.models.tsjnet.TSJNet.outputs`.

* :func:`diversity_loss` — ``L_div = mean_{pixels}(1 - max_k A_k + mean_k A_k) = mean(1 - (max_k A_k - mean_k A_k))``.
  Its minimum (``1/K``) is reached when at every pixel exactly one head is on (heads attend to different places);
  identical heads (``A_1 = … = A_K``) give the maximum, 1, whatever their value. Sign: the loss term is *added*
  to ``L_MFF`` and minimised, so it must fall as the heads diversify — the purpose Eq. 9 states. The official
  ``diverse_loss = (1 - max(att, 1)).mean() + att.mean()`` is the same expression; the issue reports that the
  printed Eq. 9 has the opposite sign (minimising it literally would reward identical heads, defeating its
  purpose) — see ``docs/tsjnet.md``. As in the official code it is applied to the fused path's maps by default.
* :func:`reconstruction_loss` — ``α2·||I - Î||² + α3·||V - V̂||²`` (mean squared errors). The paper's order puts
  ``α2 = 6`` on the **infrared** reconstruction and ``α3 = 1`` on the visible one; the official script puts the 6
  on the visible term (``coeff_mse_loss_VF = 6``). ivfuse follows the paper (``recon_weights=(6, 1)`` = (IR, VIS));
  ``(1, 6)`` reproduces the code.
* :func:`mff_loss` — ``L_MFF = α1·L_div + L_ssim + α2·||I - Î||² + α3·||V - V̂||²`` with ``α = (0.1, 6, 1)`` and
  ``L_ssim = ½(1 - SSIM(F, I)) + ½(1 - SSIM(F, V))`` (:func:`ivfuse.losses.fusion.ssim_loss`, kornia's
  ``(1 - SSIM)/2`` per source). Optional official extras: intensity ``||F - max(I, V)||_1`` and Sobel gradient
  ``|| |∇F| - max(|∇I|, |∇V|) ||_1`` (:mod:`ivfuse.losses.fusion`), weights 20 / 20 in the code (and 10 on its
  gradient-weighted SSIM); :data:`CODE_EXTRA_WEIGHTS`. The gradient term is rescaled ×8 to the official
  *unnormalised* Sobel (``|G_x| + |G_y|``; kornia normalises the kernel by 1/8) so the code's weight means the same.
* :func:`detection_loss` — the detector's loss on the **fused** image (3 channels: fused Y with the visible
  image's Cb/Cr converted back to RGB; a gray visible input gives a gray fused image that the detector
  replicates), so the gradient reaches the fusion network. Faster R-CNN: ``regression_loss`` (RPN box + RPN
  objectness + ROI box regression, no classification — paper §3.4); YOLOv5: its full training loss. The
  official script instead adds Faster R-CNN losses of the raw IR and visible images (constants for the fusion
  net) and uses a randomly initialised 91-class box head.
* :func:`fused_segmentation_loss` — pixel cross-entropy (:func:`ivfuse.tasks.segmenters.segmentation_loss`,
  ignore index 255) of a segmenter (ESPNetv2 / DeepLabV3+) on the fused image against class-id masks.

Detector and segmenter are guides: :class:`DetectionLoss` / :class:`SegmentationLoss` freeze their parameters
(``requires_grad=False``); gradients still flow through them into the fused image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .fusion import gradient_loss, intensity_loss, ssim_loss

if TYPE_CHECKING:  # pragma: no cover
    from ..data.labels import Boxes
    from ..models.tsjnet import TSJNetOutput

__all__ = [
    "ALPHA",
    "CODE_EXTRA_WEIGHTS",
    "diversity_loss",
    "DiversityLoss",
    "reconstruction_loss",
    "ReconstructionLoss",
    "mff_loss",
    "MFFLoss",
    "detection_loss",
    "DetectionLoss",
    "fused_segmentation_loss",
    "SegmentationLoss",
    "TSJNetLoss",
]

ALPHA = (0.1, 6.0, 1.0)
"""Paper weights ``(α1, α2, α3)``: diversity, IR reconstruction, visible reconstruction."""

CODE_EXTRA_WEIGHTS = {"intensity": 20.0, "gradient": 20.0, "ssim": 10.0}
"""Weights of the official ``fusion_loss_vif`` terms (intensity, Sobel gradient, SSIM)."""

_SOBEL_SCALE = 8.0  # kornia's normalised Sobel kernel is the official one divided by 8


# ------------------------------------------------------------------------------------------------- L_div
def diversity_loss(attn: torch.Tensor) -> torch.Tensor:
    """``L_div`` of decoder attention maps ``A`` (``B×K×H×W`` in [0, 1]) -> scalar in ``[1/K, 1]``.

    ``mean over pixels of 1 - (max_k A_k - mean_k A_k)``: 1 for identical heads, ``1/K`` when exactly one head is
    on at every pixel.
    """
    if attn.ndim != 4 or attn.shape[1] < 2:
        raise InputError(f"diversity loss needs B×K×H×W attention maps with K >= 2 heads, got {tuple(attn.shape)}")
    return (1 - attn.amax(1) + attn.mean(1)).mean()


class DiversityLoss(nn.Module):
    """Module form of :func:`diversity_loss`: ``loss(attn)``, ``attn`` ``B×K×H×W``."""

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        return diversity_loss(attn)


# ------------------------------------------------------------------------------------------ reconstruction
def reconstruction_loss(
    ir: torch.Tensor,
    ir_hat: torch.Tensor,
    vis: torch.Tensor,
    vis_hat: torch.Tensor,
    weights: tuple[float, float] = (ALPHA[1], ALPHA[2]),
) -> torch.Tensor:
    """``α2·MSE(I, Î) + α3·MSE(V, V̂)``; all ``B×1×H×W``; ``weights = (α2 on IR, α3 on visible)``."""
    return weights[0] * F.mse_loss(ir_hat, ir) + weights[1] * F.mse_loss(vis_hat, vis)


class ReconstructionLoss(nn.Module):
    """Module form of :func:`reconstruction_loss`: ``loss(ir, ir_hat, vis, vis_hat)``."""

    def __init__(self, weights: tuple[float, float] = (ALPHA[1], ALPHA[2])) -> None:
        super().__init__()
        self.weights = (float(weights[0]), float(weights[1]))

    def forward(self, ir, ir_hat, vis, vis_hat) -> torch.Tensor:
        return reconstruction_loss(ir, ir_hat, vis, vis_hat, self.weights)


# ------------------------------------------------------------------------------------------------- L_MFF
def mff_loss(
    out: TSJNetOutput,
    alpha: Sequence[float] = ALPHA,
    ssim: float = 1.0,
    intensity: float = 0.0,
    gradient: float = 0.0,
    div_on: str = "fused",
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_MFF = α1·L_div + ssim·L_ssim + α2·||I - Î||² + α3·||V - V̂||² (+ intensity·L_int + gradient·L_grad)``.

    Args:
        out: :class:`~ivfuse.models.tsjnet.TSJNetOutput` (``fused_y``, ``ir``, ``vis_y``: ``B×1×H×W``;
            ``ir_hat``/``vis_hat`` needed when ``α2``/``α3`` are non-zero; ``attn``: ``B×K×H×W``).
        alpha: ``(α1, α2, α3)`` (paper: 0.1, 6, 1; α2 weighs the IR reconstruction).
        ssim: weight of ``L_ssim`` (paper 1; the official script uses 10 on a gradient-weighted SSIM).
        intensity, gradient: weights of the optional official terms (:data:`CODE_EXTRA_WEIGHTS`: 20, 20).
        div_on: attention maps ``L_div`` is computed on: ``"fused"`` (official), or ``"all"`` (mean over the
            fused, IR and visible decoder passes).

    Returns:
        ``(total, {term: float})``.
    """
    a1, a2, a3 = (float(a) for a in alpha)
    f, i, v = out.fused_y, out.ir, out.vis_y
    parts: dict[str, torch.Tensor] = {}
    if a1:
        if div_on == "fused":
            parts["div"] = a1 * diversity_loss(out.attn)
        elif div_on == "all":
            maps = [m for m in (out.attn, out.attn_ir, out.attn_vis) if m is not None]
            parts["div"] = a1 * sum(diversity_loss(m) for m in maps) / len(maps)
        else:
            raise InputError(f"div_on must be 'fused' or 'all', got '{div_on}'")
    if ssim:
        parts["ssim"] = float(ssim) * ssim_loss(f, i, v)
    if a2 or a3:
        if out.ir_hat is None or out.vis_hat is None:
            raise InputError("L_MFF needs the reconstructions Î, V̂: call TSJNet.outputs(..., reconstruct=True)")
        parts["rec_ir"] = a2 * F.mse_loss(out.ir_hat, i)
        parts["rec_vis"] = a3 * F.mse_loss(out.vis_hat, v)
    if intensity:
        parts["intensity"] = float(intensity) * intensity_loss(f, i, v)
    if gradient:
        parts["gradient"] = float(gradient) * _SOBEL_SCALE * gradient_loss(f, i, v)
    if not parts:
        raise InputError("L_MFF: every term has weight 0")
    total = sum(parts.values())
    return total, {k: float(t.detach()) for k, t in parts.items()}


class MFFLoss(nn.Module):
    """Module form of :func:`mff_loss` (same keyword options): ``loss(out) -> (total, parts)``."""

    def __init__(
        self,
        alpha: Sequence[float] = ALPHA,
        ssim: float = 1.0,
        intensity: float = 0.0,
        gradient: float = 0.0,
        div_on: str = "fused",
    ) -> None:
        super().__init__()
        if len(alpha) != 3:
            raise InputError(f"L_MFF alpha must be (α1, α2, α3), got {tuple(alpha)}")
        if div_on not in ("fused", "all"):
            raise InputError(f"div_on must be 'fused' or 'all', got '{div_on}'")
        self.alpha, self.ssim, self.intensity, self.gradient, self.div_on = (
            tuple(alpha),
            ssim,
            intensity,
            gradient,
            div_on,
        )

    def forward(self, out: TSJNetOutput) -> tuple[torch.Tensor, dict[str, float]]:
        return mff_loss(out, self.alpha, self.ssim, self.intensity, self.gradient, self.div_on)


# ------------------------------------------------------------------------------------------------- L_Det
def _as_detector_input(fused: torch.Tensor) -> torch.Tensor:
    if fused.ndim != 4 or fused.shape[1] not in (1, 3):
        raise InputError(f"detection loss expects a B×1×H×W or B×3×H×W fused image, got {tuple(fused.shape)}")
    return fused.expand(-1, 3, -1, -1) if fused.shape[1] == 1 else fused


def detection_loss(
    fused: torch.Tensor, boxes: Sequence[Boxes], detector: nn.Module, terms: str = "auto"
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_Det`` of a detector on the fused image.

    Args:
        fused: ``B×3×H×W`` (or ``B×1×H×W``, replicated) fused image in [0, 1], part of the autograd graph.
        boxes: one :class:`~ivfuse.data.labels.Boxes` per image (pixel ``xyxy`` and class ids of the detector).
        detector: an :mod:`ivfuse.tasks.detectors` detector (``regression_loss`` and/or ``loss``).
        terms: ``"regression"`` (Faster R-CNN without classification, TSJNet), ``"all"`` (the detector's full
            training loss; YOLOv5), ``"auto"`` (regression when available, else all).

    Returns:
        ``(total, {part: float})``; ``total`` is differentiable w.r.t. ``fused``.
    """
    if len(boxes) != fused.shape[0]:
        raise InputError(f"detection loss: {len(boxes)} box lists for a batch of {fused.shape[0]} images")
    x = _as_detector_input(fused)
    if terms not in ("auto", "regression", "all"):
        raise InputError(f"detection loss terms must be 'auto', 'regression' or 'all', got '{terms}'")
    if terms == "regression" or (terms == "auto" and hasattr(detector, "regression_loss")):
        if not hasattr(detector, "regression_loss"):
            raise InputError(f"{type(detector).__name__} has no regression-only loss; use terms='all'")
        return detector.regression_loss(x, boxes)
    return detector.loss(x, boxes)


def _freeze(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        p.requires_grad_(False)
    return m


class DetectionLoss(nn.Module):
    """``loss(fused, boxes) -> (total, parts)`` through a frozen detector (see :func:`detection_loss`)."""

    def __init__(self, detector: nn.Module, terms: str = "auto", freeze: bool = True) -> None:
        super().__init__()
        self.detector = _freeze(detector) if freeze else detector
        self.terms = terms

    def forward(self, fused: torch.Tensor, boxes: Sequence[Boxes]) -> tuple[torch.Tensor, dict[str, float]]:
        return detection_loss(fused, boxes, self.detector, self.terms)


# ------------------------------------------------------------------------------------------------- L_Seg
def fused_segmentation_loss(
    fused: torch.Tensor, masks: torch.Tensor, segmenter: nn.Module, ignore_index: int = 255
) -> torch.Tensor:
    """``L_Seg``: cross-entropy of ``segmenter(fused)`` (logits ``B×K×H×W``) against ``masks`` (``B×H×W`` class
    ids, ``ignore_index`` ignored). ``fused``: ``B×{1,3}×H×W`` in [0, 1]."""
    from ..tasks.segmenters import segmentation_loss

    if masks.ndim != 3 or masks.shape[0] != fused.shape[0]:
        raise InputError(
            f"segmentation loss expects B×H×W masks for a batch of {fused.shape[0]}, got {tuple(masks.shape)}"
        )
    return segmentation_loss(segmenter(fused), masks, ignore_index)


class SegmentationLoss(nn.Module):
    """``loss(fused, masks) -> scalar`` through a frozen segmenter (see :func:`fused_segmentation_loss`).

    The segmenter is kept in eval mode while computing the loss (batch-norm statistics of a pretrained guide are
    neither used from the small fusion batch nor updated)."""

    def __init__(self, segmenter: nn.Module, ignore_index: int = 255, freeze: bool = True) -> None:
        super().__init__()
        self.segmenter = _freeze(segmenter) if freeze else segmenter
        self.ignore_index = ignore_index

    def forward(self, fused: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        was = self.segmenter.training
        self.segmenter.eval()
        try:
            return fused_segmentation_loss(fused, masks, self.segmenter, self.ignore_index)
        finally:
            self.segmenter.train(was)


# ------------------------------------------------------------------------------------------------- total
class TSJNetLoss(nn.Module):
    """``L = L_MFF + λ_det·L_Det + λ_seg·L_Seg`` (paper: λ = 1, 1; set one to 0 for the ablations).

    ``loss(out, boxes=None, masks=None) -> (total, parts)``; ``out`` from ``TSJNet.outputs``; the task terms use
    ``out.fused`` (RGB when the visible input is RGB) and are skipped when their guide or labels are missing.
    """

    def __init__(
        self,
        mff: MFFLoss | None = None,
        detection: DetectionLoss | None = None,
        segmentation: SegmentationLoss | None = None,
        det_weight: float = 1.0,
        seg_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.mff = mff or MFFLoss()
        self.detection, self.segmentation = detection, segmentation
        self.det_weight, self.seg_weight = float(det_weight), float(seg_weight)

    def forward(
        self, out: TSJNetOutput, boxes: Sequence[Boxes] | None = None, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total, parts = self.mff(out)
        parts = {f"mff/{k}": v for k, v in parts.items()}
        if self.detection is not None and self.det_weight and boxes is not None:
            det, dparts = self.detection(out.fused, boxes)
            total = total + self.det_weight * det
            parts.update({f"det/{k}": v for k, v in dparts.items()})
            parts["det"] = float(det.detach())
        if self.segmentation is not None and self.seg_weight and masks is not None:
            seg = self.segmentation(out.fused, masks)
            total = total + self.seg_weight * seg
            parts["seg"] = float(seg.detach())
        parts["total"] = float(total.detach())
        return total, parts

"""OCCO's losses (Li et al., arXiv 2503.18635 §3.3): pixel losses and the object-aware contextual contrastive loss.

``L = L_pixel + ω6 · L_CCL`` with the paper's ω1..ω6 = 0.5, 0.5, 0.5, 10, 1, 10.

**Pixel loss** (:func:`occo_pixel_loss`), on luminance ``B×1×H×W`` in [0, 1]:
``L_pixel = L_ssim + ω4 · L_int + ω5 · L_texture`` with

* ``L_ssim = 2 − SSIM(f, vis) − SSIM(f, ir)`` (11×11 Gaussian window; :func:`ivfuse.losses.fusion.ssim_loss` is
  kornia's ``(1 − SSIM)/2`` per source, so ``L_ssim = 2 · ssim_loss``);
* ``L_int = mean((f − vis)²) + mean(M · |f − ir|)``, ``M = [ir > vis]``;
* ``L_texture = mean(| |∇f| − max(|∇vis|, |∇ir|) |)``, ``|∇| = |S_x| + |S_y|`` with unnormalised 3×3 Sobel kernels
  (the official code's kernels; kornia's ``spatial_gradient(normalized=False)``).

**Contextual contrastive loss** (:func:`contextual_contrastive_loss`, :class:`ContextualContrastiveLoss`). The
object masks of each modality ``m_vis``, ``m_ir`` (``B×1×H×W`` in {0, 1}, from ``ivfuse masks``) split each image
into shared ``s = m_vis·m_ir``, unique ``u_vis = m_vis − s``, ``u_ir = m_ir − s`` and background
``bg = 1 − s − u_vis − u_ir`` (:func:`ivfuse.regions.partition`). In each region the fused image (anchor) is
pulled towards the modality that owns the region (positive) relative to the other modality (negatives):

* ``C_R(pos, neg) = mean_b [ D(f·R_b, pos·R_b) / Σ_{k=0..3} D(f·R_b, neg·R_{b+k·g}) ]`` — anchor : positive 1 : 1,
  four negative groups: the other modality of the same sample and of three other samples of the batch (shifts
  ``k·g``, ``g = max(1, B // 4)``; the official code splits a batch into 4 groups and uses group 1 as anchors —
  here every sample is an anchor); samples whose region is empty are left out of the mean;
* ``L_unique = C_{u_vis}(vis, ir) + C_{u_ir}(ir, vis)``, ``L_share = ω1 · C_s(vis, ir) + ω2 · C_s(ir, vis)``,
  ``L_bg = C_bg(vis, ir)``, ``L_CCL = L_unique + L_share + L_bg``;
* ``D`` for objects: ``Σ_l w_l · CS_l`` over VGG ``relu4`` and ``relu5`` (VGG16: relu4_3, relu5_3 — the default,
  weights in the shared folder; VGG19 as in the paper: relu4_4, relu5_4, for users who pass its weights), with the
  contextual similarity ``CS(x, y) = −log(CX(x, y) + ε)`` where
  ``CX = (1/N) Σ_j max_i (CX^cos_ij + ω3 · CX^L2_ij) / (1 + ω3)`` (Mechrez et al. 2018:
  ``d̃_ij = d_ij / (min_k d_ik + ε)``, ``CX_ij = softmax_j((1 − d̃_ij) / h)``, bandwidth ``h = 1``; ``d^cos`` cosine
  distance after centring on ``y``'s mean feature, ``d^L2`` squared Euclidean distance). ``ω3 = 0`` gives the plain
  contextual loss of the paper's ablation. The division by ``1 + ω3`` (not in the paper's formula) keeps ``CX ≤ 1``, so
  ``CS ≥ 0`` and the positive/negative ratio stays meaningful (without it ``CS`` can be negative); at ``ω3 = 1`` it is
  the code's ``0.5 · CX^cos + 0.5 · CX^L2`` blend;
* ``D`` for the background: mean squared error of VGG ``relu1_1`` (conv1) features — a contextual matrix at full
  resolution (``(HW)²`` entries) is not computable; the official code uses this MSE ratio for the background too.

VGG input: the gray image repeated to 3 channels, ImageNet mean/std. The VGG is built once (frozen, eval mode) in
:class:`ContextualContrastiveLoss`, not per iteration as in the official code.

Deviations from the official code (paper followed, documented in ``docs/occo.md``): the code's contextual term is a
"contextual bilateral" loss ``0.5·CX^cos + 0.5·CX^L2`` whose L2 distance matrix is transposed (rows index the
target, so the normalisation runs over the wrong set) and that takes ``max_j`` per anchor feature; here
``CX^cos + ω3·CX^L2`` with both matrices oriented as in Mechrez et al. The code weights relu4_4 by 0.25; the paper
sums the layers — ``layer_weights`` defaults to 1, 1 (settable).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from kornia.filters import spatial_gradient
from torch import nn

from ..errors import InputError
from .fusion import ssim_loss

__all__ = [
    "OMEGAS",
    "ContextualContrastiveLoss",
    "OCCOLoss",
    "OCCOPixelLoss",
    "VGGFeatures",
    "contextual_contrastive_loss",
    "contextual_similarity",
    "intensity_term",
    "occo_pixel_loss",
    "texture_term",
]

#: the paper's loss weights ω1..ω6
OMEGAS = {"w1": 0.5, "w2": 0.5, "w3": 0.5, "w4": 10.0, "w5": 1.0, "w6": 10.0}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

#: torchvision ``features`` indices of the ReLU outputs used (after conv1_1, the last conv of blocks 4 and 5)
VGG_LAYERS = {
    "vgg16": {"relu1": 1, "relu4": 22, "relu5": 29},
    "vgg19": {"relu1": 1, "relu4": 26, "relu5": 35},
}


# ---------------------------------------------------------------------------------------------------------------
# pixel losses
# ---------------------------------------------------------------------------------------------------------------


def intensity_term(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """``L_int = mean((f − vis)²) + mean([ir > vis] · |f − ir|)``; all ``B×1×H×W`` → scalar."""
    m = (ir > vis).to(fused.dtype)
    return (fused - vis).pow(2).mean() + (m * (fused - ir).abs()).mean()


def _sobel_mag(x: torch.Tensor) -> torch.Tensor:
    return spatial_gradient(x, mode="sobel", order=1, normalized=False).abs().sum(2)


def texture_term(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """``L_texture = mean(| |∇f| − max(|∇vis|, |∇ir|) |)`` (unnormalised Sobel); ``B×1×H×W`` → scalar."""
    return (_sobel_mag(fused) - torch.maximum(_sobel_mag(vis), _sobel_mag(ir))).abs().mean()


def occo_pixel_loss(
    fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, w4: float = OMEGAS["w4"], w5: float = OMEGAS["w5"]
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_pixel = L_ssim + ω4·L_int + ω5·L_texture`` on ``B×1×H×W`` luminance; returns ``(total, parts)``."""
    parts = {
        "ssim": 2 * ssim_loss(fused, ir, vis),
        "int": intensity_term(fused, ir, vis),
        "texture": texture_term(fused, ir, vis),
    }
    total = parts["ssim"] + w4 * parts["int"] + w5 * parts["texture"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


class OCCOPixelLoss(nn.Module):
    """Module form of :func:`occo_pixel_loss`: ``loss(fused, ir, vis)`` (``B×1×H×W``) → ``(total, parts)``."""

    def __init__(self, w4: float = OMEGAS["w4"], w5: float = OMEGAS["w5"]) -> None:
        super().__init__()
        self.w4, self.w5 = float(w4), float(w5)

    def forward(self, fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor):
        return occo_pixel_loss(fused, ir, vis, self.w4, self.w5)


# ---------------------------------------------------------------------------------------------------------------
# contextual similarity
# ---------------------------------------------------------------------------------------------------------------


def _cx(dist: torch.Tensor, band_width: float, eps: float) -> torch.Tensor:
    rel = dist / (dist.amin(dim=2, keepdim=True) + eps)
    return torch.softmax((1 - rel) / band_width, dim=2)


def contextual_similarity(
    x: torch.Tensor, y: torch.Tensor, omega3: float = OMEGAS["w3"], band_width: float = 1.0, eps: float = 1e-5
) -> torch.Tensor:
    """Contextual similarity term ``CS(x, y) = −log(CX + ε)`` per sample (see module docstring).

    Args:
        x: anchor features ``B×C×H×W`` (index i).
        y: target features ``B×C×H×W`` (index j).
        omega3: weight of the Euclidean contextual similarity (``0`` = cosine only).

    Returns:
        ``B`` tensor; lower = more similar (0 when every target feature has a perfectly matching anchor feature).
    """
    if x.shape != y.shape:
        raise InputError(f"contextual similarity needs equal feature shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    b, c = x.shape[:2]
    xv, yv = x.reshape(b, c, -1), y.reshape(b, c, -1)  # B×C×N
    mu = yv.mean(2, keepdim=True)
    xn, yn = F.normalize(xv - mu, dim=1), F.normalize(yv - mu, dim=1)
    d_cos = 1 - xn.transpose(1, 2) @ yn  # B×N(i)×N(j)
    cx = _cx(d_cos, band_width, eps)
    if omega3:
        d_l2 = (xv.pow(2).sum(1)[:, :, None] - 2 * xv.transpose(1, 2) @ yv + yv.pow(2).sum(1)[:, None, :]).clamp_min(0)
        cx = (cx + omega3 * _cx(d_l2, band_width, eps)) / (1 + omega3)
    score = cx.amax(dim=1).mean(dim=1)  # max over anchors i, mean over targets j
    return -torch.log(score + eps)


# ---------------------------------------------------------------------------------------------------------------
# VGG feature extractor
# ---------------------------------------------------------------------------------------------------------------


class VGGFeatures(nn.Module):
    """Frozen VGG ``features`` returning ``{"relu1", "relu4", "relu5"}`` maps of a gray ``B×1×H×W`` image in [0, 1].

    Args:
        arch: ``"vgg16"`` (default; ``weights=None`` reads ``vgg16_features`` from the shared weights) or
            ``"vgg19"`` (the paper's; ``weights=FILE`` required: a torchvision ``vgg19`` state dict, whole model
            ``features.N.*`` keys or ``features`` only ``N.*``).
        weights: local weights file.
        features, layers: a custom ``nn.Sequential`` and ``{name: index}`` map instead (tests).
    """

    def __init__(
        self,
        arch: str = "vgg16",
        weights: str | Path | None = None,
        features: nn.Sequential | None = None,
        layers: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        if features is not None:
            if not layers:
                raise InputError("VGGFeatures: a custom feature stack needs its layers {name: index}")
            self.layers = dict(layers)
            self.features = features
        else:
            self.layers = dict(VGG_LAYERS.get(arch) or {})
            if not self.layers:
                raise InputError(f"unknown VGG '{arch}' (vgg16 or vgg19)")
            self.features = self._load(arch, weights)[: max(self.layers.values()) + 1]
        self.features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _load(arch: str, weights) -> nn.Sequential:
        import torchvision

        from ..weights import weights_path

        if arch == "vgg19" and weights is None:
            raise InputError(
                "VGG19 weights are not in the shared folder; pass vgg_weights=FILE (torchvision vgg19 state dict)"
            )
        path = weights_path("vgg16_features", weights)  # a local file wins; vgg19 always has one here
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: cannot read VGG weights ({type(e).__name__})") from None
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        if any(k.startswith("features.") for k in sd):
            sd = {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
        feats = getattr(torchvision.models, arch)(weights=None).features
        try:
            feats.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        except RuntimeError as e:
            raise InputError(f"{path}: not {arch} features weights ({str(e).splitlines()[1][:140]})") from None
        return feats

    def train(self, mode: bool = True):  # always frozen
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, x: torch.Tensor, upto: str = "relu5") -> dict[str, torch.Tensor]:
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        last = self.layers[upto]
        want = {i: n for n, i in self.layers.items() if i <= last}
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in want:
                out[want[i]] = x
            if i >= last:
                break
        return out


# ---------------------------------------------------------------------------------------------------------------
# contrastive loss
# ---------------------------------------------------------------------------------------------------------------


def _shifts(b: int, groups: int = 4) -> list[int]:
    g = max(1, b // groups)
    return [(k * g) % b if b > 1 else 0 for k in range(groups)]


def _ratio(
    anchor: dict, pos: dict, neg: dict, valid: torch.Tensor, dist, shifts: list[int], eps: float = 1e-8
) -> torch.Tensor:
    """mean over valid samples of D(a, p) / Σ_k D(a, roll(n, k))."""
    num = dist(anchor, pos)
    den = sum(dist(anchor, {k: v.roll(-s, 0) for k, v in neg.items()}) for s in shifts)
    r = num / (den + eps)
    if not bool(valid.any()):
        return r.sum() * 0.0
    return r[valid].mean()


def contextual_contrastive_loss(
    fused: torch.Tensor,
    ir: torch.Tensor,
    vis: torch.Tensor,
    m_ir: torch.Tensor,
    m_vis: torch.Tensor,
    vgg: VGGFeatures,
    omega: Mapping[str, float] | None = None,
    layer_weights: Mapping[str, float] | None = None,
    band_width: float = 1.0,
    groups: int = 4,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_CCL = L_unique + L_share + L_bg`` (module docstring).

    Args:
        fused, ir, vis: ``B×1×H×W`` luminance in [0, 1] (gradients flow into ``fused``).
        m_ir, m_vis: ``B×1×H×W`` object masks of each modality in {0, 1}.
        vgg: a :class:`VGGFeatures` (build it once).
        omega: ``{"w1", "w2", "w3"}`` overrides (share weights, Euclidean CX weight).
        layer_weights: ``{"relu4": 1, "relu5": 1}`` weights of the contextual terms.

    Returns:
        ``(total, {"unique", "share", "bg"})``.
    """
    from ..regions import partition

    for name, t in (("ir", ir), ("vis", vis), ("m_ir", m_ir), ("m_vis", m_vis)):
        if t.shape != fused.shape:
            raise InputError(
                f"contextual contrastive loss: {name} {tuple(t.shape)} differs from fused {tuple(fused.shape)}"
            )
    w = {**OMEGAS, **(omega or {})}
    lw = dict(layer_weights or {"relu4": 1.0, "relu5": 1.0})
    parts = partition(m_ir, m_vis)
    shifts = _shifts(fused.shape[0], groups)

    def d_ctx(a: dict, b: dict) -> torch.Tensor:
        return sum(lw[k] * contextual_similarity(a[k], b[k], w["w3"], band_width) for k in lw)

    def d_mse(a: dict, b: dict) -> torch.Tensor:
        return (a["relu1"] - b["relu1"]).pow(2).flatten(1).mean(1)

    def feats(region: torch.Tensor, upto: str):
        anchor = vgg(fused * region, upto)
        with torch.no_grad():
            src = vgg(torch.cat([vis * region, ir * region]), upto)
        b = fused.shape[0]
        return anchor, {k: v[:b] for k, v in src.items()}, {k: v[b:] for k, v in src.items()}

    def valid(region: torch.Tensor) -> torch.Tensor:
        return region.flatten(1).sum(1) > 0

    zero = fused.sum() * 0.0  # a region empty in every sample costs no VGG pass and contributes 0

    def term(region: torch.Tensor, upto: str, own_vis: bool, dist, pair: bool = False):
        ok = valid(region)
        if not bool(ok.any()):
            return (zero, zero) if pair else zero
        a, fv, fi = feats(region, upto)
        pos, neg = (fv, fi) if own_vis else (fi, fv)
        if pair:
            return _ratio(a, fv, fi, ok, dist, shifts), _ratio(a, fi, fv, ok, dist, shifts)
        return _ratio(a, pos, neg, ok, dist, shifts)

    out = {}
    out["unique"] = term(parts["u_vis"], "relu5", True, d_ctx) + term(parts["u_ir"], "relu5", False, d_ctx)
    sv, si = term(parts["shared"], "relu5", True, d_ctx, pair=True)
    out["share"] = w["w1"] * sv + w["w2"] * si
    out["bg"] = term(parts["bg"], "relu1", True, d_mse)
    total = out["unique"] + out["share"] + out["bg"]
    return total, {k: float(v.detach()) for k, v in out.items()}


class ContextualContrastiveLoss(nn.Module):
    """Module form of :func:`contextual_contrastive_loss` holding its frozen VGG (built once).

    ``loss(fused, ir, vis, m_ir, m_vis)`` with ``B×1×H×W`` tensors → ``(total, {"unique", "share", "bg"})``.

    Args:
        vgg: ``"vgg16"`` (default, shared weights) or ``"vgg19"`` (paper; needs ``vgg_weights``), or a
            :class:`VGGFeatures` instance.
        vgg_weights: local VGG weights file.
        omega, layer_weights, band_width, groups: see :func:`contextual_contrastive_loss`.
    """

    def __init__(
        self,
        vgg: str | VGGFeatures = "vgg16",
        vgg_weights: str | Path | None = None,
        omega: Mapping[str, float] | None = None,
        layer_weights: Mapping[str, float] | None = None,
        band_width: float = 1.0,
        groups: int = 4,
    ) -> None:
        super().__init__()
        self.vgg = vgg if isinstance(vgg, VGGFeatures) else VGGFeatures(vgg, vgg_weights)
        self.omega, self.layer_weights = dict(omega or {}), dict(layer_weights or {"relu4": 1.0, "relu5": 1.0})
        self.band_width, self.groups = float(band_width), int(groups)
        missing = [k for k in [*self.layer_weights, "relu1"] if k not in self.vgg.layers]
        if missing:
            raise InputError(f"contextual contrastive loss: VGG has no layer(s) {missing}")

    def forward(self, fused, ir, vis, m_ir, m_vis):
        return contextual_contrastive_loss(
            fused, ir, vis, m_ir, m_vis, self.vgg, self.omega, self.layer_weights, self.band_width, self.groups
        )


class OCCOLoss(nn.Module):
    """``L = L_pixel + ω6 · L_CCL`` (paper weights); ``loss(fused, ir, vis, m_ir, m_vis)`` → ``(total, parts)``.

    ``fused`` is the network's luminance output ``B×1×H×W`` (not clamped, not min-max normalised); ``vis`` is the
    visible luminance. ``contrastive=False`` trains with the pixel loss only (ablation).
    """

    def __init__(
        self,
        vgg: str | VGGFeatures = "vgg16",
        vgg_weights: str | Path | None = None,
        omega: Mapping[str, float] | None = None,
        contrastive: bool = True,
        **ccl,
    ) -> None:
        super().__init__()
        self.omega = {**OMEGAS, **(omega or {})}
        self.pixel = OCCOPixelLoss(self.omega["w4"], self.omega["w5"])
        self.ccl = ContextualContrastiveLoss(vgg, vgg_weights, self.omega, **ccl) if contrastive else None

    def forward(self, fused, ir, vis, m_ir, m_vis):
        total, parts = self.pixel(fused, ir, vis)
        if self.ccl is not None:
            c, cparts = self.ccl(fused, ir, vis, m_ir, m_vis)
            total = total + self.omega["w6"] * c
            parts.update({f"ccl_{k}": v for k, v in cparts.items()})
            parts["ccl"] = float(c.detach())
        parts["total"] = float(total.detach())
        return total, parts

"""MetaFusion (Zhao et al., CVPR 2023): fusion net F, meta-feature embedding (MFG + FT), and its updates.

Structure (as the paper and the official inference code define it):

* **F** (:class:`MetaFusionNet`): three feature fusion blocks FFB1-3 — ``conv -> conv -> two parallel 3×3 convs,
  concatenated``, ReLU, channels 4→64 (out 128), 128→128 (out 256), 256→128 (out 256) — and an image
  reconstruction module IRM of five 3×3 convs 256→128→128→128→128→64 and a 1×1 conv to 2 channels + sigmoid,
  used as per-pixel weights: ``fused = w0 · IR + w1 · V``. No down-sampling: every FFB output has the input size.
  Parameter names follow the official ``FusionNet`` (``block1.{0,1,2}.conv1_1`` ... ``block2.10``), so an
  official checkpoint loads with ``colour="hsv"`` (4-channel input IR + RGB, fused V of HSV, H/S kept).
  ivfuse's default colour path is ``colour="ycbcr"``: input IR + Y (2 channels), fused Y, Cb/Cr kept.
  ``width`` scales every channel count (1.0 = paper; the CPU preset uses 0.25).
* **MFE** (:class:`MetaFeatureEmbedding`): per level j, ``MFG_j = C6(C4(F_uj) ⊎ C2(Up(F_ej)))`` and
  ``FT_j = C3(F_uj)`` (``C_k`` = k 3×3 conv+ReLU, ⊎ = concat, Up = bilinear upsampling of the detector feature
  to the fusion feature's size); the guide loss is ``L_g = Σ_j ||F_mj - F_tj||²`` (mean squared error).
* The inner (second-order) and outer updates and Algorithm 1 live in :mod:`ivfuse.engine.metafusion`.

Deviations from the official code (bugs there, paper followed here): the official loader reads BGR with OpenCV and
converts with ``COLOR_RGB2HSV`` (channels swapped), resizes every image to 512×384 and pairs files by sorted
position; ivfuse converts RGB correctly, keeps the input size and pairs by name. With the authors' checkpoint,
``preset="official"`` reproduces that loader and the official output (:meth:`MetaFusionNet._forward_official`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from kornia.color import hsv_to_rgb, rgb_to_hsv, rgb_to_ycbcr, ycbcr_to_rgb
from torch import nn

from ..errors import InputError
from .base import FusionModel, check_pair, load_checked, load_state, register_model, resolve_weights
from .official import KeyTable, check_preset

__all__ = ["MetaFusionNet", "MetaFeatureEmbedding", "FusionBlock", "guide_loss"]


def _c(ch: int, width: float) -> int:
    return max(4, int(round(ch * width)))


class FusionBlock(nn.Module):
    """FFB: conv → conv → two parallel 3×3 convs, concatenated (all followed by ReLU)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1_1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.conv1_2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.conv1_0_00 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.conv1_0_01 = nn.Conv2d(cout, cout, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1_2(F.relu(self.conv1_1(x))))
        return torch.cat([F.relu(self.conv1_0_00(x)), F.relu(self.conv1_0_01(x))], 1)


class MetaFusionNet(FusionModel):
    """MetaFusion's fusion network F (see module docstring).

    Args:
        width: channel multiplier (1.0 = the paper's ≈2.25M-parameter net).
        colour: ``"ycbcr"`` (IR + Y input, fused Y; ivfuse default) or ``"hsv"`` (official: IR + RGB input,
            fused V of HSV).
        blocks: number of FFBs (1-3; the paper uses 3).
    """

    min_size = 1
    #: ``"ivfuse"`` (default: input size, colour as configured) or ``"official"`` (the official test script's
    #: 512×384 resizing, swapped HSV and truncation; see :meth:`_forward_official`)
    preset: str = "ivfuse"
    #: ``"ivfuse"`` or ``"official"`` (loaded from the authors' file)
    checkpoint_format: str = "ivfuse"

    def __init__(self, width: float = 1.0, colour: str = "ycbcr", blocks: int = 3) -> None:
        super().__init__()
        if colour not in ("ycbcr", "hsv"):
            raise InputError(f"MetaFusion colour must be 'ycbcr' or 'hsv', got '{colour}'")
        if not 1 <= blocks <= 3:
            raise InputError("MetaFusion blocks must be 1, 2 or 3")
        self.width, self.colour, self.blocks = width, colour, blocks
        cin = 4 if colour == "hsv" else 2
        c64, c128 = _c(64, width), _c(128, width)
        ins = [cin, 2 * c64, 2 * c128]
        outs = [c64, c128, c128]
        self.block1 = nn.Sequential(*(FusionBlock(ins[i], outs[i]) for i in range(blocks)))
        self.feature_channels = [2 * o for o in outs[:blocks]]
        b2 = self.feature_channels[-1]
        self.block2 = nn.Sequential(
            nn.Conv2d(b2, c128, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c128, c128, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c128, c128, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c128, c128, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c128, c64, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c64, 2, 1, 1, 0),
            nn.Sigmoid(),
        )

    # ------------------------------------------------------------------------------------------------ colour
    def split(self, vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Visible image -> (network input channels, the luminance/brightness to fuse, colour to restore)."""
        if vis.shape[1] == 1:
            return (vis.expand(-1, 3, -1, -1) if self.colour == "hsv" else vis), vis, None
        if self.colour == "hsv":
            hsv = rgb_to_hsv(vis)
            return vis, hsv[:, 2:], hsv[:, :2]
        ycc = rgb_to_ycbcr(vis)
        return ycc[:, :1], ycc[:, :1], ycc[:, 1:]

    def merge(self, lum: torch.Tensor, colour: torch.Tensor | None) -> torch.Tensor:
        lum = lum.clamp(0, 1)
        if colour is None:
            return lum
        if self.colour == "hsv":
            return hsv_to_rgb(torch.cat([colour, lum], 1)).clamp(0, 1)
        return ycbcr_to_rgb(torch.cat([lum, colour], 1)).clamp(0, 1)

    # ------------------------------------------------------------------------------------------------ network
    def features_and_weights(self, ir: torch.Tensor, vis_in: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Fusion features F_u1..F_uk (input resolution) and the 2-channel per-pixel weights."""
        x = torch.cat([ir, vis_in], 1)
        feats = []
        for blk in self.block1:
            x = blk(x)
            feats.append(x)
        return feats, self.block2(x)

    def fuse_with_features(
        self, ir: torch.Tensor, vis: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Returns (fused luminance B×1×H×W, fused image with the visible input's channels, features)."""
        vin, lum, colour = self.split(vis)
        feats, w = self.features_and_weights(ir, vin)
        y = w[:, :1] * ir + w[:, 1:2] * lum
        return y, self.merge(y, colour), feats

    def forward(self, ir: torch.Tensor, vis: torch.Tensor, with_features: bool = False):
        """Fused image; with ``with_features`` also the fused luminance and F_u1..F_uk (for training, and for
        ``torch.func.functional_call`` in the inner update)."""
        check_pair(ir, vis, self.min_size, self.name)
        if self.preset == "official" and not with_features:
            return self._forward_official(ir, vis)
        y, out, feats = self.fuse_with_features(ir, vis)
        return (y, out, feats) if with_features else out

    # ------------------------------------------------------------------------------------------------ official preset
    def official_inputs(self, ir: torch.Tensor, vis: torch.Tensor) -> dict:
        """The official test loader's inputs for one pair (``ir`` ``1×H×W``, ``vis`` ``{1,3}×H×W`` in [0, 1]), as
        ``utils/dataloader.py`` makes them: IR and RGB resized to 512×384 by PIL ``BILINEAR`` (anti-aliased), the
        brightness V and colour H, S from OpenCV (``INTER_LINEAR`` resize, then ``COLOR_RGB2HSV`` applied to the
        *BGR* array, so H is computed with R and B swapped). Returns ``ir`` (1×1×384×512), ``vis_rgb``
        (1×3×384×512), ``v`` (1×1×384×512) on the model's device and ``hs`` (384×512×2 uint8)."""
        import cv2
        import numpy as np
        from PIL import Image

        from .official import to_u8

        size = OFFICIAL_SIZE
        dev = next(self.parameters()).device
        rgb8 = to_u8(vis.expand(3, -1, -1) if vis.shape[0] == 1 else vis)
        ir_r = np.asarray(Image.fromarray(to_u8(ir[0])).resize(size, Image.BILINEAR))
        vis_r = np.asarray(Image.fromarray(rgb8).resize(size, Image.BILINEAR))
        bgr_r = cv2.resize(np.ascontiguousarray(rgb8[..., ::-1]), size, interpolation=cv2.INTER_LINEAR)
        hsv = cv2.cvtColor(bgr_r, cv2.COLOR_RGB2HSV)  # the official call, on BGR data

        def t(a: Any) -> torch.Tensor:
            x = torch.from_numpy(np.array(a)).float().div(255)
            return (x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]).to(dev)

        return {"ir": t(ir_r), "vis_rgb": t(vis_r), "v": t(hsv[..., 2]), "hs": np.ascontiguousarray(hsv[..., :2])}

    def _forward_official(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        """``preset="official"``: the official ``test.py`` output, 3×384×512 RGB per pair (values k/255)."""
        import cv2
        import numpy as np

        outs = []
        for b in range(ir.shape[0]):
            x = self.official_inputs(ir[b], vis[b])
            _, w = self.features_and_weights(x["ir"], x["vis_rgb"])
            fus = (w[:, :1] * x["ir"] + w[:, 1:2] * x["v"])[0, 0].detach().float().cpu().numpy()
            bri = np.clip(fus * np.float32(255), 0, 255).astype(np.uint8)  # astype: truncation, as the official code
            bgr = cv2.cvtColor(np.dstack([x["hs"], bri]), cv2.COLOR_HSV2RGB)  # BGR-ordered (H came from BGR)
            outs.append(torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1].transpose(2, 0, 1))).float().div(255))
        return torch.stack(outs).to(ir.device)

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> MetaFusionNet:
        """Load an ivfuse MetaFusion file (any container of :func:`~ivfuse.models.base.load_state`: safetensors
        export, engine checkpoint, ``{"state_dict", "config"}``, bare state dict) or the authors' file
        (``weight/model_weight.pth``: a raw state dict of ``FusionNet`` whose ``MetaConv2d`` weights are buffers;
        loaded as the conv weights they are through :data:`OFFICIAL_KEYS`, 4-channel input -> ``colour="hsv"``,
        width 1). Any other file is a one-line :class:`InputError`."""
        from .official import is_state_dict, not_weights_error

        sd, cfg, _, _ = load_state(path, "MetaFusion", module="F", section="fusion")
        accepted = (
            "an ivfuse MetaFusion export (.safetensors), an ivfuse MetaFusion checkpoint, or the official "
            "MetaFusion state dict (weight/model_weight.pth)"
        )
        if not is_state_dict(sd) or "block1.0.conv1_1.weight" not in sd:
            raise not_weights_error(path, "MetaFusion", accepted)
        if not cfg:  # a bare state dict: read the layout off the weights
            w0 = sd["block1.0.conv1_1.weight"]
            if w0.ndim != 4:
                raise not_weights_error(path, "MetaFusion", accepted)
            cfg = {
                "width": w0.shape[0] / 64,
                "colour": "hsv" if w0.shape[1] == 4 else "ycbcr",
                "blocks": len({k.split(".")[1] for k in sd if k.startswith("block1.")}),
            }
            if cfg["colour"] == "hsv" and cfg["width"] == 1.0:  # the authors' FusionNet
                model = cls(width=1.0, colour="hsv", blocks=int(cfg["blocks"]))
                model.checkpoint_format = "official"
                return OFFICIAL_KEYS.load(model, sd, path)
        model = cls(
            width=float(cfg.get("width", 1.0)), colour=cfg.get("colour", "ycbcr"), blocks=int(cfg.get("blocks", 3))
        )
        return load_checked(model, sd, path, "MetaFusion F")


#: official ``FusionNet`` -> :class:`MetaFusionNet`: the module names are the same (``block1.{i}.conv1_1`` ...
#: ``block2.10``), so the table has no rewrite; it still checks that every key is used and every tensor filled.
#: The official ``MetaConv2d`` registers its weight and bias as *buffers* (they are still in the state dict); here
#: they are ordinary ``nn.Conv2d`` parameters.
OFFICIAL_KEYS = KeyTable("MetaFusion", rules=())

#: the official loader resizes every image to this (width, height)
OFFICIAL_SIZE = (512, 384)


def _convs(cin: int, cout: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, 1, 1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class MetaFeatureEmbedding(nn.Module):
    """MFE: meta-feature generators MFG_j and feature transformers FT_j for each guided level.

    Args:
        fusion_channels: channels of F_u1..F_uk.
        detector_channels: channels of the detector features F_e1..F_ek (strides 8/16/32).
        levels: which levels (1-based) are guided, e.g. ``(1, 2, 3)`` (paper), ``(1,)`` for the L1 ablation.
        mid: channel width of the embedding (64 in the paper-scale config).
    """

    def __init__(
        self,
        fusion_channels: Sequence[int],
        detector_channels: Sequence[int],
        levels: Sequence[int] = (1, 2, 3),
        mid: int = 64,
    ) -> None:
        super().__init__()
        self.levels = tuple(levels)
        for j in self.levels:
            if not 1 <= j <= min(len(fusion_channels), len(detector_channels)):
                raise InputError(f"MetaFusion: level {j} is not available")
        self.mfg_u = nn.ModuleList(_convs(fusion_channels[j - 1], mid, 4) for j in self.levels)  # C4(F_u)
        self.mfg_e = nn.ModuleList(_convs(detector_channels[j - 1], mid, 2) for j in self.levels)  # C2(Up(F_e))
        self.mfg_out = nn.ModuleList(_convs(2 * mid, mid, 6) for _ in self.levels)  # C6(⊎)
        self.ft = nn.ModuleList(_convs(fusion_channels[j - 1], mid, 3) for j in self.levels)  # C3(F_u)

    def forward(self, fusion_feats: Sequence[torch.Tensor], det_feats: Sequence[torch.Tensor]):
        """Returns ``(meta features F_m, transformed features F_t)`` for the guided levels."""
        fm, ft = [], []
        for i, j in enumerate(self.levels):
            fu, fe = fusion_feats[j - 1], det_feats[j - 1]
            up = F.interpolate(fe, size=fu.shape[-2:], mode="bilinear", align_corners=False)
            fm.append(self.mfg_out[i](torch.cat([self.mfg_u[i](fu), self.mfg_e[i](up)], 1)))
            ft.append(self.ft[i](fu))
        return fm, ft


def guide_loss(fm: Sequence[torch.Tensor], ft: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_g = Σ_j MSE(F_mj, F_tj)."""
    return sum(F.mse_loss(t, m) for m, t in zip(fm, ft))


@register_model("metafusion", default_weights="metafusion_default.safetensors")
def metafusion(
    weights: str | os.PathLike | None = "default",
    width: float | None = None,
    colour: str = "ycbcr",
    preset: str = "ivfuse",
) -> MetaFusionNet:
    """MetaFusion fusion network F (Zhao et al., CVPR 2023); default: ivfuse's trained CPU-scale model.
    ``weights=FILE`` also loads the authors' ``model_weight.pth``; ``preset="official"`` (with that file) reproduces
    the official ``test.py`` output (512×384, see docs/metafusion.md). ``weights=None``: an untrained network of
    ``width`` and ``colour``."""
    check_preset(preset, "metafusion")
    path = resolve_weights("metafusion", weights)
    model = (
        MetaFusionNet(width=width or 1.0, colour=colour).eval() if path is None else MetaFusionNet.from_checkpoint(path)
    )
    if preset == "official":
        if model.colour != "hsv" or model.width != 1.0 or model.blocks != 3:
            raise InputError(
                "metafusion: preset='official' needs the official network (4-channel input, width 1, 3 blocks): "
                "pass the authors' weights (weights=model_weight.pth)"
            )
        model.preset = "official"
    return model

"""OCCO's fusion network FIFN (Li, Bian, Zhang, Song, Li, Wu, arXiv 2503.18635, §3.1; official ``models/net.py``).

Structure (paper first, the official code for sizes):

* **Encoders**: one per modality (separate weights), 4 levels of ``[conv3×3 + BN + ReLU] × 2`` then 2×2 max-pool,
  channels 32/64/112/160; the pre-pool features of each level are the skips (level 4's pooled output is unused).
* **FIFB** (:class:`FIFB`, feature-interaction fusion block), one per level, on the two modalities' features
  ``x_vis``, ``x_ir`` (``B×C×H×W``):

  - cross-channel weights (:class:`CrossChannelWeights`): global average and max pooling of ``[x_vis, x_ir]``
    (4C values) → MLP 4C→4C→2C with ReLU between and a sigmoid → split into per-modality channel weights
    ``w_vis``, ``w_ir`` (C each); ``c_m = w_m · x_m``;
  - spatial weights (:class:`SpatialWeight`), one per modality: ``1×1 C→C, ReLU, 1×1 C→1, sigmoid``;
    ``s_m = a_m · x_m``;
  - efficient cross-attention (:class:`EfficientCrossAttention`; heads 4, 4, 4, 1 at the four levels): the
    channel-weighted tokens are projected (``Linear C→C`` + ReLU); each modality's keys/values (``Linear C→2C``,
    no bias) form a per-head global context ``softmax_k(Kᵀ V · d^-½)`` (d×d, softmax over the key channels), and
    each modality's tokens query the *other* modality's context: ``o_vis = q_vis · ctx_ir``, ``o_ir = q_ir · ctx_vis``;
  - merge: ``y_m = LayerNorm(x_m + Linear_{2C→C}([s_m, o_m]))`` per modality;
  - channel embedding (:class:`ChannelEmbed`) of ``[y_vis, y_ir]`` back to C:
    ``BN(1×1_{2C→C}(y) + BN(1×1_{C→C}(ReLU(DW3×3(1×1_{2C→C}(y))))))``.
* **Decoder**: from the level-4 fused map, three ``bilinear ×2 + skip concat + [conv3×3 + ReLU] × 2`` stages
  (160+112→112, 112+64→64, 64+32→32) and a 1×1 conv to one channel.

The network fuses the visible luminance Y (BT.601, :class:`~ivfuse.models.base.FusionModel`) with IR; Cb/Cr are
restored by the base class. 3,621,161 parameters (paper: ≈3.6 M).

Deviations from the official code (documented in ``docs/occo.md``):

* the code computes the IR spatial weight with the *visible* branch's module (``space_weight1`` twice;
  ``space_weight2`` is never used) — here each modality uses its own, as the paper describes (a network loaded from
  the authors' checkpoint keeps the code's behaviour, ``FIFB.shared_spatial``, since it was trained that way);
* the code's decoder pads the upsampled map by reflection when sizes differ; here the input is reflect-padded to a
  multiple of 8 and the output cropped, so every level matches exactly and any ``H×W ≥ 8`` works;
* the code's training loop min-max normalises every output batch; ivfuse does not: the 1×1 output is used as is
  in training and clamped to [0, 1] at inference.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .base import FusionModel, check_pair, load_checked, load_state, register_model, resolve_weights
from .official import KeyTable, apply_official_preset, batch_stat_norms, check_preset, is_state_dict

__all__ = ["FIFB", "ChannelEmbed", "CrossChannelWeights", "EfficientCrossAttention", "OCCONet", "SpatialWeight"]

CHANNELS = (32, 64, 112, 160)
HEADS = (4, 4, 4, 1)


class EncoderLevel(nn.Sequential):
    """``[conv3×3 + BN + ReLU] × 2`` (the max-pool is applied by the caller)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, 1, 1),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Encoder(nn.Module):
    """4-level encoder; returns the pre-pool features of each level (``B×C_l×H/2^l×W/2^l``)."""

    def __init__(self, channels=CHANNELS) -> None:
        super().__init__()
        ins = (1,) + tuple(channels[:-1])
        self.levels = nn.ModuleList(EncoderLevel(a, b) for a, b in zip(ins, channels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        return feats


class CrossChannelWeights(nn.Module):
    """``(x_vis, x_ir)`` ``B×C×H×W`` → per-modality channel weights ``B×C×1×1`` each (in (0, 1))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(
            nn.Linear(4 * dim, 4 * dim), nn.ReLU(inplace=True), nn.Linear(4 * dim, 2 * dim), nn.Sigmoid()
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([x1, x2], 1)
        y = torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)
        w = self.mlp(y)[:, :, None, None]
        return w[:, : self.dim], w[:, self.dim :]


class SpatialWeight(nn.Module):
    """``B×C×H×W`` → spatial weight map ``B×1×H×W`` in (0, 1): ``1×1 C→C, ReLU, 1×1 C→1, sigmoid``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.ReLU(inplace=True), nn.Conv2d(dim, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class EfficientCrossAttention(nn.Module):
    """Linear-complexity cross attention between two token sets ``B×N×C`` (see module docstring)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise InputError(f"FIFB: {heads} heads do not divide {dim} channels")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.kv1 = nn.Linear(dim, 2 * dim, bias=False)
        self.kv2 = nn.Linear(dim, 2 * dim, bias=False)

    def _context(self, kv: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        k, v = kv(x).view(b, n, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # 2×B×h×N×d
        return ((k.transpose(-2, -1) @ v) * self.scale).softmax(dim=-2)  # B×h×d×d

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x1.shape
        q1 = x1.view(b, n, self.heads, c // self.heads).transpose(1, 2)
        q2 = x2.view(b, n, self.heads, c // self.heads).transpose(1, 2)
        ctx1, ctx2 = self._context(self.kv1, x1), self._context(self.kv2, x2)
        o1 = (q1 @ ctx2).transpose(1, 2).reshape(b, n, c)
        o2 = (q2 @ ctx1).transpose(1, 2).reshape(b, n, c)
        return o1, o2


class ChannelEmbed(nn.Module):
    """``B×2C×H×W`` → ``B×C×H×W``: ``BN(1×1 residual + [1×1 → DW3×3 → ReLU → 1×1 → BN])``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.residual = nn.Conv2d(cin, cout, 1, bias=False)
        self.channel_embed = nn.Sequential(
            nn.Conv2d(cin, cout, 1),
            nn.Conv2d(cout, cout, 3, 1, 1, groups=cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 1),
            nn.BatchNorm2d(cout),
        )
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.residual(x) + self.channel_embed(x))


class FIFB(nn.Module):
    """Feature-interaction fusion block: ``(x_vis, x_ir)`` ``B×C×H×W`` each → fused ``B×C×H×W``."""

    #: compute the IR spatial weight with the visible branch's module too (the official forward calls
    #: ``space_weight1`` twice); set for networks loaded from the authors' files, which were trained that way
    shared_spatial: bool = False

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.channel_weight = CrossChannelWeights(dim)
        self.space_weight_vis = SpatialWeight(dim)
        self.space_weight_ir = SpatialWeight(dim)
        self.proj_vis, self.proj_ir = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.cross_attn = EfficientCrossAttention(dim, heads)
        self.end_proj_vis, self.end_proj_ir = nn.Linear(2 * dim, dim), nn.Linear(2 * dim, dim)
        self.norm_vis, self.norm_ir = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.channel_emb = ChannelEmbed(2 * dim, dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x1.shape
        w1, w2 = self.channel_weight(x1, x2)
        s1 = (self.space_weight_vis(x1) * x1).flatten(2).transpose(1, 2)
        s2 = (
            ((self.space_weight_vis if self.shared_spatial else self.space_weight_ir)(x2) * x2)
            .flatten(2)
            .transpose(1, 2)
        )
        c1 = F.relu(self.proj_vis((w1 * x1).flatten(2).transpose(1, 2)))
        c2 = F.relu(self.proj_ir((w2 * x2).flatten(2).transpose(1, 2)))
        o1, o2 = self.cross_attn(c1, c2)
        t1, t2 = x1.flatten(2).transpose(1, 2), x2.flatten(2).transpose(1, 2)
        y1 = self.norm_vis(t1 + self.end_proj_vis(torch.cat([s1, o1], -1)))
        y2 = self.norm_ir(t2 + self.end_proj_ir(torch.cat([s2, o2], -1)))
        merged = torch.cat([y1, y2], -1).transpose(1, 2).reshape(b, 2 * c, h, w)
        return self.channel_emb(merged)


class DecoderUp(nn.Module):
    """Bilinear ×2 of the deeper map, concat with the skip, ``[conv3×3 + ReLU] × 2``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=True)  # nn.UpsamplingBilinear2d
        return F.relu(self.conv2(F.relu(self.conv1(torch.cat([skip, up], 1)))))


class OCCONet(FusionModel):
    """FIFN (see module docstring). ``fuse_luma(ir, y)``: ``B×1×H×W`` each → raw ``B×1×H×W`` (unclamped);
    ``model(ir, vis)`` returns the fused image in [0, 1] with the visible input's channels.

    Args:
        channels: encoder widths per level (paper: 32, 64, 112, 160).
        heads: cross-attention heads per level (paper: 4, 4, 4, 1).
    """

    min_size = 8

    def __init__(self, channels=CHANNELS, heads=HEADS) -> None:
        super().__init__()
        if len(channels) != 4 or len(heads) != 4:
            raise InputError("OCCO: channels and heads need 4 levels")
        self.channels, self.heads = tuple(int(c) for c in channels), tuple(int(h) for h in heads)
        self.enc_vis, self.enc_ir = Encoder(self.channels), Encoder(self.channels)
        self.fifb = nn.ModuleList(FIFB(c, h) for c, h in zip(self.channels, self.heads))
        c1, c2, c3, c4 = self.channels
        self.up3, self.up2, self.up1 = DecoderUp(c4 + c3, c3), DecoderUp(c3 + c2, c2), DecoderUp(c2 + c1, c1)
        self.final = nn.Conv2d(c1, 1, 1)

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, w = y.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
            y, ir = F.pad(y, (0, pw, 0, ph), mode=mode), F.pad(ir, (0, pw, 0, ph), mode=mode)
        fused = [blk(a, b) for blk, a, b in zip(self.fifb, self.enc_vis(y), self.enc_ir(ir))]
        x = self.up3(fused[2], fused[3])
        x = self.up2(fused[1], x)
        x = self.up1(fused[0], x)
        return self.final(x)[..., :h, :w]

    # ------------------------------------------------------------------------------------------------ official preset
    preset: str = "ivfuse"
    checkpoint_format: str = "ivfuse"

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        if self.preset != "official":
            return super().forward(ir, vis)
        check_pair(ir, vis, self.min_size, self.name)
        return torch.cat([self._official_one(ir[b : b + 1], vis[b : b + 1])[1] for b in range(ir.shape[0])])

    def official_raw(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        """The official ``main.py`` network output for one pair (``1×1×H×W``, before its min-max stretch)."""
        return self._official_one(ir, vis)[0]

    def _official_one(self, ir: torch.Tensor, vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``preset="official"`` for one pair (``1×1×H×W``, ``1×{1,3}×H×W``): ``Y = 0.299R + 0.587G + 0.114B``,
        ``Cr = 0.713(R - Y) + 0.5``, ``Cb = 0.564(B - Y) + 0.5`` (clamped), the network on ``(Y, IR)`` with every
        BatchNorm on batch statistics (the official script never calls ``model.eval()``), min-max over the whole
        output, the official YCbCr -> RGB matrix, clamp, ``uint8`` truncation. Returns (raw, fused RGB k/255)."""
        rgb = vis.expand(-1, 3, -1, -1) if vis.shape[1] == 1 else vis
        r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
        y = 0.299 * r + 0.587 * g + 0.114 * b
        cr = ((r - y) * 0.713 + 0.5).clamp(0, 1)
        cb = ((b - y) * 0.564 + 0.5).clamp(0, 1)
        y = y.clamp(0, 1)
        with batch_stat_norms(self):
            raw = self.fuse_luma(ir, y)
        o = (raw - raw.min()) / (raw.max() - raw.min())
        n, _, h, w = o.shape
        ycrcb = torch.cat([o, cr, cb], 1).permute(0, 2, 3, 1).reshape(-1, 3)
        mat = torch.tensor([[1.0, 1.0, 1.0], [1.403, -0.714, 0.0], [0.0, -0.344, 1.773]], device=o.device)
        bias = torch.tensor([0.0, -0.5, -0.5], device=o.device)
        out = ((ycrcb + bias) @ mat).reshape(n, h, w, 3).permute(0, 3, 1, 2).clamp(0, 1)
        return raw, (out * 255).floor() / 255  # np.uint8(float32): truncation

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> OCCONet:
        """Load any ivfuse container (:func:`~ivfuse.models.base.load_state`: ``.safetensors`` with or without a
        ``config``, ``{"state_dict", "config"}``, an engine checkpoint, a bare state dict) or the authors' file
        (``{"meta", "state_dict"}`` of ``occo(nb_filter=[32, 64, 112, 160])``, keys mapped by
        :data:`OFFICIAL_KEYS`; the network then uses ``space_weight1`` for both modalities, as it was trained),
        strictly. Any other file is a one-line :class:`InputError`."""
        sd, cfg, _, _ = load_state(path, "OCCO", module="F", section="model")
        cfg = cfg or {}
        if is_state_dict(sd) and "v1.Conv_BN_ReLU_2.0.weight" in sd:  # the authors' network
            model = cls()
            for blk in model.fifb:
                blk.shared_spatial = True
            model.checkpoint_format = "official"
            return OFFICIAL_KEYS.load(model, sd, path)
        if not is_state_dict(sd) or not any(k.startswith("enc_vis.") for k in sd):
            raise InputError(
                f"{path}: keys do not match OCCO (not an OCCO checkpoint; accepted: an ivfuse OCCO export "
                "(.safetensors) or checkpoint, or the official OCCO checkpoint ({'meta', 'state_dict'} of "
                "main.py))"
            )
        model = cls(channels=cfg.get("channels", CHANNELS), heads=cfg.get("heads", HEADS))
        return load_checked(model, sd, path, "OCCO's FIFN")


#: official ``occo`` (``models/net.py``) -> :class:`OCCONet`. Encoders ``v1..v4`` (visible) / ``i1..i4`` (infrared) ->
#: ``enc_vis`` / ``enc_ir`` levels 0-3; ``fusion1..4`` -> ``fifb.0..3`` (``cross.channel_proj3/4`` -> ``proj_vis/ir``,
#: ``cross.end_proj1/2`` -> ``end_proj_vis/ir``, ``cross.norm1/2`` -> ``norm_vis/ir``, ``space_weight1/2`` ->
#: ``space_weight_vis/ir``); ``up_concat3/2/1`` -> ``up3/2/1``. ``space_weight2`` is loaded but, as in the official
#: forward, never used.
OFFICIAL_KEYS = KeyTable(
    "OCCO",
    rules=(
        (r"^v([1-4])\.Conv_BN_ReLU_2\.", lambda m: f"enc_vis.levels.{int(m.group(1)) - 1}."),
        (r"^i([1-4])\.Conv_BN_ReLU_2\.", lambda m: f"enc_ir.levels.{int(m.group(1)) - 1}."),
        (r"^fusion([1-4])\.", lambda m: f"fifb.{int(m.group(1)) - 1}."),
        (r"\.cross\.channel_proj3\.", ".proj_vis."),
        (r"\.cross\.channel_proj4\.", ".proj_ir."),
        (r"\.cross\.end_proj1\.", ".end_proj_vis."),
        (r"\.cross\.end_proj2\.", ".end_proj_ir."),
        (r"\.cross\.norm1\.", ".norm_vis."),
        (r"\.cross\.norm2\.", ".norm_ir."),
        (r"\.cross\.cross_attn\.", ".cross_attn."),
        (r"\.space_weight1\.", ".space_weight_vis."),
        (r"\.space_weight2\.", ".space_weight_ir."),
        (r"^up_concat([1-3])\.", r"up\1."),
    ),
)


@register_model("occo", default_weights="occo_default.safetensors")
def occo(weights: str | os.PathLike | None = "default", preset: str = "ivfuse") -> OCCONet:
    """OCCO's FIFN (Li et al., 2025); default: ivfuse's CPU-scale model trained with ``ivfuse train occo preset=cpu``
    (``weights=FILE`` / ``--weights`` for another checkpoint, including the authors' file); ``preset="official"``
    (with the authors' file) reproduces the official ``main.py --test`` output (docs/occo.md). ``weights=None``: an
    untrained network (before #21 it meant the default)."""
    check_preset(preset, "occo")
    path = resolve_weights("occo", weights)
    model = OCCONet().eval() if path is None else OCCONet.from_checkpoint(path)
    return apply_official_preset(model, preset, "occo", "the official script", "FILE")

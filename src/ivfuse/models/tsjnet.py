"""TSJNet (Jie, Xu, Li, Li, Tan, Nie — "A Multi-modality Target and Semantic Awareness Joint-driven Image Fusion
Network", arXiv 2402.01212): the fusion network. Losses: :mod:`ivfuse.losses.tsjnet`; method notes: ``docs/tsjnet.md``.

Structure (paper §3.3; widths and depths from the official ``net.py``, written anew here). ``C`` is the feature
width (64 in the paper), shapes are for one ``H×W`` image after padding (see below):

* **Shared encoder E** (applied to the infrared image ``I`` and to the visible luminance ``V``, ``B×1×H×W``):
  3×3 patch embedding 1→3 (no bias) → ResNeSt block (stride-1 deep stem 3→64→64→128 of 3×3 conv+BN+ReLU, then two
  split-attention bottlenecks, radix 2, 128→512, built from :class:`timm.models.resnest.ResNestBottleneck`) → 3×3
  convs 512→256→128→``C`` with ReLU6 → ``f`` (``B×C×H×W``), then two heads at full resolution:

  - *base* ``B = f + NAT(LN(f))`` (:class:`BaseHead`): LN is a per-pixel LayerNorm over channels; NAT is a small
    neighbourhood-attention transformer (:class:`NATUNet`): conv tokenizer (two 3×3 stride-2 convs, /4, + LN),
    four levels of dims 64/128/256/512, depths 3/4/6/5, heads 2/4/8/16, kernel 7, MLP ratio 3 (3×3 stride-2 conv +
    LN between levels), then 3×3 convs 512→128→``C`` (ReLU6) and transposed convs ×4, ×4, ×2 back to ``H×W`` and
    ReLU6. The attention is :func:`neighborhood_attention_2d` (pure PyTorch, NAT semantics);
  - *detail* ``D = DSM(f)`` (:class:`DSM`, detail salience module): a conv branch (3×3 conv-BN-ReLU → "COA"
    residual ``x + ReLU(conv1×1(x))`` → 3×3 conv-BN-ReLU → dropout → 1×1 conv) plus a pooled branch (3×3 conv,
    LeakyReLU 0.2, 2×2 max-pool + 2×2 avg-pool, channel attention GAP → FC ``C``→``C/2``→``C``, sigmoid, 2×2
    transposed conv back to ``H×W``).

* **Fusion layers** (paper Eq. 5): ``B_F = f_B(B_I + B_V)`` with a second :class:`BaseHead` and
  ``D_F = f_D(D_I + D_V)`` with a second :class:`DSM`.

* **Decoder G** (shared by the fused and the two reconstruction paths): ``B ⊕ D`` (paper: element-wise sum, ``C``
  channels; official code: concatenation, ``2C``) → spatial attention with 8 heads (each head a 1×1 conv of its
  ``C/8`` channels to one sigmoid map ``A_h`` that multiplies them; the maps ``A`` (``B×8×H×W``) feed the
  diversity loss) → 1×1 conv to 32 → ResNeSt block (32 in, 512 out) → 3×3 conv 512→256, LeakyReLU, 3×3 conv 256→1,
  sigmoid. ``F = G(B_F, D_F)``, ``Î = G(B_I, D_I)``, ``V̂ = G(B_V, D_V)``.

* **Sizes**: NAT needs ``H`` and ``W`` to be multiples of its total stride (4·2^(levels-1) = 32) and its coarsest
  map to hold a whole ``k×k`` window (≥ 7·32 = 224 for the paper configuration). Inputs are padded at the bottom/right
  by edge replication to the next such size and every output is cropped back; any size is accepted.

* **Colour**: the network fuses IR with the visible luminance Y (BT.601 YCbCr, kornia); Cb/Cr of the visible
  image are restored (:class:`~ivfuse.models.base.FusionModel`). The official training script feeds the *R channel*
  as gray (``data_VIS[:, 0]``) — not reproduced.

The authors' checkpoint (``TSJNet.pth``: four state dicts) loads through :data:`OFFICIAL_KEYS` into the ``paper``
configuration with ``merge="concat"`` in ``layout="official"`` (the code's own split-attention bottleneck);
``docs/tsjnet.md`` lists the NATTEN layouts accepted.

Configurations (:data:`VARIANTS`): ``"paper"`` (45.11 M parameters, 90 % in the two NATs; ≈347 GMAC per fusion
at 224×224) and ``"cpu"`` (0.65 M parameters, ≈10 GMAC at 256×256; same topology, narrower and shallower: one
bottleneck per ResNeSt block, feature width 16, 2 NAT levels of depth 2 with kernel 3, so padding to multiples of 8
and ≥ 24).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_ycbcr, ycbcr_to_rgb
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models.resnest import ResNestBottleneck
from torch import nn

from ..errors import InputError
from ._fused import RELU, SIGMOID, act_of, conv_fused, run_folded
from .base import FusionModel, check_pair, load_checked, load_state, register_model, resolve_weights
from .official import KeyTable

__all__ = [
    "TSJNetConfig",
    "VARIANTS",
    "TSJNet",
    "TSJNetOutput",
    "neighborhood_attention_2d",
    "NeighborhoodAttention2d",
    "NATUNet",
    "BaseHead",
    "DSM",
    "ResNeStBlock",
    "SpatialAttention",
    "TSJDecoder",
    "TSJEncoder",
]


# ------------------------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class TSJNetConfig:
    """Widths and depths of TSJNet (defaults = the paper / official configuration).

    Attributes:
        embed: patch-embedding channels (1 → ``embed``).
        stem: ResNeSt deep-stem widths (three 3×3 conv-BN-ReLU).
        planes: bottleneck width of the ResNeSt block (output ``4 * planes``).
        blocks: split-attention bottlenecks per ResNeSt block.
        radix: split-attention radix.
        enc_convs: encoder 3×3 conv widths after the ResNeSt block; the last is the feature width ``C``.
        nat_dims / nat_depths / nat_heads: NAT levels (the first dim is also the tokenizer width).
        nat_kernel: neighbourhood size ``k`` (odd).
        nat_mlp_ratio: NAT MLP expansion.
        nat_mid: width of the first NAT output conv (official 512→128).
        nat_drop_path: stochastic-depth rate, linearly increasing over the NAT layers (official 0.2).
        dsm_reduction: DSM channel-attention reduction (``C → C / r → C``).
        dsm_dropout: DSM conv-branch dropout (official 0.1).
        dec_heads: decoder spatial-attention heads (``C`` — or ``2C`` with ``merge="concat"`` — divisible by it).
        dec_in: channels after the decoder's 1×1 reduction (official 32).
        dec_stem / dec_planes: the decoder's ResNeSt block.
        dec_hidden: width of the decoder's first output conv (official 256).
        merge: ``"sum"`` (paper, ``B + D``) or ``"concat"`` (official code, ``[B, D]``).
    """

    embed: int = 3
    stem: tuple[int, int, int] = (64, 64, 128)
    planes: int = 128
    blocks: int = 2
    radix: int = 2
    enc_convs: tuple[int, ...] = (256, 128, 64)
    nat_dims: tuple[int, ...] = (64, 128, 256, 512)
    nat_depths: tuple[int, ...] = (3, 4, 6, 5)
    nat_heads: tuple[int, ...] = (2, 4, 8, 16)
    nat_kernel: int = 7
    nat_mlp_ratio: float = 3.0
    nat_mid: int = 128
    nat_drop_path: float = 0.2
    dsm_reduction: int = 2
    dsm_dropout: float = 0.1
    dec_heads: int = 8
    dec_in: int = 32
    dec_stem: tuple[int, int, int] = (64, 64, 128)
    dec_planes: int = 128
    dec_hidden: int = 256
    merge: str = "sum"

    @property
    def channels(self) -> int:
        """Feature width ``C`` of the base/detail features."""
        return self.enc_convs[-1]

    @property
    def nat_stride(self) -> int:
        """Total down-sampling of the NAT (tokenizer /4, then /2 per extra level)."""
        return 4 * 2 ** (len(self.nat_dims) - 1)

    @property
    def min_side(self) -> int:
        """Smallest padded side: the coarsest NAT map must hold one ``k×k`` window."""
        return self.nat_stride * self.nat_kernel

    def validate(self) -> TSJNetConfig:
        n = len(self.nat_dims)
        if not (len(self.nat_depths) == len(self.nat_heads) == n and n >= 1):
            raise InputError("TSJNet config: nat_dims, nat_depths and nat_heads must have the same length")
        if any(d % h for d, h in zip(self.nat_dims, self.nat_heads)):
            raise InputError("TSJNet config: every NAT dim must be divisible by its number of heads")
        if any(self.nat_dims[i + 1] != 2 * self.nat_dims[i] for i in range(n - 1)):
            raise InputError("TSJNet config: NAT dims must double from level to level (as in NAT)")
        if self.nat_kernel < 1 or self.nat_kernel % 2 == 0:
            raise InputError(f"TSJNet config: nat_kernel must be odd, got {self.nat_kernel}")
        if self.merge not in ("sum", "concat"):
            raise InputError(f"TSJNet config: merge must be 'sum' or 'concat', got '{self.merge}'")
        dec_c = self.channels * (2 if self.merge == "concat" else 1)
        if dec_c % self.dec_heads:
            raise InputError(f"TSJNet config: decoder width {dec_c} is not divisible by dec_heads={self.dec_heads}")
        if self.channels % self.dsm_reduction:
            raise InputError("TSJNet config: the feature width must be divisible by dsm_reduction")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TSJNetConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(
                f"TSJNet config: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})"
            )
        tuples = {f.name for f in fields(cls) if f.name in d and isinstance(d[f.name], list)}
        return cls(**{k: (tuple(v) if k in tuples else v) for k, v in d.items()}).validate()


VARIANTS: dict[str, TSJNetConfig] = {
    "paper": TSJNetConfig(),
    "cpu": TSJNetConfig(
        embed=3,
        stem=(16, 16, 32),
        planes=16,
        blocks=1,
        radix=2,
        enc_convs=(32, 16),
        nat_dims=(48, 96),
        nat_depths=(2, 2),
        nat_heads=(2, 4),
        nat_kernel=3,
        nat_mlp_ratio=2.0,
        nat_mid=32,
        nat_drop_path=0.0,
        dsm_reduction=2,
        dsm_dropout=0.1,
        dec_heads=8,
        dec_in=16,
        dec_stem=(16, 16, 32),
        dec_planes=16,
        dec_hidden=32,
        merge="sum",
    ),
}


# ------------------------------------------------------------------------------------ neighbourhood attention
#: query tile side of :func:`neighborhood_attention_2d` (a tile of ``T×T`` queries attends densely to the
#: ``(T+k-1)²`` keys that hold all its windows). 4 was fastest for k = 3 and 7 on the 2-core CPU (2026-12-07, one
#: thread: 2..8 tried on the NAT maps of a 640×480 pair; 4 cut a ``cpu`` TSJNet forward from 2.84 to 2.53 s of CPU)
NA_TILE = 4


def _na_axis(n: int, ks: int, t: int, device) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One axis of the tiled neighbourhood attention: ``(tiles, key index, mask, rpb index)``.

    Queries ``0..n-1`` are cut into ``tiles = ceil(n/t)`` tiles of ``t`` (the last padded). Tile ``u`` reads the
    ``L = t+k-1`` keys from the window start of its first query: ``key`` (``tiles×L``, absolute indices into the
    keys padded by ``t-1`` at the end) holds every window of its queries, since window starts grow by at most one
    per query. ``mask`` (``tiles×t×L``, bool) says which of them lie in each query's clamped window, ``ridx``
    (``tiles×t×L``) the relative-position-bias index ``key - query + k - 1`` (clamped into range where masked)."""
    tiles = (n + t - 1) // t
    q = torch.arange(tiles * t, device=device)
    start = (q - ks // 2).clamp(min=0).clamp(max=n - ks)  # clamped window start of every (padded) query
    key = start[::t, None] + torch.arange(t + ks - 1, device=device)  # tiles×L
    rel = key[:, None, :] - start.view(tiles, t, 1)  # key - window start
    mask = (rel >= 0) & (rel < ks)
    ridx = (key[:, None, :] - q.view(tiles, t, 1) + ks - 1).clamp(0, 2 * ks - 2)
    return tiles, key, mask, ridx


def neighborhood_attention_2d(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, rpb: torch.Tensor | None = None
) -> torch.Tensor:
    """2-D neighbourhood attention (Hassani et al., NAT, CVPR 2023) in plain PyTorch.

    Every query pixel ``(i, j)`` attends to the ``k×k`` keys of the window centred on it, shifted inwards at the
    borders so that it always holds ``k²`` keys ("clamped" windows: rows ``s_i .. s_i+k-1`` with
    ``s_i = clamp(i - k//2, 0, H - k)``, likewise for columns). The logit of key ``(a, b)`` is
    ``q·k + rpb[h, a - i + k - 1, b - j + k - 1]`` (relative position bias indexed by the key's offset from the
    query, as in natten), followed by a softmax over the window.

    Computed in tiles (no unfolding, no Python loop over pixels): each ``T×T`` tile of queries
    (:data:`NA_TILE`) takes the ``(T+k-1)²`` keys that contain all its windows as two matrix products with the
    keys outside each query's window masked to ``-inf`` (they get exactly zero weight). Index tensors come from
    ``arange`` of the map size, so the function traces to ONNX with dynamic sizes.

    Args:
        q, k, v: ``B×heads×H×W×d`` (``q`` already scaled); ``H, W >= kernel_size``.
        kernel_size: odd window size ``k``.
        rpb: optional relative position bias ``heads×(2k-1)×(2k-1)``.

    Returns:
        ``B×heads×H×W×d``.
    """
    B, nh, H, W, d = q.shape
    ks, t = int(kernel_size), NA_TILE
    if H < ks or W < ks:
        raise InputError(f"neighbourhood attention: a {W}x{H} map is smaller than the {ks}x{ks} window")
    th, key_h, mask_h, ridx_h = _na_axis(H, ks, t, q.device)
    tw, key_w, mask_w, ridx_w = _na_axis(W, ks, t, q.device)
    L = t + ks - 1
    qt = F.pad(q, (0, 0, 0, tw * t - W, 0, th * t - H))
    qt = qt.view(B, nh, th, t, tw, t, d).permute(0, 1, 2, 4, 3, 5, 6).reshape(B, nh, th * tw, t * t, d)

    def region(x: torch.Tensor) -> torch.Tensor:  # B×nh×tiles×L²×d: the keys (values) of every tile
        x = F.pad(x, (0, 0, 0, t - 1, 0, t - 1)).index_select(2, key_h.flatten()).index_select(3, key_w.flatten())
        return x.view(B, nh, th, L, tw, L, d).permute(0, 1, 2, 4, 3, 5, 6).reshape(B, nh, th * tw, L * L, d)

    # additive bias per (head, tile, query, key): rpb inside the window, -inf outside; separable in rows/columns
    zero = torch.zeros((), dtype=q.dtype, device=q.device)
    ninf = torch.full((), float("-inf"), dtype=q.dtype, device=q.device)
    bias = torch.where(mask_h, zero, ninf).view(-1, 1) + torch.where(mask_w, zero, ninf).view(1, -1)
    if rpb is not None:
        bias = bias + rpb.to(q.dtype).index_select(1, ridx_h.flatten()).index_select(2, ridx_w.flatten())
    else:
        bias = bias.expand(nh, -1, -1)
    bias = bias.reshape(nh, th, t, L, tw, t, L).permute(0, 1, 4, 2, 5, 3, 6).reshape(nh, th * tw, t * t, L * L)
    attn = (qt @ region(k).transpose(-1, -2) + bias).softmax(-1)
    out = (attn @ region(v)).view(B, nh, th, tw, t, t, d).permute(0, 1, 2, 4, 3, 5, 6)
    return out.reshape(B, nh, th * t, tw * t, d)[:, :, :H, :W]


class NeighborhoodAttention2d(nn.Module):
    """NAT's neighbourhood-attention layer: qkv projection, :func:`neighborhood_attention_2d` with a learned
    relative position bias ``rpb`` (``heads×(2k-1)×(2k-1)``), output projection. Input/output ``B×H×W×C``."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads, self.kernel_size = num_heads, kernel_size
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        trunc_normal_(self.rpb, std=0.02)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        qkv = self.qkv(x).view(B, H, W, 3, self.num_heads, C // self.num_heads).permute(3, 0, 4, 1, 2, 5)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        out = neighborhood_attention_2d(q, k, v, self.kernel_size, self.rpb)  # B×heads×H×W×d
        return self.proj(out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C))


class _NATLayer(nn.Module):
    """Pre-norm transformer layer: ``x + NA(LN(x))``, then ``x + MLP(LN(x))`` (channels last)."""

    def __init__(self, dim: int, heads: int, kernel: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2d(dim, heads, kernel)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _ConvLN(nn.Module):
    """3×3 stride-2 conv followed by LayerNorm over channels; ``B×H×W×C`` in and out (NAT's down-sampler)."""

    def __init__(self, cin: int, cout: int, bias: bool) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(cin, cout, 3, 2, 1, bias=bias)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


def _up_factors(stride: int) -> list[int]:
    """Transposed-conv factors restoring ``stride`` (32 -> 4, 4, 2 as in the official code)."""
    out = []
    while stride >= 4:
        out.append(4)
        stride //= 4
    if stride == 2:
        out.append(2)
    return out


class NATUNet(nn.Module):
    """The NAT of the base head: ``B×C×H×W`` -> ``B×C×H×W`` (``H, W`` multiples of :attr:`stride`, coarsest map
    ``>= k``).

    Conv tokenizer (3×3 s2 ``C``→``d0/2``, 3×3 s2 →``d0``, LN) → levels of :class:`_NATLayer` with a 3×3 s2 conv
    + LN (no bias) between levels → 3×3 conv ``d_last``→``nat_mid`` (ReLU6) → 3×3 conv →``C`` (ReLU6) →
    transposed convs (no bias, ×4, ×4, ×2 for stride 32) → ReLU6.
    """

    def __init__(self, channels: int, cfg: TSJNetConfig) -> None:
        super().__init__()
        d0 = cfg.nat_dims[0]
        self.kernel, self.stride = cfg.nat_kernel, cfg.nat_stride
        self.tokenizer = nn.Sequential(nn.Conv2d(channels, d0 // 2, 3, 2, 1), nn.Conv2d(d0 // 2, d0, 3, 2, 1))
        self.token_norm = nn.LayerNorm(d0)
        n_layers = sum(cfg.nat_depths)
        dpr = [cfg.nat_drop_path * i / max(1, n_layers - 1) for i in range(n_layers)]  # linspace(0, rate)
        self.levels = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        i0 = 0
        for li, (dim, depth, heads) in enumerate(zip(cfg.nat_dims, cfg.nat_depths, cfg.nat_heads)):
            self.levels.append(
                nn.Sequential(
                    *[_NATLayer(dim, heads, cfg.nat_kernel, cfg.nat_mlp_ratio, dpr[i0 + j]) for j in range(depth)]
                )
            )
            i0 += depth
            if li < len(cfg.nat_dims) - 1:
                self.downsamplers.append(_ConvLN(dim, 2 * dim, bias=False))
        self.conv1 = nn.Conv2d(cfg.nat_dims[-1], cfg.nat_mid, 3, 1, 1)
        self.conv2 = nn.Conv2d(cfg.nat_mid, channels, 3, 1, 1)
        ups = [nn.ConvTranspose2d(channels, channels, f, f, bias=False) for f in _up_factors(self.stride)]
        self.up = nn.Sequential(*ups)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:  # NAT's initialisation of linear layers
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride or min(h, w) < self.stride * self.kernel:
            raise InputError(
                f"NAT input {w}x{h} must be a multiple of {self.stride} and >= {self.stride * self.kernel}"
            )
        t = self.token_norm(self.tokenizer(x).permute(0, 2, 3, 1))  # B×H/4×W/4×d0
        for i, level in enumerate(self.levels):
            t = level(t)
            if i < len(self.downsamplers):
                t = self.downsamplers[i](t)
        y = F.relu6(self.conv1(t.permute(0, 3, 1, 2)))
        y = F.relu6(self.conv2(y))
        return F.relu6(self.up(y))


class _ChannelLN(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a ``B×C×H×W`` map (weight and bias)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class BaseHead(nn.Module):
    """Base-feature head ``x + NAT(LN(x))`` (``B×C×H×W`` in and out); used in the encoder and as the base
    fusion layer ``f_B``."""

    def __init__(self, channels: int, cfg: TSJNetConfig) -> None:
        super().__init__()
        self.norm = _ChannelLN(channels)
        self.nat = NATUNet(channels, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.nat(self.norm(x))


class DSM(nn.Module):
    """Detail salience module (``B×C×H×W`` in and out, ``H, W`` even); the detail head and the detail fusion
    layer ``f_D``.

    ``out = conv1×1(drop(CBR(COA(CBR(x))))) + up(CA(maxpool(a) + avgpool(a)))`` with ``a = LeakyReLU_0.2(conv3×3(x))``,
    ``COA(y) = y + ReLU(conv1×1(y))``, ``CA`` = channel attention (GAP → FC ``C``→``C/r`` → ReLU → FC → sigmoid,
    both FCs without bias) and ``up`` a 2×2 stride-2 transposed conv.
    """

    def __init__(self, channels: int, reduction: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        c = channels

        def cbr() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))

        self.conv_in, self.coa, self.conv_mid = cbr(), nn.Conv2d(c, c, 1), cbr()
        self.conv_out = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(c, c, 1))
        self.conv_pool = nn.Conv2d(c, c, 3, 1, 1)
        self.fc = nn.Sequential(
            nn.Linear(c, c // reduction, bias=False), nn.ReLU(inplace=True), nn.Linear(c // reduction, c, bias=False)
        )
        self.up = nn.ConvTranspose2d(c, c, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # the same with fused convolutions (see conv_fused); dropout is the identity
            y = run_folded(self.conv_in, x)
            y = y + conv_fused(self.coa, y, act=RELU)
            a = conv_fused(self.conv_pool, x, act=act_of(nn.LeakyReLU(0.2)))
            return conv_fused(self.conv_out[1], run_folded(self.conv_mid, y), other=self._pooled(a, x))
        y = self.conv_in(x)
        y = y + F.relu(self.coa(y))  # COA residual
        conv_branch = self.conv_out(self.conv_mid(y))
        return conv_branch + self._pooled(F.leaky_relu(self.conv_pool(x), 0.2), x)

    def _pooled(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = F.max_pool2d(a, 2, 2, ceil_mode=True) + F.avg_pool2d(a, 2, 2, ceil_mode=True)
        w = torch.sigmoid(self.fc(p.mean((2, 3))))[:, :, None, None]
        return self.up(p * w)[..., : x.shape[-2], : x.shape[-1]]


# ------------------------------------------------------------------------------------------ ResNeSt / decoder
# Inference (eval mode) takes a faster path with the same result (max |difference| < 1e-6 on MSRS pairs): each
# BatchNorm2d in eval mode is folded into the convolution before it (the folded weights are recomputed on every
# call, so they never go stale), the activation (and a residual sum) that follows a convolution runs inside it
# (oneDNN post-ops, CPU float32 without autograd: exact), and the maps are kept channels-last (oneDNN's faster
# layout; the NAT's ``B×H×W×C`` permutes are then free). Training mode runs the modules as they are.
# The helpers are in ivfuse.models._fused (shared with TIM).


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def _radix_combine(x: torch.Tensor, att: torch.Tensor, radix: int) -> torch.Tensor:
    """``Σ_r split_r · att_r`` over the ``radix`` channel splits of ``x`` (``att``: ``B×radix·c×1×1``), keeping
    ``x``'s memory format."""
    c = x.shape[1] // radix
    out = x[:, :c] * att[:, :c]
    for r in range(1, radix):
        out = out + x[:, r * c : (r + 1) * c] * att[:, r * c : (r + 1) * c]
    return out


def _timm_bottleneck_eval(blk: ResNestBottleneck, x: torch.Tensor) -> torch.Tensor:
    """timm's :class:`ResNestBottleneck` / ``SplitAttn`` forward for inference (:func:`.conv_fused`; no
    ``contiguous()`` back to NCHW). Only the configuration built here (no avd, drop block or drop path)."""
    out = conv_fused(blk.conv1, x, blk.bn1, RELU)
    sa = blk.conv2
    y = conv_fused(sa.conv, out, sa.bn0, RELU)
    B, rc = y.shape[:2]
    r = sa.radix
    gap = y.mean((2, 3), keepdim=True)
    if r > 1:  # mean of the sum of the radix splits = sum of their means
        gap = gap.view(B, r, rc // r, 1, 1).sum(1)
    att = sa.rsoftmax(sa.fc2(sa.act1(sa.bn1(sa.fc1(gap))))).view(B, -1, 1, 1)
    out = _radix_combine(y, att, r) if r > 1 else y * att
    shortcut = x if blk.downsample is None else run_folded(blk.downsample, x)
    return conv_fused(blk.conv3, out, blk.bn3, RELU, other=shortcut)


def _fast_bottleneck(blk: nn.Module) -> bool:
    if isinstance(blk, _BottleneckOfficial):
        return True
    return (
        isinstance(blk, ResNestBottleneck)
        and blk.avd_first is None
        and blk.avd_last is None
        and blk.drop_path is None
        and isinstance(blk.bn2, nn.Identity)
        and isinstance(blk.drop_block, nn.Identity)
    )


class _SplitAttnOfficial(nn.Module):
    """The official code's split attention (radix ``r``): grouped 3×3 conv ``c → r·c`` (bias) + BN + ReLU; the radix
    splits are summed, pooled, and 1×1 ``c → max(32, r·c/4)`` + BN + ReLU, 1×1 ``→ r·c`` + BN + ReLU (both convs
    without bias), softmax over the radix; output ``Σ split · attention``. (timm's, used by the ivfuse layout, has
    conv biases on the two 1×1 convs instead of the last BN + ReLU.)"""

    def __init__(self, c: int, radix: int) -> None:
        super().__init__()
        self.radix = radix
        inter = max(32, c * radix // 4)
        self.radix_conv = nn.Sequential(
            nn.Conv2d(c, c * radix, 3, 1, 1, groups=radix), nn.BatchNorm2d(c * radix), nn.ReLU(inplace=True)
        )
        self.fc1 = nn.Sequential(nn.Conv2d(c, inter, 1, bias=False), nn.BatchNorm2d(inter), nn.ReLU(inplace=True))
        self.fc2 = nn.Sequential(
            nn.Conv2d(inter, c * radix, 1, bias=False), nn.BatchNorm2d(c * radix), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            x = run_folded(self.radix_conv, x)
            b, rc = x.shape[:2]
            gap = x.mean((2, 3), keepdim=True).view(b, self.radix, rc // self.radix, 1, 1).sum(1)
            att = run_folded(self.fc2, run_folded(self.fc1, gap))
            att = att.view(b, 1, self.radix, -1).transpose(1, 2).softmax(1).reshape(b, -1, 1, 1)
            return _radix_combine(x, att, self.radix)
        x = self.radix_conv(x)
        b, rc = x.shape[:2]
        splits = torch.split(x, rc // self.radix, 1)
        att = self.fc2(self.fc1(F.adaptive_avg_pool2d(sum(splits), 1)))
        att = att.view(b, 1, self.radix, -1).transpose(1, 2).softmax(1).reshape(b, -1, 1, 1)
        return sum(sp * a for sp, a in zip(splits, torch.split(att, rc // self.radix, 1)))


class _BottleneckOfficial(nn.Module):
    """The official code's split-attention bottleneck: 1×1 conv (bias) + BN + ReLU → :class:`_SplitAttnOfficial`
    → 1×1 conv (bias) + BN, plus the shortcut, ReLU."""

    def __init__(self, cin: int, planes: int, radix: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(cin, planes, 1), nn.BatchNorm2d(planes), nn.ReLU(inplace=True))
        self.conv2 = _SplitAttnOfficial(planes, radix)
        self.conv3 = nn.Sequential(nn.Conv2d(planes, 4 * planes, 1), nn.BatchNorm2d(4 * planes))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            shortcut = x if self.downsample is None else run_folded(self.downsample, x)
            conv3, bn3 = self.conv3
            return conv_fused(conv3, self.conv2(run_folded(self.conv1, x)), bn3, RELU, other=shortcut)
        out = self.conv3(self.conv2(self.conv1(x)))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNeStBlock(nn.Module):
    """ResNeSt block at full resolution: deep stem (three 3×3 conv-BN-ReLU, stride 1) and ``blocks``
    split-attention bottlenecks (timm :class:`~timm.models.resnest.ResNestBottleneck`, radix ``radix``, output
    ``4 * planes``). The projection shortcut of the first bottleneck is a 3×3 stride-1 max-pool + 1×1 conv + BN,
    as in the official code. ``B×cin×H×W`` -> ``B×4·planes×H×W``."""

    def __init__(
        self, cin: int, stem: tuple[int, int, int], planes: int, blocks: int, radix: int, layout: str = "ivfuse"
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = cin
        for s in stem:
            layers += [nn.Conv2d(c, s, 3, 1, 1), nn.BatchNorm2d(s), nn.ReLU(inplace=True)]
            c = s
        self.stem = nn.Sequential(*layers)
        out = 4 * planes
        bl = []
        for _ in range(blocks):
            down = None
            if c != out:
                down = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, out, 1, bias=False), nn.BatchNorm2d(out))
            if layout == "official":
                bl.append(_BottleneckOfficial(c, planes, radix, down))
            else:
                bl.append(ResNestBottleneck(c, planes, radix=radix, base_width=64, cardinality=1, downsample=down))
            c = out
        self.blocks = nn.Sequential(*bl)
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.blocks(self.stem(x))
        x = run_folded(self.stem, _channels_last(x))
        for blk in self.blocks:
            x = (
                _timm_bottleneck_eval(blk, x)
                if isinstance(blk, ResNestBottleneck) and _fast_bottleneck(blk)
                else blk(x)
            )
        return x


class SpatialAttention(nn.Module):
    """Multi-head spatial attention: the channels are split into ``heads`` groups; group ``h`` is multiplied by
    ``A_h = sigmoid(conv1×1(group_h))`` (one map per head). Returns ``(x * A, A)``, ``A``: ``B×heads×H×W``."""

    def __init__(self, channels: int, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.conv = nn.Conv2d(channels, heads, 1, groups=heads)  # = one 1×1 conv per head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        att = torch.sigmoid(self.conv(x)) if self.training else conv_fused(self.conv, x, act=SIGMOID)
        B, C, H, W = x.shape
        y = (x.reshape(B, self.heads, C // self.heads, H, W) * att[:, :, None]).reshape(B, C, H, W)
        return y, att


class TSJEncoder(nn.Module):
    """Shared encoder E: ``B×1×H×W`` -> ``(B, D)``, each ``B×C×H×W``."""

    def __init__(self, cfg: TSJNetConfig, layout: str = "ivfuse") -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, cfg.embed, 3, 1, 1, bias=False)
        self.resnest = ResNeStBlock(cfg.embed, cfg.stem, cfg.planes, cfg.blocks, cfg.radix, layout)
        convs: list[nn.Module] = []
        c = self.resnest.out_channels
        for o in cfg.enc_convs:
            convs += [nn.Conv2d(c, o, 3, 1, 1), nn.ReLU6(inplace=True)]
            c = o
        self.convs = nn.Sequential(*convs)
        self.base = BaseHead(c, cfg)
        self.detail = DSM(c, cfg.dsm_reduction, cfg.dsm_dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(x)
        if self.training:
            f = self.convs(self.resnest(x))
        else:  # channels-last from here on, fused convolutions (see the ResNeSt section)
            f = run_folded(self.convs, self.resnest(_channels_last(x)))
        return self.base(f), self.detail(f)


class TSJDecoder(nn.Module):
    """Decoder G: ``(B, D)`` (``B×C×H×W`` each) -> ``(image B×1×H×W in (0, 1), attention A B×heads×H×W)``."""

    def __init__(self, cfg: TSJNetConfig, layout: str = "ivfuse") -> None:
        super().__init__()
        self.merge = cfg.merge
        c = cfg.channels * (2 if cfg.merge == "concat" else 1)
        self.attention = SpatialAttention(c, cfg.dec_heads)
        self.reduce = nn.Conv2d(c, cfg.dec_in, 1, bias=False)
        self.resnest = ResNeStBlock(cfg.dec_in, cfg.dec_stem, cfg.dec_planes, cfg.blocks, cfg.radix, layout)
        self.out = nn.Sequential(
            nn.Conv2d(self.resnest.out_channels, cfg.dec_hidden, 3, 1, 1, bias=False),
            nn.LeakyReLU(),
            nn.Conv2d(cfg.dec_hidden, 1, 3, 1, 1, bias=False),
        )

    def forward(self, base: torch.Tensor, detail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = base + detail if self.merge == "sum" else torch.cat([base, detail], 1)
        if self.training:
            x, att = self.attention(x)
            return torch.sigmoid(self.out(self.resnest(self.reduce(x)))), att
        x, att = self.attention(_channels_last(x))
        h = self.resnest(self.reduce(x))
        conv, act, last = self.out
        return conv_fused(last, conv_fused(conv, h, act=act_of(act)), act=SIGMOID), att


# ------------------------------------------------------------------------------------------------ the network
@dataclass
class TSJNetOutput:
    """Everything the TSJNet losses need (all cropped to the input size ``H×W``).

    Attributes:
        fused: fused image with the visible input's channels (``B×{1,3}×H×W``; RGB = fused Y + visible CbCr).
        fused_y: fused luminance ``F`` (``B×1×H×W``, before clamping; sigmoid output so in (0, 1)).
        ir: infrared input ``I`` (``B×1×H×W``).
        vis_y: visible luminance ``V`` (``B×1×H×W``; BT.601 Y of an RGB input).
        ir_hat / vis_hat: reconstructions ``Î = G(E(I))`` and ``V̂ = G(E(V))`` (``B×1×H×W``).
        attn / attn_ir / attn_vis: decoder spatial-attention maps ``A`` (``B×heads×H×W``) of the fused,
            IR and visible paths.
    """

    fused: torch.Tensor
    fused_y: torch.Tensor
    ir: torch.Tensor
    vis_y: torch.Tensor
    ir_hat: torch.Tensor | None
    vis_hat: torch.Tensor | None
    attn: torch.Tensor
    attn_ir: torch.Tensor | None
    attn_vis: torch.Tensor | None


class TSJNet(FusionModel):
    """TSJNet fusion network (see the module docstring).

    Args:
        variant: ``"paper"`` or ``"cpu"`` (:data:`VARIANTS`), or ``None`` with ``config``.
        config: a :class:`TSJNetConfig` (overrides ``variant``).
        **overrides: single config fields, e.g. ``merge="concat"``.

    ``model(ir, vis)`` -> fused image (``FusionModel`` contract); :meth:`outputs` -> :class:`TSJNetOutput`.
    """

    min_size = 1
    #: the eval path converts its maps itself (``_channels_last``), next to its fused convolutions
    channels_last = False
    #: ``"ivfuse"`` or ``"official"`` (loaded from the authors' file)
    checkpoint_format: str = "ivfuse"

    def __init__(
        self, variant: str | None = "cpu", config: TSJNetConfig | None = None, layout: str = "ivfuse", **overrides: Any
    ) -> None:
        super().__init__()
        if layout not in ("ivfuse", "official"):
            raise InputError(f"TSJNet layout must be 'ivfuse' or 'official', got '{layout}'")
        self.layout = layout
        if config is None:
            if variant not in VARIANTS:
                raise InputError(f"TSJNet variant must be one of {', '.join(VARIANTS)}, got '{variant}'")
            config = VARIANTS[variant]
        if overrides:
            bad = sorted(set(overrides) - {f.name for f in fields(TSJNetConfig)})
            if bad:
                raise InputError(f"TSJNet: unknown option(s) {', '.join(bad)}")
            config = replace(config, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
        self.config = config.validate()
        self.encoder = TSJEncoder(config, layout)
        self.base_fuse = BaseHead(config.channels, config)  # f_B
        self.detail_fuse = DSM(config.channels, config.dsm_reduction, config.dsm_dropout)  # f_D
        self.decoder = TSJDecoder(config, layout)

    # ------------------------------------------------------------------------------------------------ sizes
    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """Size the network runs at: multiples of the NAT stride and at least :attr:`TSJNetConfig.min_side`."""
        m, lo = self.config.nat_stride, self.config.min_side

        def up(n: int) -> int:
            return max(lo, -(-n // m) * m)

        return up(h), up(w)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():  # ONNX export: pad amounts as traced size arithmetic, so any size runs
            m = self.config.nat_stride  # (sides below min_side are not padded up to it in the graph)
            h, w = x.shape[-2], x.shape[-1]
            return F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="replicate")
        H, W = self.padded_size(*x.shape[-2:])
        ph, pw = H - x.shape[-2], W - x.shape[-1]
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    # ---------------------------------------------------------------------------------------------- forward
    #: ``"ivfuse"`` (default) or ``"official"`` (``inference.py``'s 512×512 resizing, min-max and truncation)
    preset: str = "ivfuse"

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        if self.preset != "official":
            return super().forward(ir, vis)
        check_pair(ir, vis, self.min_size, self.name)
        return torch.cat([self._forward_official(ir[b], vis[b]) for b in range(ir.shape[0])])

    def _forward_official(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        """``preset="official"`` for one pair (``1×H×W``, ``{1,3}×H×W``), as ``inference.py`` + ``img_read_save.py``
        do it: gray = ``np.round(cv2.cvtColor(BGR float32, COLOR_BGR2GRAY))``, ``cv2.resize`` to 512×512
        (``INTER_LINEAR``, aspect not kept), /255; ``F = G(f_B(B_I + B_V), f_D(D_I + D_V))``; min-max over the
        output, ×255, ``cv2.resize`` back to ``W×H`` on the float map, ``astype(uint8)`` (truncation). Gray
        ``1×1×H×W`` (values k/255). Not checked against official outputs (NATTEN could not be built)."""
        import cv2
        import numpy as np

        from .official import to_u8

        dev = next(self.parameters()).device
        h, w = ir.shape[-2:]

        def gray(x: torch.Tensor) -> torch.Tensor:
            u8 = to_u8(x if x.shape[0] == 3 else x[0]).astype(np.float32)
            g = np.round(cv2.cvtColor(np.ascontiguousarray(u8[..., ::-1]), cv2.COLOR_BGR2GRAY)) if u8.ndim == 3 else u8
            g = cv2.resize(g, OFFICIAL_SIZE) / np.float32(255.0)
            return torch.from_numpy(np.ascontiguousarray(g, dtype=np.float32))[None, None].to(dev)

        f = self.fuse_luma(gray(ir), gray(vis))
        f = (f - f.min()) / (f.max() - f.min())
        fi = cv2.resize(np.ascontiguousarray((f * 255)[0, 0].detach().float().cpu().numpy()), (w, h)).astype(np.uint8)
        return torch.from_numpy(fi).float().div(255)[None, None].to(ir.device)

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``B×1×H×W`` IR and visible luminance -> fused luminance ``F`` (``B×1×H×W``)."""
        h, w = ir.shape[-2:]
        (b_i, b_v), (d_i, d_v) = self._encode(ir, y)
        f, _ = self.decoder(self.base_fuse(b_i + b_v), self.detail_fuse(d_i + d_v))
        return f[..., :h, :w]

    def _encode(self, ir: torch.Tensor, y: torch.Tensor):
        """Shared encoder on the stacked batch ``[I; V]`` (one pass; batch-norm statistics over both modalities)
        -> ``((B_I, B_V), (D_I, D_V))``."""
        base, detail = self.encoder(self._pad(torch.cat([ir, y], 0)))
        return base.chunk(2, 0), detail.chunk(2, 0)

    def outputs(self, ir: torch.Tensor, vis: torch.Tensor, reconstruct: bool = True) -> TSJNetOutput:
        """All intermediate outputs for the losses: fused image and ``F``, ``Î``, ``V̂`` and the decoder attention.

        Args:
            ir: ``B×1×H×W`` in [0, 1].
            vis: ``B×1×H×W`` or ``B×3×H×W`` (RGB) in [0, 1]; RGB is fused through its BT.601 luminance.
            reconstruct: also decode ``Î`` and ``V̂`` (needed by ``L_MFF``; two extra decoder passes).
        """
        check_pair(ir, vis, self.min_size, self.name)
        h, w = ir.shape[-2:]
        ycc = rgb_to_ycbcr(vis) if vis.shape[1] == 3 else None
        vy = ycc[:, :1] if ycc is not None else vis
        (b_i, b_v), (d_i, d_v) = self._encode(ir, vy)
        b_f, d_f = self.base_fuse(b_i + b_v), self.detail_fuse(d_i + d_v)
        ir_hat = vis_hat = att_i = att_v = None
        if reconstruct:  # G on the stacked batch [fused; I; V] (one pass, shared weights)
            img, att = self.decoder(torch.cat([b_f, b_i, b_v], 0), torch.cat([d_f, d_i, d_v], 0))
            (f, ir_hat, vis_hat), (att, att_i, att_v) = img[..., :h, :w].chunk(3, 0), att[..., :h, :w].chunk(3, 0)
        else:
            f, att = self.decoder(b_f, d_f)
            f, att = f[..., :h, :w], att[..., :h, :w]
        fy = f.clamp(0, 1)
        fused = fy if ycc is None else ycbcr_to_rgb(torch.cat([fy, ycc[:, 1:]], 1)).clamp(0, 1)
        return TSJNetOutput(fused, f, ir, vy, ir_hat, vis_hat, att, att_i, att_v)

    # ------------------------------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        """Write the weights as safetensors with the configuration in the metadata (atomically)."""
        from safetensors.torch import save

        from ..utils import atomic_write_bytes

        meta = {"config": self.config.to_json(), "method": "tsjnet", **(metadata or {})}
        sd = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        return atomic_write_bytes(path, save(sd, metadata=meta))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> TSJNet:
        """Load ``.safetensors`` written by :meth:`save`, a ``torch.save``-d ``{"state_dict", "config"}``
        (:func:`~ivfuse.models.base.load_state`), or the
        authors' file (``{"DIDF_Encoder", "DIDF_Decoder", "BaseFuseLayer", "DetailFuseLayer"}``, each a state
        dict; see :func:`official_state_dict`). Any other file is a one-line :class:`InputError`."""
        from .official import is_state_dict, not_weights_error

        sd, cfg, _, kind = load_state(path, "TSJNet")
        official = kind == "raw" and isinstance(sd, dict) and set(sd) == set(OFFICIAL_PARTS)
        if official and all(map(is_state_dict, sd.values())):
            return cls.from_official_state(sd, path)
        if not isinstance(cfg, dict):
            raise not_weights_error(
                path,
                "TSJNet",
                "an ivfuse TSJNet export (.safetensors, TSJNet.save) or "
                "{state_dict, config}, or the official TSJNet checkpoint ({DIDF_Encoder, DIDF_Decoder, "
                "BaseFuseLayer, DetailFuseLayer})",
            )
        return load_checked(cls(variant=None, config=TSJNetConfig.from_dict(cfg)), sd, path, "TSJNet")

    @classmethod
    def from_official_state(
        cls, parts: dict[str, dict[str, torch.Tensor]], path: str | os.PathLike = "<state>"
    ) -> TSJNet:
        """The official container (four state dicts) -> TSJNet in the ``"official"`` layout of the paper
        configuration with ``merge="concat"`` (what ``inference.py`` builds), strictly through :data:`OFFICIAL_KEYS`.

        NATTEN layouts: 0.14 / 0.15 (``NeighborhoodAttention2D(bias=True)``: ``*.attn.rpb`` present, loaded into
        ``rpb``) and 0.17 (``rel_pos_bias=False`` by default: no ``rpb`` keys; attention without a positional bias
        is attention with ``rpb = 0``, so ivfuse's ``rpb`` is set to zeros). A file with only some ``rpb`` keys is
        refused. (NATTEN >= 0.20 cannot build the official class at all.)"""
        flat = {f"{part}.{k}": v for part in OFFICIAL_PARTS for k, v in parts[part].items()}
        model = cls(variant="paper", merge="concat", layout="official")
        n_rpb = sum(k.endswith(".attn.rpb") for k in flat)
        want_rpb = [k for k in model.state_dict() if k.endswith(".attn.rpb")]
        if n_rpb == 0:  # NATTEN 0.17 layout
            flat.update({f"__zero__.{k}": torch.zeros_like(model.state_dict()[k]) for k in want_rpb})
        elif n_rpb != len(want_rpb):
            raise InputError(
                f"{path}: the official TSJNet file has {n_rpb} of the {len(want_rpb)} 'rpb' tensors "
                "(NATTEN 0.14/0.15 files have all, 0.17 files none)"
            )
        model.checkpoint_format = "official"
        return OFFICIAL_KEYS.load(model, flat, path)


#: ``inference.py`` resizes both inputs to this (width, height)
OFFICIAL_SIZE = (512, 512)

#: the four state dicts of the official checkpoint (``inference.py``: ``Encoder.load_state_dict(ckpt['DIDF_Encoder'])``
#: etc.), flattened as ``<part>.<key>`` for :data:`OFFICIAL_KEYS`
OFFICIAL_PARTS = ("DIDF_Encoder", "DIDF_Decoder", "BaseFuseLayer", "DetailFuseLayer")

_UNUSED = "built by the official class but never used by its forward"

#: official ``Restormer_Encoder`` / ``Restormer_Decoder(128, 512, 32)`` / ``BaseFeatureExtraction(64, 8)`` /
#: ``DetailFeatureExtraction(64)`` -> :class:`TSJNet` (paper configuration, ``merge="concat"``, ``layout="official"``).
#: Rewrites in order; ``name[i]`` stacks the decoder's eight per-head 1×1 convs into one grouped conv. Dropped (not
#: used by the official forward): the NAT's ``norm``, ``avgpool`` (a 1×1 conv) and ``conv_head``, and the DSM's
#: ``spa`` (its call is commented out).
OFFICIAL_KEYS = KeyTable(
    "TSJNet",
    rules=(
        (r"^__zero__\.", ""),  # NATTEN 0.17 files: zero relative position bias (see from_official_state)
        (r"^DIDF_Decoder\.spa\.conv\.(\d+)\.(weight|bias)$", r"decoder.attention.conv.\2[\1]"),
        (r"^DIDF_Decoder\.reduce_channel\.", "decoder.reduce."),
        (r"^DIDF_Decoder\.output\.", "decoder.out."),
        (r"^DIDF_Decoder\.ResNest\.", "decoder.resnest."),
        (r"^DIDF_Encoder\.patch_embed\.proj\.", "encoder.embed."),
        (r"^DIDF_Encoder\.ResNest\.", "encoder.resnest."),
        (r"^DIDF_Encoder\.conv([123])\.0\.", lambda m: f"encoder.convs.{2 * (int(m.group(1)) - 1)}."),
        (r"^DIDF_Encoder\.baseFeature\.", "encoder.base."),
        (r"^DIDF_Encoder\.detailFeature\.", "encoder.detail."),
        (r"^BaseFuseLayer\.", "base_fuse."),
        (r"^DetailFuseLayer\.", "detail_fuse."),
        # ResNeSt blocks
        (r"\.resnest\.deep_stem\.", ".resnest.stem."),
        (r"\.resnest\.layer1\.", ".resnest.blocks."),
        (r"(\.resnest\.blocks\.\d+)\.shortcut\.", r"\1.downsample."),
        # base head: LayerNorm + NAT
        (r"\.norm1\.body\.", ".norm."),
        (r"(base|base_fuse)\.attn\.", r"\1.nat."),
        (r"\.nat\.patch_embed\.proj\.", ".nat.tokenizer."),
        (r"\.nat\.patch_embed\.norm\.", ".nat.token_norm."),
        (r"\.nat\.levels\.(\d+)\.blocks\.(\d+)\.", r".nat.levels.\1.\2."),
        (r"\.nat\.levels\.(\d+)\.downsample\.", r".nat.downsamplers.\1."),
        (r"\.nat\.conv([12])\.0\.", r".nat.conv\1."),
        (r"\.nat\.transposed_conv([123])\.", lambda m: f".nat.up.{int(m.group(1)) - 1}."),
        # detail salience module
        (r"(detail|detail_fuse)\.convp1\.", r"\1.conv_in."),
        (r"(detail|detail_fuse)\.coa\.conv\.0\.", r"\1.coa."),
        (r"(detail|detail_fuse)\.convp2\.", r"\1.conv_mid."),
        (r"(detail|detail_fuse)\.conv1\.", r"\1.conv_out."),
        (r"(detail|detail_fuse)\.conv4\.", r"\1.conv_pool."),
        (r"(detail|detail_fuse)\.conv_transpose\.", r"\1.up."),
        (r"(detail|detail_fuse)\.fc1\.", r"\1.fc.0."),
        (r"(detail|detail_fuse)\.fc2\.", r"\1.fc.2."),
    ),
    dropped=(
        (r"(DIDF_Encoder\.baseFeature|BaseFuseLayer)\.attn\.(norm|avgpool|conv_head)\.(weight|bias)", _UNUSED),
        (r"(DIDF_Encoder\.detailFeature|DetailFuseLayer)\.spa\.conv\.\d+\.(weight|bias)", _UNUSED),
    ),
)


@register_model("tsjnet", default_weights="tsjnet_default.safetensors")
def tsjnet(
    weights: str | os.PathLike | None = "default",
    variant: str = "cpu",
    random_init: bool = False,
    preset: str = "ivfuse",
    **overrides: Any,
) -> TSJNet:
    """TSJNet (Jie et al., arXiv 2402.01212). Default: ivfuse's trained CPU-scale model shipped in the package
    (``weights/tsjnet_default.safetensors``, trained by ``ivfuse train tsjnet preset=cpu``; see docs/tsjnet.md);
    ``weights=FILE`` loads another checkpoint; ``weights=None`` builds an untrained network (``variant="cpu"|"paper"``,
    config ``overrides``) for training code (``random_init=True`` is accepted and no longer needed)."""
    from .official import apply_official_preset, check_preset

    check_preset(preset, "tsjnet")
    if preset == "official" and (weights is None or weights == "default"):
        raise InputError(
            "tsjnet: preset='official' reproduces inference.py with the authors' network: pass their "
            "checkpoint (weights=TSJNet.pth)"
        )
    path = resolve_weights("tsjnet", weights)
    if path is None:
        return TSJNet(variant=variant, **overrides)
    if random_init:
        raise InputError("TSJNet: random_init=True builds an untrained network, so it takes weights=None, not a file")
    if overrides:
        raise InputError(f"TSJNet: options {', '.join(sorted(overrides))} cannot be combined with a weights file")
    model = TSJNet.from_checkpoint(path)
    return apply_official_preset(model, preset, "tsjnet", "inference.py", "TSJNet.pth")

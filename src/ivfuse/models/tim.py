"""TIM (Liu, Liu, Liu, Fan, Luo, TPAMI 2024, arXiv 2305.15862): search space, supernet and derived network.

Layout (facts from the official inference code, ``model/model_searched.py`` / ``operations.py``; written anew):

* **Stage 1** (``Network_Fusion9_Meta``-like, ``C = 48``): stem ``cat(IR, Y) → 3×3 2→2C → PReLU → 3×3 2C→C →
  PReLU`` (reflection padding), then a list of cells, then the head ``3×3 C→C → PReLU → 3×3 C→C/2 → 1×1 →1``.
  The shipped IVIF genotype has a *multi-scale fusion cell* and a *chain cell*:

  - fusion cell: ``ReLU-1×1-BN`` preprocessing, three scales (C at H, 2C at H/2, 4C at H/4) made by anti-aliased
    residual down-sampling (timm ``BlurPool2d``), the cell's two searched operations applied in sequence at every
    scale, residual up-sampling (transposed conv + bilinear branches) back to C, selective-kernel fusion of the three
    branches (timm ``SelectiveKernelAttn``) and a residual connection to the preprocessed input;
  - chain cell: ``ReLU-1×1-BN`` preprocessing followed by its two searched operations.

* **Stage 2** (``Network_Fusion9_3``-like): two branches, ``cat(IR, stage-1 output)`` and ``cat(Y, stage-1
  output)``, each a stem (``2→2C→C`` with BN) and two chain cells (attention operations in the shipped genotype); a
  learned spatial mask ``m = σ(1×1([max_c, mean_c](F_vis)))`` mixes them, ``m·F_vis + (1-m)·F_ir``, and a head
  ``3×3 C→C → 3×3 C→C/2 → 1×1 → 1`` gives the fused luminance. Auxiliary heads reconstruct one image per branch
  (used by training losses only; returned by :meth:`TIMNet.forward_train`). The official test script calls stage 2
  as ``model_2(vis, ir, fused)``, so in the released model the mask is computed from the *visible* branch and the
  ``fusion_ir_proposed`` cells process the infrared image; ivfuse names branches by the data they see, accordingly.

Parameter counts (``width=48``): shipped IVIF genotype 1,232,232 (official 1,232,225; +8 from the BN that timm's CBAM
spatial attention puts on its 1-channel map, -1 as timm's selective-kernel attention uses ReLU instead of PReLU),
light variant (stage 1 only, two chain cells) 127,358 (official 127,358).

Search space: every cell has two operation slots; an operation is one of :data:`OPS` (names ``res_k3_d1`` = residual
block with depth-wise k×k conv of dilation d, ``dense_k3_d1`` = residual dense block, ``dil_k3_d2`` = dilated
depth-wise conv, ``sep_k3_d1`` = separable conv, ``eca_k3`` = ECA channel attention, ``spa_k3`` = CBAM spatial
attention, ``nonlocal`` = non-local attention). :class:`TIMSupernet` replaces each slot by a mixed operation weighted
by ``softmax(α)`` (one α row per slot, shared by the three scales of a fusion cell) and :meth:`TIMSupernet.derive`
returns the arg-max genotype (a JSON-able dict, see :func:`load_genotype`).

Colour and inputs (deviations from the official scripts, which read the *blue* channel of the BGR image as gray,
swap the (IR, VIS) order between stage 1 and stage 2 and between scripts, leave stage 2's BN in train mode at test
time and drop the colour): ivfuse fuses IR with the visible luminance Y (BT.601, kornia) in ``(ir, vis)`` order
everywhere and restores Cb/Cr (:class:`~ivfuse.models.base.FusionModel`); :func:`create_model` returns the model in
eval mode; weights load strictly. H and W are reflect-padded to multiples of 4 and cropped back.

The authors' checkpoints (``weights_1_*.pt`` [+ ``weights_2_*.pt``]) load through :data:`OFFICIAL_KEYS` into the
``layout="official"`` network (their spatial attention, selective-kernel fusion, dense-block scale and stage-2 mask,
where ivfuse's own models use timm's modules); ``preset="official"`` reproduces their test scripts
(:meth:`TIMNet._forward_official`; ``docs/tim.md``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import BlurPool2d, EcaModule, NonLocalAttn
from timm.layers.cbam import SpatialAttn
from timm.layers.selective_kernel import SelectiveKernelAttn
from torch import nn

from ..errors import InputError
from ._fused import FoldedSequential, act_of, conv_fused
from .base import FusionModel, check_pair, load_checked, load_state, register_model, resolve_weights
from .official import KeyTable, apply_official_preset, batch_stat_norms, check_preset, is_state_dict, not_weights_error

__all__ = [
    "OPS",
    "DEFAULT_CANDIDATES",
    "GENOTYPE_FORMAT",
    "make_op",
    "op_cost",
    "MixedOp",
    "FusionCell",
    "ChainCell",
    "TIMNet",
    "TIMSupernet",
    "load_genotype",
    "validate_genotype",
    "save_genotype",
]

GENOTYPE_FORMAT = "ivfuse-tim-genotype/1"

# ---------------------------------------------------------------------------------------------- operations
_CONV_OP = re.compile(r"^(res|dense|dil|sep)_k([357])_d([12])$")
_ATT_OP = re.compile(r"^(eca|spa)_k([357])$")

#: every operation name the library builds (``make_op``); ``nonlocal`` costs O((HW)²) memory.
OPS: tuple[str, ...] = tuple(
    [f"{b}_k{k}_d{d}" for b in ("res", "dense", "dil", "sep") for k in (3, 5) for d in (1, 2)]
    + [f"{b}_k{k}" for b in ("eca", "spa") for k in (3, 5)]
    + ["nonlocal"]
)

#: the supernet's default candidate set: the operations that occur in the official searched genotypes plus their
#: 5×5 / dilated siblings (non-local attention is in the library but not a default candidate: its attention matrix
#: is (HW)² and the search runs on whole crops).
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "res_k3_d1",
    "res_k3_d2",
    "res_k5_d1",
    "dense_k3_d1",
    "dense_k5_d1",
    "dil_k3_d2",
    "dil_k5_d2",
    "sep_k3_d1",
    "sep_k5_d1",
    "eca_k3",
    "spa_k3",
)


def _dw(c: int, k: int, d: int) -> nn.Conv2d:
    """Depth-wise k×k conv with dilation d, 'same' zero padding."""
    return nn.Conv2d(c, c, k, padding=d * (k - 1) // 2, dilation=d, groups=c, bias=False)


class _Residual(nn.Module):
    """``x + body(x)``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _res_block(c: int, k: int, d: int) -> nn.Module:
    """Residual block: DW k×k (dil d) → DW 3×3 (dil 2) → 1×1 → BN → PReLU, plus identity."""
    body = FoldedSequential(_dw(c, k, d), _dw(c, 3, 2), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.PReLU())
    return _Residual(body)


class _DenseBlock(nn.Module):
    """Residual dense block with grouped convolutions: x1 = σ(g1(x)), x2 = σ(g2([x, x1])), x3 = σ(g3([x, x1, x2]));
    out = x + x3 / 3 (``g_i`` are k×k convs of dilation d with C groups, σ a shared PReLU)."""

    #: ``None``: ``x + x3 / 3``; a number s: ``x3 · s + x`` (the official block multiplies by 0.333)
    scale: float | None = None

    def __init__(self, c: int, k: int, d: int) -> None:
        super().__init__()
        p = d * (k - 1) // 2
        self.convs = nn.ModuleList(
            nn.Conv2d(c * i, c, k, padding=p, dilation=d, groups=c, bias=False) for i in (1, 2, 3)
        )
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        act = None if self.training else act_of(self.act)  # eval: the PReLU runs inside the convolution
        for conv in self.convs:
            x_in = torch.cat(feats, 1)
            feats.append(conv_fused(conv, x_in, act=act) if act else self.act(conv(x_in)))
        if self.scale is not None:
            return feats[-1] * self.scale + x
        return x + feats[-1] / 3


class _SpatialAttnOfficial(nn.Module):
    """Official-layout spatial attention: ``x · σ(conv_k×k([max_c x, mean_c x]))``, no bias, no norm (timm's CBAM
    module, used by the ivfuse layout, pools (mean, max) and normalises the map)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)))


class _SKOfficial(nn.Module):
    """Official-layout selective-kernel attention over ``B×3×C×H×W`` branches: GAP of their sum → 1×1 C→d →
    PReLU → three 1×1 d→C → softmax over the branches (timm's, used by the ivfuse layout, has a ReLU and one
    fused 1×1 d→3C)."""

    def __init__(self, c: int, paths: int = 3) -> None:
        super().__init__()
        d = max(c // 8, 4)
        self.reduce = FoldedSequential(nn.Conv2d(c, d, 1, bias=False), nn.PReLU())
        self.select = nn.ModuleList(nn.Conv2d(d, c, 1, bias=False) for _ in range(paths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.reduce(x.sum(1).mean((2, 3), keepdim=True))
        return torch.stack([fc(z) for fc in self.select], 1).softmax(1)


class _MaskOfficial(nn.Module):
    """Official stage-2 mask logits: ``conv_1×1([max_c, max_c, mean_c])`` (3 → 1, no bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mx = x.amax(1, keepdim=True)
        return self.conv(torch.cat([mx, mx, x.mean(1, keepdim=True)], 1))


def _dil_conv(c: int, k: int, d: int) -> nn.Module:
    """Dilated conv: ReLU → DW k×k (dil d) → 1×1 → BN, plus identity."""
    return _Residual(FoldedSequential(nn.ReLU(), _dw(c, k, d), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)))


def _sep_conv(c: int, k: int, d: int) -> nn.Module:
    """Separable conv (DARTS style): twice ReLU → DW k×k (dil d) → 1×1 → BN. (The official op passes the dilation
    as the *stride* and pads by 1 whatever k is, which changes the size for k=5 or d=2; here sizes are kept.)"""
    return FoldedSequential(
        nn.ReLU(),
        _dw(c, k, d),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        _dw(c, k, d),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c),
    )


def _eca_op(c: int, k: int) -> nn.Module:
    """ECA channel attention (timm, 1-D kernel k) → 3×3 conv → PReLU."""
    return FoldedSequential(EcaModule(c, kernel_size=k), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.PReLU())


class _NonLocalOp(nn.Module):
    """3×3 conv → PReLU → non-local attention (timm, residual inside) + the conv output → k×k conv → PReLU."""

    def __init__(self, c: int, k: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.act1 = nn.PReLU()
        self.nl = NonLocalAttn(c)
        self.conv2 = nn.Conv2d(c, c, k, padding=k // 2, bias=False)
        self.act2 = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        return self.act2(self.conv2(self.nl(self.act1(x1)) + x1))


#: network layouts: ``"ivfuse"`` (timm attention modules; ivfuse's own trained models) and ``"official"`` (the
#: authors' modules, for their checkpoints: see :data:`OFFICIAL_KEYS`)
LAYOUTS = ("ivfuse", "official")


def make_op(name: str, c: int, layout: str = "ivfuse") -> nn.Module:
    """Build the operation ``name`` (one of :data:`OPS`) for ``c`` channels; output size = input size.
    ``layout="official"`` builds the authors' variants of ``dense_*`` (×0.333) and ``spa_*`` (no norm)."""
    m = _CONV_OP.match(name)
    if m:
        kind, k, d = m.group(1), int(m.group(2)), int(m.group(3))
        if kind == "res":
            return _res_block(c, k, d)
        if kind == "dense":
            blk = _DenseBlock(c, k, d)
            if layout == "official":
                blk.scale = 0.333
            return blk
        return _dil_conv(c, k, d) if kind == "dil" else _sep_conv(c, k, d)
    m = _ATT_OP.match(name)
    if m:
        if m.group(1) == "eca":
            return _eca_op(c, int(m.group(2)))
        return (
            _SpatialAttnOfficial(int(m.group(2))) if layout == "official" else SpatialAttn(kernel_size=int(m.group(2)))
        )
    if name == "nonlocal":
        return _NonLocalOp(c)
    raise InputError(f"unknown TIM operation '{name}' (known: {', '.join(OPS)})")


def op_cost(name: str, c: int) -> float:
    """Cost proxy of an operation: multiply-accumulates per output pixel of its convolutions at ``c`` channels (the
    weight count of every stride-1 conv; the O(HW) non-local product is not included). Used by the latency penalty."""
    return float(sum(p.numel() for n, p in make_op(name, c).named_parameters() if p.ndim >= 3))


class MixedOp(nn.Module):
    """``Σ_i w_i · op_i(x)`` over the candidate operations; the weights ``w`` (a softmax row) come from the cell."""

    def __init__(self, candidates: Sequence[str], c: int) -> None:
        super().__init__()
        self.candidates = tuple(candidates)
        self.ops = nn.ModuleList(make_op(n, c) for n in self.candidates)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return sum(wi * op(x) for wi, op in zip(w, self.ops))


# ---------------------------------------------------------------------------------------------- cells
class _Cell(nn.Module):
    """Common part: preprocessing and (for the supernet) the architecture parameters ``alpha`` (slots × ops)."""

    n_scales = 1

    def __init__(
        self,
        c: int,
        ops: Sequence[str] | None,
        candidates: Sequence[str] | None,
        slots: int = 2,
        layout: str = "ivfuse",
    ) -> None:
        super().__init__()
        if (ops is None) == (candidates is None):
            raise ValueError("give either the cell's operations (derived) or the candidates (supernet)")
        self.preprocess = FoldedSequential(nn.ReLU(), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.candidates = tuple(candidates) if candidates is not None else None
        self.op_names = tuple(ops) if ops is not None else None
        n = slots if ops is None else len(ops)
        if ops is None:
            self.alpha = nn.Parameter(1e-3 * torch.randn(n, len(self.candidates)))
        self.ops = nn.ModuleList(
            nn.ModuleList(
                MixedOp(self.candidates, c * 2**s) if ops is None else make_op(name, c * 2**s, layout)
                for name in (ops if ops is not None else [None] * n)
            )
            for s in range(self.n_scales)
        )

    def _chain(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        if self.op_names is None:
            w = F.softmax(self.alpha, dim=-1)
            for i, op in enumerate(self.ops[scale]):
                x = op(x, w[i])
        else:
            for op in self.ops[scale]:
                x = op(x)
        return x

    def derive(self) -> list[str]:
        """Arg-max operation per slot (supernet cells)."""
        if self.op_names is not None:
            return list(self.op_names)
        return [self.candidates[int(i)] for i in self.alpha.detach().argmax(-1)]


class ChainCell(_Cell):
    """``ReLU-1×1-BN`` then the cell's operations in sequence."""

    kind = "chain"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._chain(self.preprocess(x), 0)


class _ResidualDown(nn.Module):
    """Anti-aliased residual down-sampling C → 2C, ½ size: (1×1-PReLU-3×3-PReLU-blur↓-1×1) + (blur↓-1×1)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.top = FoldedSequential(
            nn.Conv2d(c, c, 1, bias=False),
            nn.PReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.PReLU(),
            BlurPool2d(c, filt_size=3, stride=2),
            nn.Conv2d(c, 2 * c, 1, bias=False),
        )
        self.bot = FoldedSequential(BlurPool2d(c, filt_size=3, stride=2), nn.Conv2d(c, 2 * c, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(x) + self.bot(x)


class _ResidualUp(nn.Module):
    """Residual up-sampling C → C/2, double size: (1×1-PReLU-convT↑-PReLU-1×1) + (bilinear↑-1×1)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.top = FoldedSequential(
            nn.Conv2d(c, c, 1, bias=False),
            nn.PReLU(),
            nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.PReLU(),
            nn.Conv2d(c, c // 2, 1, bias=False),
        )
        self.bot = FoldedSequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(c, c // 2, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(x) + self.bot(x)


class FusionCell(_Cell):
    """Multi-scale fusion cell (scales C, 2C, 4C; the cell's operations chained at each scale; SK fusion; residual)."""

    kind = "fusion"
    n_scales = 3

    def __init__(
        self,
        c: int,
        ops: Sequence[str] | None = None,
        candidates: Sequence[str] | None = None,
        slots: int = 2,
        layout: str = "ivfuse",
    ) -> None:
        super().__init__(c, ops, candidates, slots, layout)
        self.down2 = _ResidualDown(c)
        self.down4 = nn.Sequential(_ResidualDown(c), _ResidualDown(2 * c))
        self.up2 = _ResidualUp(2 * c)
        self.up4 = nn.Sequential(_ResidualUp(4 * c), _ResidualUp(2 * c))
        if layout == "official":
            self.sk = _SKOfficial(c)
        else:
            self.sk = SelectiveKernelAttn(c, num_paths=3, attn_channels=max(c // 8, 4), norm_layer=nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        b0 = self._chain(x, 0)
        b1 = self.up2(self._chain(self.down2(x), 1))
        b2 = self.up4(self._chain(self.down4(x), 2))
        # The attention only needs each branch's global mean (it pools their sum), so it gets B×3×C×1×1 means, not
        # the B×3×C×H×W stack; the weighted sum is written out: stacking channels-last maps and reducing over the
        # stacked dimension was a strided copy and a strided sum (≈ 15 % of a 640×480 forward).
        a = self.sk(torch.stack([b.mean((2, 3), keepdim=True) for b in (b0, b1, b2)], 1))
        return x + b0 * a[:, 0] + b1 * a[:, 1] + b2 * a[:, 2]


_CELLS = {"chain": ChainCell, "fusion": FusionCell}


# ---------------------------------------------------------------------------------------------- genotypes
def validate_genotype(g: Any, where: str = "genotype") -> dict:
    """Check a genotype dict (format :data:`GENOTYPE_FORMAT`); raise :class:`InputError` naming ``where``."""
    if not isinstance(g, dict) or g.get("format") != GENOTYPE_FORMAT:
        raise InputError(f"{where}: not a TIM genotype (expected 'format': '{GENOTYPE_FORMAT}')")

    def cells(lst: Any, part: str) -> None:
        if not isinstance(lst, list) or not lst:
            raise InputError(f"{where}: '{part}' must be a non-empty list of cells")
        for i, cell in enumerate(lst):
            if not isinstance(cell, dict) or cell.get("type") not in _CELLS:
                raise InputError(f"{where}: {part}[{i}] must be a cell with type 'chain' or 'fusion'")
            ops = cell.get("ops")
            if not isinstance(ops, list) or not ops or any(o not in OPS for o in ops):
                raise InputError(f"{where}: {part}[{i}] has unknown or missing ops {ops!r} (known: {', '.join(OPS)})")

    cells(g.get("stage1"), "stage1")
    s2 = g.get("stage2")
    if s2 is not None:
        if not isinstance(s2, dict):
            raise InputError(f"{where}: 'stage2' must be null or {{'ir': [...], 'vis': [...]}}")
        cells(s2.get("ir"), "stage2.ir")
        cells(s2.get("vis"), "stage2.vis")
    return g


def load_genotype(name: str | os.PathLike | dict = "ivif") -> dict:
    """A shipped genotype by name (``ivif``, ``ivif_light``; package files ``genotypes/tim_<name>.json``), a JSON file,
    or a dict (validated)."""
    if isinstance(name, dict):
        return validate_genotype(name)
    p = Path(name)
    if not p.suffix:
        res = resources.files("ivfuse.models") / "genotypes" / f"tim_{name}.json"
        if not res.is_file():
            raise InputError(f"unknown TIM genotype '{name}' (shipped: ivif, ivif_light; or pass a .json file)")
        return validate_genotype(json.loads(res.read_text()), f"tim_{name}.json")
    if not p.is_file():
        raise InputError(f"{p}: TIM genotype file not found")
    try:
        g = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{p}: cannot read the TIM genotype ({e})") from None
    return validate_genotype(g, str(p))


def save_genotype(g: dict, path: str | os.PathLike) -> None:
    """Write a genotype as JSON (atomically)."""
    from ..utils import atomic_write_text

    atomic_write_text(Path(path), json.dumps(validate_genotype(g), indent=1) + "\n")


# ---------------------------------------------------------------------------------------------- networks
class _ReflConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__(nn.ReflectionPad2d(k // 2), nn.Conv2d(cin, cout, k))


def _head(c: int, act: bool = True) -> nn.Sequential:
    mid = [nn.PReLU()] if act else []
    return FoldedSequential(_ReflConv(c, c, 3), *mid, _ReflConv(c, c // 2, 3), nn.Conv2d(c // 2, 1, 1))


def _stem(c: int, bn: bool) -> nn.Sequential:
    norm = [nn.BatchNorm2d(c)] if bn else []
    return FoldedSequential(_ReflConv(2, 2 * c, 3), nn.PReLU(), _ReflConv(2 * c, c, 3), *norm, nn.PReLU())


class _Stage2(nn.Module):
    """Two-branch refinement with a learned mask (see module docstring)."""

    def __init__(
        self, c: int, ir_cells: nn.ModuleList, vis_cells: nn.ModuleList, aux: bool = True, layout: str = "ivfuse"
    ) -> None:
        super().__init__()
        self.stem_ir, self.stem_vis = _stem(c, True), _stem(c, True)
        self.cells_ir, self.cells_vis = ir_cells, vis_cells
        self.mask = _MaskOfficial() if layout == "official" else nn.Conv2d(2, 1, 1)
        self.head = _head(c, act=False)
        self.aux_ir = _head(c) if aux else None
        self.aux_vis = _head(c) if aux else None

    def forward(self, ir: torch.Tensor, y: torch.Tensor, f1: torch.Tensor, aux: bool = True) -> dict[str, torch.Tensor]:
        a = self.stem_ir(torch.cat([ir, f1], 1))
        b = self.stem_vis(torch.cat([y, f1], 1))
        for cell in self.cells_ir:
            a = cell(a)
        for cell in self.cells_vis:
            b = cell(b)
        if isinstance(self.mask, _MaskOfficial):
            m = torch.sigmoid(self.mask(b))
        else:
            m = torch.sigmoid(self.mask(torch.cat([b.amax(1, keepdim=True), b.mean(1, keepdim=True)], 1)))
        out = {"fused": self.head(m * b + (1 - m) * a), "mask": m}
        if aux and self.aux_ir is not None:
            out["aux_ir"] = torch.sigmoid(self.aux_ir(a))
            out["aux_vis"] = torch.sigmoid(self.aux_vis(b))
        return out


class TIMNet(FusionModel):
    """TIM fusion network built from a genotype (derived network) or, in :class:`TIMSupernet`, from mixed ops.

    Args:
        genotype: a genotype dict or name/path (:func:`load_genotype`); default the shipped IVIF genotype.
        width: base channels C (48 = paper).
        aux: build stage 2's per-branch auxiliary heads (training losses; 62k of the 1.23M parameters).
    """

    min_size = 4
    multiple = 4
    #: ``"ivfuse"`` (default) or ``"official"`` (the official test script's inputs and outputs; see
    #: :meth:`_forward_official`)
    preset: str = "ivfuse"
    #: ``"ivfuse"`` or ``"official"`` (loaded from the authors' files)
    checkpoint_format: str = "ivfuse"
    #: order of the stage-1 input channels: ``"ir_vis"`` (ivfuse, official full script) or ``"vis_ir"`` (the
    #: official light script calls ``model_1(vis, ir)``; set for the authors' light checkpoint)
    stage1_order: str = "ir_vis"

    def __init__(
        self,
        genotype: str | os.PathLike | dict = "ivif",
        width: int = 48,
        aux: bool = True,
        _candidates: Sequence[str] | None = None,
        layout: str = "ivfuse",
    ) -> None:
        super().__init__()
        if width < 8 or width % 2:
            raise InputError(f"TIM width must be an even number >= 8, got {width}")
        if layout not in LAYOUTS:
            raise InputError(f"TIM layout must be one of {', '.join(LAYOUTS)}, got '{layout}'")
        g = load_genotype(genotype)
        self.genotype_in = g
        self.width = width
        self.layout = layout

        def build(cells: list[dict]) -> nn.ModuleList:
            mods = []
            for cell in cells:
                cls = _CELLS[cell["type"]]
                if _candidates is None:
                    mods.append(cls(width, cell["ops"], None, layout=layout))
                else:
                    mods.append(cls(width, None, _candidates, len(cell["ops"])))
            return nn.ModuleList(mods)

        self.stem = _stem(width, False)
        self.cells = build(g["stage1"])
        self.head = _head(width)
        s2 = g.get("stage2")
        self.stage2 = _Stage2(width, build(s2["ir"]), build(s2["vis"]), aux, layout) if s2 else None

    # -------------------------------------------------------------------------------------------- forward
    def forward_train(self, ir: torch.Tensor, y: torch.Tensor, aux: bool = True) -> dict[str, torch.Tensor]:
        """All outputs (unclamped, input size): ``stage1``, ``fused`` (final), and with stage 2 ``mask``,
        ``aux_ir``, ``aux_vis``. ``ir`` and ``y`` are ``B×1×H×W``. ``aux=False`` skips the auxiliary heads (two
        full-resolution convolution stacks, ≈ 12 % of the arithmetic), which only the training losses use."""
        h, w = ir.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            ir = F.pad(ir, (0, pw, 0, ph), mode="reflect")
            y = F.pad(y, (0, pw, 0, ph), mode="reflect")
        x = self.stem(torch.cat([y, ir] if self.stage1_order == "vis_ir" else [ir, y], 1))
        for cell in self.cells:
            x = cell(x)
        f1 = self.head(x)
        out = {"stage1": f1, "fused": f1}
        if self.stage2 is not None:
            out.update(self.stage2(ir, y, f1, aux))
        return {k: v[..., :h, :w] for k, v in out.items()}

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_train(ir, y, aux=False)["fused"]

    def genotype(self) -> dict:
        """The network's genotype (for the supernet: the arg-max derivation)."""
        g: dict[str, Any] = {"format": GENOTYPE_FORMAT}
        g["stage1"] = [{"type": c.kind, "ops": c.derive()} for c in self.cells]
        g["stage2"] = None
        if self.stage2 is not None:
            g["stage2"] = {
                "ir": [{"type": c.kind, "ops": c.derive()} for c in self.stage2.cells_ir],
                "vis": [{"type": c.kind, "ops": c.derive()} for c in self.stage2.cells_vis],
            }
        return g

    # -------------------------------------------------------------------------------------------- official preset
    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        if self.preset != "official":
            return super().forward(ir, vis)
        check_pair(ir, vis, self.min_size, self.name)
        return torch.cat([self._forward_official(ir[b : b + 1], vis[b : b + 1]) for b in range(ir.shape[0])])

    def official_inputs(self, ir: torch.Tensor, vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gray images the official scripts read, from ``1×1×H×W`` IR and ``1×{1,3}×H×W`` visible (RGB):
        full (``testFusion.py``): ``cv2.imread(p)[:, :, 0]``, the *blue* channel; light (``testFusion_light.py``):
        ``cv2.imread(p, 0)``, which for PNG files is libpng's ``(9797 R + 19234 G + 3737 B) >> 15``."""

        def gray(x: torch.Tensor) -> torch.Tensor:
            if x.shape[1] == 1:
                return x
            if self.stage2 is not None:  # full script: blue channel
                return x[:, 2:3]
            u8 = (x.clamp(0, 1) * 255).round().to(torch.int64)
            g = (9797 * u8[:, 0:1] + 19234 * u8[:, 1:2] + 3737 * u8[:, 2:3]) >> 15
            return g.to(x.dtype) / 255

        return gray(ir), gray(vis)

    def _forward_official(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        """``preset="official"`` for one pair: the official gray inputs (:meth:`official_inputs`), stage 1 in eval
        mode, stage 2 with its BatchNorms on batch statistics (``model_2.eval()`` is commented out in the official
        script), no clamping inside, then ``save_image``'s ``floor(clamp(255 x + 0.5, 0, 255))``. ``1×1×H×W``."""
        g_ir, g_vis = self.official_inputs(ir, vis)
        stage2 = batch_stat_norms(self.stage2) if self.stage2 is not None else contextlib.nullcontext()
        with stage2:
            raw = self.forward_train(g_ir, g_vis, aux=False)["fused"]
        return (raw * 255 + 0.5).clamp(0, 255).floor() / 255

    # -------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, stage2: str | os.PathLike | None = None) -> TIMNet:
        """Load ``{"state_dict", "genotype", "width"}`` (torch, weights_only) or a safetensors file whose metadata
        holds ``genotype`` (JSON) and ``width`` (both through :func:`~ivfuse.models.base.load_state`, which puts them
        in ``meta``); keys must match exactly.

        The authors' files (raw state dicts) load too, through :data:`OFFICIAL_KEYS` into the ``"official"``
        layout: ``weights_1_*.pt`` alone is the light network (``IVIF/light/weights_1_1169.pt``, genotype
        ``ivif_light``); a stage-1 file with the multi-scale fusion cell (``IVIF/weights_1_1059.pt``, genotype
        ``ivif``) needs its stage-2 file ``weights_2_*.pt``: ``stage2=FILE``, or found next to it by replacing
        ``weights_1`` with ``weights_2`` in the name."""
        sd, _, meta, kind = load_state(path, "TIM")
        official = kind == "raw" and is_state_dict(sd)
        if official and "stem.0.conv2d.weight" in sd:
            return cls._from_official(path, sd, stage2)
        if official and "stem2.0.conv2d.weight" in sd:
            raise InputError(
                f"{path}: this is the stage-2 file of the official TIM network; pass the stage-1 file "
                "(weights_1_*.pt) as the weights and this one as stage2=FILE (--opt stage2=FILE)"
            )
        if stage2 is not None:
            raise InputError(f"{path}: stage2= applies to the authors' two-file TIM network only")
        if kind != "export" and "genotype" not in meta:  # a container must record its genotype (an export may not)
            raise not_weights_error(
                path,
                "TIM",
                "an ivfuse TIM export (.safetensors) or checkpoint ({state_dict, "
                "genotype}), or the official TIMFusion state dicts (weights_1_*.pt [+ weights_2_*.pt])",
            )
        geno, width = meta.get("genotype"), int(meta.get("width", 48))
        layout, order = meta.get("layout", "ivfuse"), meta.get("stage1_order", "ir_vis")
        if geno is None:
            raise InputError(f"{path}: the checkpoint does not record its TIM genotype")
        model = cls(
            validate_genotype(geno, str(path)),
            width=width,
            aux=any(k.startswith("stage2.aux_") for k in sd),
            layout=layout,
        )
        if order not in ("ir_vis", "vis_ir"):
            raise InputError(f"{path}: stage1_order must be 'ir_vis' or 'vis_ir', got {order!r}")
        model.stage1_order = order
        return load_checked(model, sd, path, "the TIM genotype")

    @classmethod
    def _from_official(cls, path: str | os.PathLike, sd: dict, stage2: str | os.PathLike | None) -> TIMNet:
        full = any(".SKFF." in k for k in sd)  # the multi-scale fusion cell: the full IVIF network
        width = int(sd["stem.2.conv2d.weight"].shape[0])
        if full:
            if stage2 is None:
                p = Path(path)
                guess = p.with_name(p.name.replace("weights_1", "weights_2"))
                if guess == p or not guess.is_file():
                    raise InputError(
                        f"{path}: the official full TIM network has a second file (weights_2_*.pt): pass "
                        "it as stage2=FILE (--opt stage2=FILE)"
                    )
                stage2 = guess
            obj2, _, _, kind2 = load_state(stage2, "TIM stage-2")
            if kind2 != "raw" or not is_state_dict(obj2) or "stem2.0.conv2d.weight" not in obj2:
                raise InputError(f"{stage2}: not the stage-2 file of the official TIM network (weights_2_*.pt)")
            sd = {**sd, **obj2}
        elif stage2 is not None:
            raise InputError(f"{path}: the official light TIM network has one file; stage2= does not apply")
        model = cls("ivif" if full else "ivif_light", width=width, aux=True, layout="official")
        model.checkpoint_format = "official"
        if not full:
            model.stage1_order = "vis_ir"  # testFusion_light.py: model_1(vis, ir)
        where = f"{path} + {stage2}" if full else path
        return OFFICIAL_KEYS.load(model, sd, where)

    def save(self, path: str | os.PathLike) -> None:
        """Save weights + derived genotype (torch file, loadable with ``weights_only=True``)."""
        import io

        from ..utils import atomic_write_bytes

        buf = io.BytesIO()
        obj = {"state_dict": self.state_dict(), "genotype": self.genotype(), "width": self.width}
        if self.layout != "ivfuse":
            obj["layout"] = self.layout
        if self.stage1_order != "ir_vis":
            obj["stage1_order"] = self.stage1_order
        torch.save(obj, buf)
        atomic_write_bytes(Path(path), buf.getvalue())


class TIMSupernet(TIMNet):
    """The search space: :class:`TIMNet`'s layout with every slot a :class:`MixedOp` over ``candidates``.

    The layout (cell types, slots per cell, whether there is a stage 2) comes from ``layout`` (a genotype; its op
    names are ignored). Architecture parameters: one ``alpha`` (slots × candidates) per cell
    (:meth:`arch_parameters`); the rest are the network weights (:meth:`weight_parameters`).
    """

    def __init__(
        self,
        layout: str | os.PathLike | dict = "ivif",
        width: int = 48,
        candidates: Sequence[str] = DEFAULT_CANDIDATES,
        aux: bool = True,
    ) -> None:
        bad = [c for c in candidates if c not in OPS]
        if bad or not candidates:
            raise InputError(f"TIM supernet: unknown candidate operations {bad} (known: {', '.join(OPS)})")
        super().__init__(layout, width, aux, _candidates=tuple(candidates))
        self.candidates = tuple(candidates)
        scales = max(c.n_scales for c in self.modules() if isinstance(c, _Cell))
        # cost of every candidate at every scale (channels C·2^s, 4^-s of the pixels), in M MACs per input pixel
        self._cost = [[op_cost(o, width * 2**s) / 4**s / 1e6 for o in self.candidates] for s in range(scales)]

    def named_arch_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if n.endswith("alpha"))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_arch_parameters()]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.endswith("alpha")]

    def derive(self) -> dict:
        """Arg-max genotype (JSON-able dict), rebuildable with ``TIMNet(genotype)``."""
        return self.genotype()

    def expected_cost(self) -> torch.Tensor:
        """Differentiable cost proxy ``Σ_cells Σ_slots Σ_ops softmax(α)·cost(op)`` in M MACs per input pixel (the
        fusion cell's half/quarter scales weigh 4× / 16× less per pixel and have 2× / 4× the channels)."""
        total = 0.0
        for name, a in self.named_arch_parameters():
            cell = self.get_submodule(name.rsplit(".", 1)[0])
            w = F.softmax(a, -1)
            for s in range(cell.n_scales):
                total = total + (w * torch.tensor(self._cost[s], dtype=a.dtype, device=a.device)).sum()
        return total


def _blur_kernel(shape: tuple[int, ...]) -> torch.Tensor:
    """The fixed 3×3 binomial blur of the anti-aliased down-sampling (``filt`` buffers of the official files)."""
    a = torch.tensor([1.0, 2.0, 1.0])
    k = a[:, None] * a[None, :]
    return (k / k.sum())[None, None].repeat(shape[0], 1, 1, 1)


#: official ``Network_Fusion9_Meta`` (stage 1: ``stem``, ``cells``, ``stem_out``) + ``Network_Fusion9_3`` (stage 2:
#: ``stem2``/``stem3``, ``cells2``/``cells3``, ``spa``, ``stem_out2/3/4``) -> :class:`TIMNet` (``layout="official"``).
#: The official script calls ``model_2(vis, ir, fused)``, so ``stem2``/``cells3``/``stem_out2`` see the visible
#: image (-> ``stage2.stem_vis``/``cells_vis``/``aux_vis``) and ``stem3``/``cells2``/``stem_out3`` the infrared one.
#: Rewrites are applied in order. ``*.filt`` are the fixed blur kernels of the anti-aliased down-sampling: checked,
#: not loaded (ivfuse builds them, timm ``BlurPool2d``).
OFFICIAL_KEYS = KeyTable(
    "TIM",
    rules=(
        (r"^stem_out\.3\.conv2d\.", "head.3."),
        (r"^stem_out2\.3\.conv2d\.", "stage2.aux_vis.3."),
        (r"^stem_out3\.3\.conv2d\.", "stage2.aux_ir.3."),
        (r"^stem_out4\.2\.conv2d\.", "stage2.head.2."),
        (r"^stem_out\.", "head."),
        (r"^stem_out2\.", "stage2.aux_vis."),
        (r"^stem_out3\.", "stage2.aux_ir."),
        (r"^stem_out4\.", "stage2.head."),
        (r"^stem2\.", "stage2.stem_vis."),
        (r"^stem3\.", "stage2.stem_ir."),
        (r"^cells2\.", "stage2.cells_ir."),
        (r"^cells3\.", "stage2.cells_vis."),
        (r"^spa\.spatial\.", "stage2.mask."),
        (r"\.(\d)\.conv2d\.", r".\1.1."),  # ConvLayer = reflection pad + conv
        (r"\.preprocess1\.op\.", ".preprocess."),
        (r"\.down_2\.body\.0\.", ".down2."),
        (r"\.down_4\.body\.", ".down4."),
        (r"\.upsample_2\.body\.0\.", ".up2."),
        (r"\.upsample_4\.body\.", ".up4."),
        (r"\.SKFF\.conv_du\.", ".sk.reduce."),
        (r"\.SKFF\.fcs\.", ".sk.select."),
        (r"\._ops\.(\d+)\._op\.", r".ops.0.\1."),  # operation i at full scale
        (r"\._ops_([12])\.(\d+)\._op\.", r".ops.\1.\2."),  # fusion cell: operation i at scale 1/2, 1/4
        (r"\.op\.(\d)\.conv\.", r".body.\1."),  # residual / dilated conv: BasicConv
        (r"\.op\.(\d)\.", r".body.\1."),
        (r"\.conv([123])\.conv\.", lambda m: f".convs.{int(m.group(1)) - 1}."),  # residual dense block
        (r"\.lrelu\.", ".act."),
        (r"\.se\.spatial\.conv\.", ".conv."),  # spatial attention
        (r"\.se\.conv\.", ".0.conv."),  # ECA block: eca -> conv3×3 -> PReLU
        (r"\.conv1\.weight$", ".1.weight"),
        (r"\.relu\.weight$", ".2.weight"),
    ),
    constants=((r".*\.filt", _blur_kernel),),
)


@register_model("tim", default_weights="tim_default.safetensors")
def tim(
    weights: str | os.PathLike | None = "default",
    genotype: str | None = None,
    preset: str = "ivfuse",
    stage2: str | os.PathLike | None = None,
) -> TIMNet:
    """TIM (Liu et al., TPAMI 2024); default: ivfuse's searched, meta-initialised, task-guided CPU-scale model
    (``weights/tim_default.safetensors``, its genotype in the file's metadata); ``weights=FILE`` loads another,
    including the authors' ``weights_1_*.pt`` (``stage2=weights_2_*.pt`` for the full network, found next to it by
    default); ``preset="official"`` (with the authors' files) reproduces the official test scripts (docs/tim.md).
    ``weights=None, genotype=NAME``: an untrained network of that genotype."""
    check_preset(preset, "tim")
    if weights is None and genotype is None:
        raise InputError(
            "TIM needs trained weights: use the shipped default (no weights=), pass weights=FILE, or "
            "weights=None with genotype=NAME (ivif, ivif_light) for an untrained network"
        )
    if weights is None:
        return apply_official_preset(TIMNet(genotype).eval(), preset, "tim", "the official scripts", "weights_1_*.pt")
    if weights == "default" and stage2 is not None:
        raise InputError("tim: stage2= applies to the authors' two-file network (weights=weights_1_*.pt)")
    model = TIMNet.from_checkpoint(resolve_weights("tim", weights), stage2=stage2)
    if genotype is not None:
        want, have = load_genotype(genotype), model.genotype()
        if (have["stage1"], have["stage2"]) != (want["stage1"], want.get("stage2")):
            raise InputError(f"{weights}: the checkpoint's TIM genotype differs from '{genotype}'")
    return apply_official_preset(model, preset, "tim", "the official scripts", "weights_1_*.pt")

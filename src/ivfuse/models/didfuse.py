"""DIDFuse — deep image decomposition for infrared and visible image fusion, from its official weights.

Paper: Z. Zhao, S. Xu, C. Zhang, J. Liu, J. Zhang, P. Li, "DIDFuse: Deep Image Decomposition for Infrared
and Visible Image Fusion", IJCAI 2020, 970–976.
Official code: https://github.com/Zhaozixiang1228/IVIF-DIDFuse (read in the VIF-Benchmark collection copy
``ycc568/my-seafusion`` @ cff58e5: ``DIDFuse/Network.py``, ``utils_didfuse.py``, ``DIDFuse.py``).
Weights: ``peers/DIDFuse_Encoder.pkl`` and ``peers/DIDFuse_Decoder.pkl`` (dicts ``{'weight': state_dict,
'epoch': 120}``; :data:`ivfuse.weights.WEIGHTS` ``"didfuse_encoder"``, ``"didfuse_decoder"``).

What ivfuse reproduces (its own code; parameter names follow the official state dicts):

* Encoder (64 ch): reflect-pad 1 + 3×3 conv + BN + PReLU (F1) → 3×3 conv + BN + PReLU (F2) → two heads,
  3×3 conv + BN + tanh: base features (B) and detail features (D).
* Fusion rule of the official test script (``addition_mode='l1_norm'``), applied to each of F1, F2, B
  and D: the activity of a source is the 3×3 box mean (zero padding) of ``|F|`` **summed over all
  channels** (the official kernel is ``ones(C, C, 3, 3)/9``), and the fused feature is
  ``A_ir/(A_ir+A_vis)·F_ir + A_vis/(A_ir+A_vis)·F_vis``.
* Decoder: ``[B, D]`` → 3×3 conv+BN+PReLU → ``[·, F2]`` → 3×3 conv+BN+PReLU → ``[·, F1]`` → reflect-pad 1
  + 3×3 conv + BN + sigmoid → fused Y.
* Colour (official ``RGB2YCrCb``/``YCbCr2RGB``, as SeAFusion): Y/Cr/Cb with .299/.587/.114, .713, .564
  (clamped), back with 1.403/−0.714/−0.344/1.773, clamped; the official script truncates ``x·255``.

Deviations: (1) where both activities are 0 the official rule divides 0 by 0 (NaN); ivfuse uses equal
weights there. (2) The official script only accepts an RGB visible image (and a single-channel
infrared file); ivfuse also fuses a gray visible image directly. Needs images of at least 2×2
(reflection padding).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .base import FusionModel, check_pair, register_model
from .layers import load_peer_state, load_strict, rgb_to_ycrcb_official, ycrcb_official_to_rgb

__all__ = ["DIDFuse", "l1_norm_fuse"]

CH = 64


class _Named(nn.Module):
    """Holds one ``nn.Sequential`` under ``name`` (the official ``covN.covN`` nesting)."""

    def __init__(self, name: str, *layers: nn.Module) -> None:
        super().__init__()
        self._key = name
        self.add_module(name, nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._modules[self._key](x)


def _conv(cin: int, cout: int, act: nn.Module, reflect: bool = False) -> list[nn.Module]:
    if reflect:
        return [nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout), act]
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), act]


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cov1 = _Named("cov1", *_conv(1, CH, nn.PReLU(), reflect=True))
        self.cov2 = _Named("cov2", *_conv(CH, CH, nn.PReLU()))
        self.cov3 = _Named("cov3", *_conv(CH, CH, nn.Tanh()))
        self.cov4 = _Named("cov4", *_conv(CH, CH, nn.Tanh()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        f1 = self.cov1(x)
        f2 = self.cov2(f1)
        return f1, f2, self.cov3(f2), self.cov4(f2)


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cov5 = _Named("cov5", *_conv(2 * CH, CH, nn.PReLU()))
        self.cov6 = _Named("cov6", *_conv(2 * CH, CH, nn.PReLU()))
        self.cov7 = _Named("cov7", *_conv(2 * CH, 1, nn.Sigmoid(), reflect=True))

    def forward(self, f1: torch.Tensor, f2: torch.Tensor, fb: torch.Tensor, fd: torch.Tensor) -> torch.Tensor:
        x = self.cov5(torch.cat([fb, fd], 1))
        x = self.cov6(torch.cat([x, f2], 1))
        return self.cov7(torch.cat([x, f1], 1))


def l1_norm_fuse(a: torch.Tensor, b: torch.Tensor, window: int = 1) -> torch.Tensor:
    """DIDFuse's ``l1_norm`` rule: weights from the channel-summed 3×3 box mean of ``|a|`` and ``|b|``."""
    k = 2 * window + 1
    act_a = F.avg_pool2d(a.abs().sum(1, keepdim=True), k, 1, window, count_include_pad=True)
    act_b = F.avg_pool2d(b.abs().sum(1, keepdim=True), k, 1, window, count_include_pad=True)
    total = act_a + act_b
    wa = torch.where(total > 0, act_a / total.clamp_min(torch.finfo(a.dtype).tiny), torch.full_like(total, 0.5))
    return wa * a + (1 - wa) * b


class DIDFuse(FusionModel):
    """DIDFuse auto-encoder with the l1-norm fusion rule (see module docstring); ``create_model("didfuse")``."""

    name = "didfuse"
    min_size = 2

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()
        self.decoder = _Decoder()

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fi, fv = self.encoder(ir), self.encoder(y)
        f1, f2, fb, fd = (l1_norm_fuse(a, b) for a, b in zip(fi, fv))
        return self.decoder(f1, f2, fb, fd)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        check_pair(ir, vis, self.min_size, self.name)
        if vis.shape[1] == 1:
            return self.fuse_luma(ir, vis).clamp(0, 1)
        y, cr, cb = rgb_to_ycrcb_official(vis)
        return ycrcb_official_to_rgb(self.fuse_luma(ir, y), cr, cb)


def _state(obj: object, path: Path) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("weight"), dict):
        return obj["weight"]
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return obj  # a plain state dict is accepted too
    raise InputError(f"{path}: expected DIDFuse {{'weight': state_dict, 'epoch'}}, found {type(obj).__name__}")


@register_model("didfuse")
def didfuse(
    weights: str | os.PathLike | None = None,
    encoder: str | os.PathLike | None = None,
    decoder: str | os.PathLike | None = None,
) -> DIDFuse:
    """DIDFuse (Zhao et al. 2020), l1-norm fusion of base/detail features, from its official weights.

    ``weights``: a folder holding ``DIDFuse_Encoder.pkl`` and ``DIDFuse_Decoder.pkl`` (or ``Encoder.pkl`` /
    ``Decoder.pkl`` as in the official collection); ``encoder`` / ``decoder``: the two files explicitly.
    Default: the shared weights folder.
    """
    if weights is not None:
        folder = Path(weights)
        if not folder.is_dir():
            raise InputError(
                f"{folder}: DIDFuse weights must be a folder with DIDFuse_Encoder.pkl and DIDFuse_Decoder.pkl "
                "(or pass encoder=, decoder=)"
            )
        for part in ("Encoder", "Decoder"):
            cands = [folder / f"DIDFuse_{part}.pkl", folder / f"{part}.pkl"]
            found = next((c for c in cands if c.is_file()), None)
            if found is None:
                raise InputError(f"{folder}: no DIDFuse_{part}.pkl or {part}.pkl in this folder")
            if part == "Encoder":
                encoder = encoder or found
            else:
                decoder = decoder or found
    model = DIDFuse()
    p_enc, enc = load_peer_state("didfuse_encoder", "didfuse", encoder, "weights=FOLDER")
    p_dec, dec = load_peer_state("didfuse_decoder", "didfuse", decoder, "weights=FOLDER")
    load_strict(model.encoder, _state(enc, p_enc), p_enc, "DIDFuse encoder")
    load_strict(model.decoder, _state(dec, p_dec), p_dec, "DIDFuse decoder")
    return model.eval()

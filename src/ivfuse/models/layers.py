"""Building blocks shared by the peer methods (SeAFusion, TarDAL, IFCNN, DIDFuse).

* :func:`load_peer_state` / :func:`load_strict`: resolve a peer's official weights through
  :func:`ivfuse.weights.weights_path` (explicit file → shared folder → cache/URL), load them with
  ``torch.load(weights_only=True)`` and load them strictly, turning every failure into a one-line
  :class:`~ivfuse.errors.InputError`.
* :func:`rgb_to_ycrcb_official` / :func:`ycrcb_official_to_rgb`: the RGB↔YCrCb pair that SeAFusion and
  DIDFuse write out in torch and that TarDAL takes from OpenCV (``COLOR_BGR2YCrCb`` / ``COLOR_YCrCb2BGR``):
  ``Y = .299R + .587G + .114B``, ``Cr = .713 (R − Y) + ½``, ``Cb = .564 (B − Y) + ½`` and the inverse with
  1.403 / −0.714 / −0.344 / 1.773. It differs from kornia's BT.601 pair (used by
  :class:`~ivfuse.models.base.FusionModel`) only by the clamps SeAFusion applies to Y/Cr/Cb.
* :func:`minmax_per_image`: the per-image min–max stretch of SeAFusion's ``save_img_single``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError

__all__ = ["load_peer_state", "load_strict", "rgb_to_ycrcb_official", "ycrcb_official_to_rgb", "minmax_per_image"]


def load_peer_state(
    key: str, method: str, weights: str | os.PathLike | None = None, how: str = "weights=PATH"
) -> tuple[Path, Any]:
    """Resolve and read the weights ``key`` of :data:`ivfuse.weights.WEIGHTS` (or the explicit file ``weights``).

    Returns ``(path, object)``; the object is whatever the file holds (a state dict, or DIDFuse's
    ``{'weight': state_dict, 'epoch': n}``), read with ``torch.load(map_location='cpu', weights_only=True)``.
    """
    from ..utils import shared_root
    from ..weights import WEIGHTS, weights_path

    try:
        path = weights_path(key, weights)
    except InputError as e:
        fname = WEIGHTS[key].filename
        raise InputError(
            f"{method}: weights file {fname} not available ({e}); put it in {shared_root() / 'weights'} "
            f"or pass it: create_model('{method}', {how}) / ivfuse fuse --method {method} --weights {how.split('=')[1]}"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user input problem
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: cannot read {method} weights ({first})") from None
    return path, obj


def load_strict(module: nn.Module, state: Any, path: Path, method: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with a one-line :class:`InputError` naming ``path``."""
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a {method} state dict, found {type(state).__name__}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise InputError(f"{path}: not {method} weights ({detail[:300]})") from None


def rgb_to_ycrcb_official(rgb: torch.Tensor, clamp: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``B×3×H×W`` RGB in [0, 1] -> ``(Y, Cr, Cb)``, each ``B×1×H×W`` (chroma centred on ½)."""
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cr = (r - y) * 0.713 + 0.5
    cb = (b - y) * 0.564 + 0.5
    if clamp:
        y, cr, cb = y.clamp(0, 1), cr.clamp(0, 1), cb.clamp(0, 1)
    return y, cr, cb


def ycrcb_official_to_rgb(y: torch.Tensor, cr: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycrcb_official`, clamped to [0, 1]."""
    dr, db = cr - 0.5, cb - 0.5
    r = y + 1.403 * dr
    g = y - 0.714 * dr - 0.344 * db
    b = y + 1.773 * db
    return torch.cat([r, g, b], 1).clamp(0, 1)


def minmax_per_image(x: torch.Tensor) -> torch.Tensor:
    """Stretch each image of a batch (all channels together) to [0, 1]; constant images are left as they are."""
    flat = x.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1, 1)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny), x)

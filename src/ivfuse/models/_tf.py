"""Shared helpers for the peers whose official code is TensorFlow 1 (U2Fusion, STDFusionNet, SDNet, PMGI, CSF,
DenseFuse): weights, TF layout conversion, TF padding/normalisation semantics, and the official 8-bit I/O.

Weights (:data:`ivfuse.weights.WEIGHTS` entries ``u2fusion`` … ``densefuse``, :func:`load_tf_npz`): each TF checkpoint
of the VIF-Benchmark collection (Linfeng Tang; public copy ``ycc568/my-seafusion`` @ cff58e5, ``Checkpoint/``) was
written once to a ``.npz`` holding every checkpoint variable under its TF name, float32, conv kernels in TF layout HWIO
(``../shared/weights/peers/``, ``README_more.md`` there). ``np.load`` needs no TensorFlow. Resolution: an explicit file
(``weights=FILE``) → the shared folder (``$IVFUSE_SHARED/weights/peers`` or ``../shared/weights/peers``) → a one-line
error. No one publishes the ``.npz`` files, so there is no download URL; each entry's description names the original
checkpoint the arrays come from, and its ``sha256`` pins the shared file (checked by ``tests/test_peers_tf.py``).

TF → PyTorch (:func:`assign_tf`): kernels ``[kh, kw, in, out]`` → ``[out, in, kh, kw]`` (``permute(3, 2, 0, 1)``);
:class:`TFConv` pads the way the official graph does — ``"same"`` (TF ``padding='SAME'``, stride 1: zeros, the odd
extra row/column at the bottom/right), ``"reflect"`` (``tf.pad(..., 'REFLECT')`` then ``VALID``, the edge pixel not
repeated = ``torch`` ``reflect``), ``"valid"``; :func:`tf_max_pool_same` is ``tf.nn.max_pool(..., 'SAME')`` (padding
never wins the max); :func:`tf_batch_norm` applies stored statistics (TF's epsilon is an argument: 1e-3 for
``tf.layers.batch_normalization``, 1e-5 for ``tf.contrib.layers.batch_norm``); :func:`tf_instance_standardise` is
TF batch norm in *training* mode on a batch of one with fresh ``gamma=1, beta=0`` (PMGI's test graph): per image and
channel, biased variance.

Presets. ``preset="ivfuse"`` (the **default**) computes in float end to end: BT.601 luminance of the float inputs,
the network's own output range mapped to [0, 1] (no stretch), clamped, colour through
:class:`~ivfuse.models.base.FusionModel`'s BT.601 YCbCr (the same full-range matrix as PIL's, without 8-bit steps).
It is the default because it keeps ivfuse's method contract — a pure, differentiable tensor computation on any device
and dtype (``--device cuda``, ``--amp``, ONNX export; docs/peers.md), 16-bit inputs not rounded to 8 bit, and each
pixel's value independent of the image's extremes (tiles and video frames stay consistent) — while the network is the
same.
``preset="official"`` reproduces the official file (the parity tests use it); it is inference-only (Pillow in the
loop, CPU round trip) and not exportable.

Official 8-bit I/O (``preset="official"``; :func:`official_inputs`, :func:`official_save`): the six scripts read
images with ``scipy.misc.imread`` through Pillow — PIL ``'L'`` (integer luma, U2Fusion/DenseFuse) or ``'YCbCr'``
flattened to ``'F'`` (the float ``.299R+.587G+.114B`` of the image after PIL's 8-bit YCbCr round trip:
STDFusionNet, SDNet, PMGI, CSF) — write the fused gray with ``scipy.misc.imsave`` (SciPy ≤ 1.1 ``bytescale``: each
image min–max stretched, ``(x − min)·255/(max − min)``, ``floor(+½)``; a constant image becomes 0), then colour it
(``img2RGB``): the visible image's PIL full-range YCbCr chroma with the fused gray as Y, back to RGB by Pillow.
ivfuse runs exactly those Pillow conversions on the 8-bit values of its float inputs (``round(255·x)``), so for
8-bit images the official preset returns the official file's values (as floats /255); only the network's float
round-off differs. One deviation: ivfuse's infrared input is one channel, so an IR file stored as three equal
channels (LLVIP's JPGs, MSRS ``00001D``) goes through Pillow's ``'L'`` path, where the official ``'YCbCr'`` readers
would take the RGB path — for gray values the two differ by at most 1 grey level (the ``'L'`` readers: identical).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .base import FusionModel, check_pair
from .official import check_preset

__all__ = [
    "TFConv",
    "TFPeer",
    "assign_tf",
    "bytescale",
    "float_luma",
    "load_tf_npz",
    "lrelu",
    "official_inputs",
    "official_save",
    "tf_batch_norm",
    "tf_instance_standardise",
    "tf_max_pool_same",
    "tf_weights_path",
]


def tf_weights_path(key: str, method: str, weights: str | os.PathLike | None = None, opt: str = "weights") -> Path:
    """The ``.npz`` of the :data:`~ivfuse.weights.WEIGHTS` entry ``key``: ``weights`` if given (must exist), else the
    shared copy."""
    from ..utils import shared_root
    from ..weights import WEIGHTS

    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise InputError(f"{p}: {method} weights file not found")
        return p
    info = WEIGHTS[key]
    p = shared_root() / "weights" / info.filename
    if p.is_file():
        return p
    raise InputError(
        f"{method}: weights file {info.filename} not available (not in {p.parent}, no download URL: "
        f"{info.description.split(': ', 1)[1]}); put it there or pass it: create_model('{method}', {opt}=PATH)"
        + (f" / ivfuse fuse --method {method} --weights PATH" if opt == "weights" else f" / --opt {opt}=PATH")
    )


def load_tf_npz(path: Path, method: str) -> dict[str, np.ndarray]:
    """Every array of a converted checkpoint (no pickles), as float32; a bad file is a one-line error."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k], dtype=np.float32) for k in z.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user input problem
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise InputError(f"{path}: cannot read {method} weights ({type(e).__name__}: {first})") from None


def assign_tf(
    targets: dict[str, torch.Tensor],
    arrays: dict[str, np.ndarray],
    path: Path,
    method: str,
    unused: tuple[str, ...] = (),
) -> None:
    """Copy TF arrays into parameters: ``targets`` maps a TF variable name to the tensor it fills (4-D kernels
    HWIO → OIHW). Strict: every target must be in the file with the right shape, and every array of the file must be
    used or start with one of the ``unused`` prefixes (documented unused variables)."""
    missing = [k for k in targets if k not in arrays]
    extra = [k for k in arrays if k not in targets and not k.startswith(unused)]
    if missing or extra:
        raise InputError(f"{path}: keys do not match {method} (missing {missing[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for k, t in targets.items():
            a = torch.from_numpy(arrays[k])
            if a.ndim == 4:
                a = a.permute(3, 2, 0, 1)
            if tuple(a.shape) != tuple(t.shape):
                raise InputError(f"{path}: not {method} weights ({k}: {tuple(a.shape)} for {tuple(t.shape)})")
            t.copy_(a)


class TFConv(nn.Conv2d):
    """Stride-1 convolution with the official graph's padding: ``"same"`` (TF SAME: zeros, extra at bottom/right),
    ``"reflect"`` (``k//2`` reflected rows/columns, edge not repeated) or ``"valid"``."""

    def __init__(self, cin: int, cout: int, k: int, pad: str = "same", bias: bool = True) -> None:
        super().__init__(cin, cout, k, bias=bias)
        if pad not in ("same", "reflect", "valid"):
            raise ValueError(f"unknown padding {pad}")
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        if self.pad == "same" and k > 1:
            lo = (k - 1) // 2
            x = F.pad(x, (lo, k - 1 - lo, lo, k - 1 - lo))
        elif self.pad == "reflect" and k > 1:
            x = F.pad(x, (k // 2,) * 4, mode="reflect")
        return super().forward(x)


def tf_max_pool_same(x: torch.Tensor, k: int = 2, s: int = 2) -> torch.Tensor:
    """``tf.nn.max_pool(ksize=k, strides=s, padding='SAME')``: output ``ceil(n/s)``, padding at the end ignored."""
    h, w = x.shape[-2:]
    ph = max((-(-h // s) - 1) * s + k - h, 0)
    pw = max((-(-w // s) - 1) * s + k - w, 0)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float("-inf"))
    return F.max_pool2d(x, k, s)


def tf_batch_norm(x: torch.Tensor, bn: dict[str, torch.Tensor], eps: float) -> torch.Tensor:
    """Inference batch norm with stored ``gamma, beta, moving_mean, moving_variance`` (TF formula)."""
    inv = bn["gamma"] * torch.rsqrt(bn["moving_variance"] + eps)
    return x * inv.view(1, -1, 1, 1) + (bn["beta"] - bn["moving_mean"] * inv).view(1, -1, 1, 1)


def tf_instance_standardise(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """TF batch norm in training mode on one image with ``gamma=1, beta=0``: per image and channel over H×W,
    biased variance."""
    mean = x.mean((2, 3), keepdim=True)
    var = (x - mean).square().mean((2, 3), keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


def lrelu(x: torch.Tensor, a: float = 0.2) -> torch.Tensor:
    """``tf.maximum(x, a·x)`` = ``tf.nn.leaky_relu(x, a)``."""
    return F.leaky_relu(x, a)


# ------------------------------------------------------------------------------------------------ official 8-bit I/O
def _u8(x: torch.Tensor) -> np.ndarray:
    """``C×H×W`` float in [0, 1] → ``H×W(×3)`` uint8 (``round(255·x)``, exact for 8-bit sources)."""
    a = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0))


def _pil(x: torch.Tensor):
    from PIL import Image

    a = _u8(x)
    return Image.fromarray(a, "L" if a.ndim == 2 else "RGB")


def official_inputs(ir: torch.Tensor, vis: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The official scripts' gray inputs on 0..255 (float32 ``B×1×H×W``) from ivfuse's float images:
    ``mode="L"`` → ``imread(p, mode='L')`` (PIL integer luma); ``mode="luma"`` → ``imread(p, flatten=True,
    mode='YCbCr')`` (PIL YCbCr round trip, then the float luma of ``'F'``)."""
    if mode not in ("L", "luma"):
        raise ValueError(mode)
    outs = []
    for t in (ir, vis):
        planes = []
        for b in range(t.shape[0]):
            im = _pil(t[b])
            im = im.convert("L") if mode == "L" else im.convert("YCbCr").convert("F")
            planes.append(torch.from_numpy(np.asarray(im, dtype=np.float32).copy()))
        outs.append(torch.stack(planes)[:, None].to(t.device))
    return outs[0], outs[1]


def bytescale(y: np.ndarray) -> np.ndarray:
    """SciPy ≤ 1.1 ``imsave`` of a float image: min–max to 0..255, ``floor(+½)`` (constant image → 0)."""
    lo, hi = y.min(), y.max()
    span = hi - lo if hi != lo else 1
    return ((y - lo) * (255.0 / span)).clip(0, 255).__add__(0.5).astype(np.uint8)


def official_save(fused: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """``imsave`` (stretch, 8 bit) + ``img2RGB`` (Pillow YCbCr with the visible chroma) of the fused gray
    ``B×1×H×W`` (any range); returns the written values /255 with the visible input's channels."""
    from PIL import Image

    out = []
    for b in range(fused.shape[0]):
        y8 = bytescale(fused[b, 0].detach().float().cpu().numpy())
        if vis.shape[1] == 1:
            out.append(torch.from_numpy(y8.astype(np.float32))[None])
            continue
        _, cb, cr = _pil(vis[b]).convert("YCbCr").split()
        rgb = Image.merge("YCbCr", (Image.fromarray(y8, "L"), cb, cr)).convert("RGB")
        out.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1).copy()))
    return (torch.stack(out) / 255).to(device=fused.device, dtype=torch.float32)


def float_luma(vis: torch.Tensor) -> torch.Tensor:
    """BT.601 luminance of a float image (gray passes through) — the ``preset="ivfuse"`` input."""
    if vis.shape[1] == 1:
        return vis
    return 0.299 * vis[:, 0:1] + 0.587 * vis[:, 1:2] + 0.114 * vis[:, 2:3]


class TFPeer(FusionModel):
    """Common forward of the six TF peers. A subclass defines :meth:`network` (the official graph on the official
    input scale), ``input_mode`` (``"L"`` or ``"luma"``, see :func:`official_inputs`), :meth:`scale_in` (0..255 →
    network input) and :meth:`unit_out` (network output → [0, 1] for ``preset="ivfuse"``).

    ``preset="ivfuse"`` (default): float pipeline, no stretch, :class:`FusionModel` colour. ``preset="official"``:
    Pillow 8-bit inputs, network, min–max stretch + Pillow YCbCr colour, i.e. what the official script writes."""

    input_mode = "luma"

    def __init__(self, preset: str = "ivfuse") -> None:
        super().__init__()
        self.preset = check_preset(preset, self.name)

    def network(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def scale_in(self, x255: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def unit_out(self, raw: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.unit_out(self.network(self.scale_in(ir * 255), self.scale_in(y * 255))).clamp(0, 1)

    def official_raw(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        """The network output the official script passes to ``imsave`` (before the stretch)."""
        i255, v255 = official_inputs(ir, vis, self.input_mode)
        return self.network(self.scale_in(i255), self.scale_in(v255))

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        check_pair(ir, vis, self.min_size, self.name)
        if self.preset == "official":
            return official_save(self.official_raw(ir, vis), vis)
        return super().forward(ir, vis)

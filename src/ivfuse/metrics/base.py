"""Metric table, input conversion and the registry behind :func:`ivfuse.create_metric`.

Conventions (see ``docs/metrics.md``):

* every metric is computed on gray images on the **0–255 scale** in float64, as the reference tools do;
* call order is ``metric(fused, ir, vis)``; no-reference metrics (EN, SD, SF, AG) ignore the sources;
* ``numpy`` arrays are taken as 0–255 values (``uint8`` or float, the reference tools' convention);
  ``torch`` float tensors follow ivfuse's convention ([0, 1]) and are scaled by 255 and rounded to the
  8-bit grid, i.e. scored exactly as the saved PNG would be;
* colour inputs (3 channels) are reduced to BT.601 luma ``0.299 R + 0.587 G + 0.114 B``, rounded
  (as CDDFuse's ``image_read_cv2(..., 'GRAY')``);
* a batch ``B×C×H×W`` with ``B > 1`` returns a ``numpy`` array of ``B`` values, else a float.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.images import luma
from ..errors import InputError
from ..registry import Registry

__all__ = [
    "Metric",
    "METRICS",
    "DEFAULT_METRICS",
    "register_metric",
    "create_metric",
    "list_metrics",
    "to_gray255",
    "compute_metrics",
]

METRICS: Registry[Metric] = Registry("metric")

#: The default suite of ``ivfuse eval`` (the common IVIF table plus Nabf and CC).
DEFAULT_METRICS: tuple[str, ...] = (
    "en",
    "sd",
    "sf",
    "ag",
    "mi",
    "scd",
    "vif",
    "qabf",
    "nabf",
    "ssim",
    "mse",
    "psnr",
    "cc",
)


@dataclass(frozen=True)
class Metric:
    """A registered fusion metric. Call as ``metric(fused, ir, vis)``.

    Attributes:
        name: registry name (lower case).
        fn: ``fn(F, A, B) -> float`` on float64 H×W arrays on 0–255 (A = infrared, B = visible).
        lower_better: whether smaller values are better (MSE, Nabf, Qcv).
        reference: which implementation the default convention reproduces (and is calibrated against).
        needs_sources: False for no-reference metrics (EN, SD, SF, AG).
        min_size: smallest side (pixels) the metric is defined for.
    """

    name: str
    fn: Callable[[np.ndarray, np.ndarray | None, np.ndarray | None], float]
    lower_better: bool = False
    reference: str = ""
    needs_sources: bool = True
    min_size: int = 2
    description: str = field(default="", compare=False)

    def __call__(self, fused: Any, ir: Any = None, vis: Any = None) -> float | np.ndarray:
        fs = _batch(fused, "fused")
        if self.needs_sources:
            if ir is None or vis is None:
                raise InputError(f"metric '{self.name}' needs the fused, infrared and visible images")
            irs, viss = _batch(ir, "ir"), _batch(vis, "vis")
            if not (len(fs) == len(irs) == len(viss)):
                raise InputError(
                    f"metric '{self.name}': batch sizes differ (fused {len(fs)}, ir {len(irs)}, vis {len(viss)})"
                )
        else:
            irs = viss = [None] * len(fs)
        vals = [self.compute(f, a, b) for f, a, b in zip(fs, irs, viss)]
        return float(vals[0]) if len(vals) == 1 else np.asarray(vals, dtype=np.float64)

    def compute(self, f: np.ndarray, a: np.ndarray | None, b: np.ndarray | None) -> float:
        """Score one triple of already-converted float64 H×W arrays on 0–255.

        Metrics with a faster implementation in :mod:`ivfuse.metrics.fast` use it (same values to rounding);
        ``self.fn(f, a, b)`` is the plain reference transcription.
        """
        from .fast import compute_arrays

        return compute_arrays(f, a, b, [self])[self.name]

    def check(self, f: np.ndarray, a: np.ndarray | None, b: np.ndarray | None) -> None:
        """Raise :class:`InputError` unless the arrays have equal shapes of at least ``min_size`` per side."""
        for arr, role in ((f, "fused"), (a, "ir"), (b, "vis")):
            if arr is None:
                continue
            if arr.shape != f.shape:
                raise InputError(f"metric '{self.name}': {role} is {arr.shape}, fused is {f.shape}; sizes must match")
            if min(arr.shape) < self.min_size:
                raise InputError(
                    f"metric '{self.name}' needs images of at least {self.min_size}x{self.min_size} pixels, "
                    f"got {arr.shape[1]}x{arr.shape[0]}"
                )


def register_metric(
    name: str,
    *,
    lower_better: bool = False,
    reference: str = "",
    needs_sources: bool = True,
    min_size: int = 2,
) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(F, A, B)`` as a :class:`Metric` under ``name``."""

    def deco(fn: Callable) -> Callable:
        METRICS.add(
            name,
            Metric(
                name=name,
                fn=fn,
                lower_better=lower_better,
                reference=reference,
                needs_sources=needs_sources,
                min_size=min_size,
                description=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
            ),
        )
        return fn

    return deco


def create_metric(name: str) -> Metric:
    """Return the registered :class:`Metric` called ``name`` (unknown names raise with a suggestion)."""
    return METRICS.get(name)


def list_metrics() -> list[str]:
    """Names of all registered metrics, sorted."""
    return METRICS.names()


def to_gray255(x: Any, role: str = "image") -> np.ndarray:
    """Convert one image (numpy H×W / H×W×C, or torch H×W / C×H×W / 1×C×H×W) to float64 H×W on 0–255."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency, kept optional here
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach().to("cpu")
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise InputError(f"{role}: expected a single image, got a batch of {t.shape[0]}")
            t = t[0]
        if t.ndim == 3:
            t = t.permute(1, 2, 0)  # C×H×W -> H×W×C
        if t.dtype == torch.uint8:
            arr = t.numpy().astype(np.float64)
        elif t.is_floating_point():
            arr = np.round(np.clip(t.double().numpy(), 0.0, 1.0) * 255.0)
        else:
            raise InputError(f"{role}: unsupported tensor dtype {t.dtype}")
    else:
        arr = np.asarray(x)
        if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.number)):
            raise InputError(f"{role}: unsupported array dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.uint8 and arr.size and arr.max() > 255:
            raise InputError(f"{role}: integer values above 255; metrics expect 8-bit images on 0-255")
        arr = arr.astype(np.float64)
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        elif arr.shape[2] in (3, 4):
            arr = np.round(luma(arr[..., :3]))
        else:
            raise InputError(f"{role}: expected 1 or 3 channels, got shape {arr.shape}")
    if arr.ndim != 2:
        raise InputError(f"{role}: expected a 2-D image, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{role}: contains NaN or inf values")
    return arr


def _batch(x: Any, role: str) -> list[np.ndarray]:
    try:
        import torch

        if isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[0] > 1:
            return [to_gray255(t, role) for t in x]
    except ImportError:  # pragma: no cover
        pass
    return [to_gray255(x, role)]


def compute_metrics(fused: Any, ir: Any, vis: Any, metrics: Sequence[str] | None = None) -> dict[str, float]:
    """Score one triple with several metrics; returns ``{name: value}`` in the order asked.

    Intermediates are shared between the metrics (:func:`ivfuse.metrics.fast.compute_all`).
    """
    from .fast import compute_arrays

    names = list(metrics or DEFAULT_METRICS)
    f = to_gray255(fused, "fused")
    a = to_gray255(ir, "ir")
    b = to_gray255(vis, "vis")
    return compute_arrays(f, a, b, names)

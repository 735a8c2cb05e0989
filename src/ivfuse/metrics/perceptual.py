"""Human-perception-inspired metrics of Chen & Blum (Qcb) and Chen & Varshney (Qcv), as VIFB computes them.

Both take the images min-max stretched to 0..255 (``normalize1``) and filter them in the frequency domain
with MATLAB's ``freqspace`` grid. Each function takes float64 H×W arrays on 0–255 as
``(F, A, B)`` = (fused, infrared, visible).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve

from ._filters import normalize1
from .base import register_metric
from .gradient import sobel_liu


def _freqspace(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``[u, v] = freqspace([h w], 'meshgrid')`` (u along columns, v along rows)."""
    fu = (np.arange(w) - np.floor(w / 2)) * (2.0 / w)
    fv = (np.arange(h) - np.floor(h / 2)) * (2.0 / h)
    return np.meshgrid(fu, fv)


def _freq_filter(x: np.ndarray, resp: np.ndarray) -> np.ndarray:
    """``ifft2(ifftshift(fftshift(fft2(x)) .* resp))`` (complex result, as in MATLAB)."""
    return np.fft.ifft2(np.fft.ifftshift(np.fft.fftshift(np.fft.fft2(x)) * resp))


def _gauss31(sigma: float) -> np.ndarray:
    y, x = np.mgrid[-15:16, -15:16]
    return np.exp(-(x * x + y * y) / (2 * sigma * sigma)) / (2 * np.pi * sigma * sigma)


_G1, _G2 = _gauss31(2.0), _gauss31(4.0)


def _filter2_same_complex(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    # k is symmetric, so correlation == convolution
    return fftconvolve(x, k, mode="same")


@register_metric("qcb", reference="VIFB metricsQcb.m (Chen & Blum 2009) = Liu metricChenBlum.m", min_size=31)
def qcb(F, A, B) -> float:
    """Chen-Blum perceptual contrast metric Qcb (CSF filtering, local contrast ratios, saliency weights)."""
    a, b, f = normalize1(A), normalize1(B), normalize1(F)
    h, w = a.shape
    u, v = _freqspace(h, w)
    u, v = (w / 30) * u, (h / 30) * v
    r = np.sqrt(u * u + v * v)
    Sd = np.exp(-((r / 15.3870) ** 2)) - 0.7622 * np.exp(-((r / 1.3456) ** 2))
    k, hh, p, q, Z = 1.0, 1.0, 3.0, 2.0, 0.0001

    def contrast(img):
        y = _freq_filter(img, Sd)
        c = np.abs(_filter2_same_complex(y, _G1) / _filter2_same_complex(y, _G2) - 1)
        return (k * c**p) / (hh * c**q + Z)

    c1, c2, cf = contrast(a), contrast(b), contrast(f)
    with np.errstate(divide="ignore", invalid="ignore"):
        q1 = np.where(c1 < cf, c1 / cf, cf / c1)
        q2 = np.where(c2 < cf, c2 / cf, cf / c2)
        lam1 = c1 * c1 / (c1 * c1 + c2 * c2)
        lam2 = c2 * c2 / (c1 * c1 + c2 * c2)
    return float(np.mean(lam1 * q1 + lam2 * q2))


def _blocks(x: np.ndarray, size: int) -> np.ndarray:
    """``blkproc`` tiling: zero-pad to whole blocks, return (nby, nbx, size, size)."""
    h, w = x.shape
    ph, pw = -h % size, -w % size
    x = np.pad(x, ((0, ph), (0, pw)))
    return x.reshape(x.shape[0] // size, size, x.shape[1] // size, size).swapaxes(1, 2)


@register_metric(
    "qcv", lower_better=True, reference="VIFB metricsQcv.m (Chen & Varshney 2007) = Liu metricChen.m", min_size=16
)
def qcv(F, A, B) -> float:
    """Chen-Varshney metric Qcv: saliency-weighted CSF-filtered local MSE (lower is better)."""
    a, b, f = normalize1(A), normalize1(B), normalize1(F)
    ws, alpha = 16, 5
    ga, _ = sobel_liu(a)
    gb, _ = sobel_liu(b)
    ram1 = (_blocks(ga, ws) ** alpha).sum(axis=(2, 3))
    ram2 = (_blocks(gb, ws) ** alpha).sum(axis=(2, 3))
    h, w = a.shape
    u, v = _freqspace(h, w)
    u, v = (w / 8) * u, (h / 8) * v
    r = np.sqrt(u * u + v * v)
    theta_m = 2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1))
    d1 = _freq_filter(a - f, theta_m)
    d2 = _freq_filter(b - f, theta_m)
    D1 = (_blocks(d1, ws) ** 2).sum(axis=(2, 3)) / (ws * ws)
    D2 = (_blocks(d2, ws) ** 2).sum(axis=(2, 3)) / (ws * ws)
    Q = (ram1 * D1 + ram2 * D2).sum() / (ram1 + ram2).sum()
    return float(np.real(Q))

"""Intensity-statistics metrics: EN, SD, SF, AG, MI, CC, SCD, MSE, PSNR (and named variants).

Each function takes float64 H×W arrays on 0–255 as ``(F, A, B)`` = (fused, infrared, visible).
"""

from __future__ import annotations

import math

import numpy as np

from .base import register_metric

LN2 = math.log(2.0)


def _entropy_bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.int64)


@register_metric("en", needs_sources=False, reference="Tang/VIFB/CDDFuse EN (all agree)")
def en(F, A=None, B=None) -> float:
    """Entropy of the fused image's 256-bin histogram, in bits."""
    h = np.bincount(_u8(F).ravel(), minlength=256) / F.size
    return _entropy_bits(h)


@register_metric("sd", needs_sources=False, reference="Tang SD_evaluation.m (population std)")
def sd(F, A=None, B=None) -> float:
    """Standard deviation of the fused image (population, 1/(MN))."""
    return float(np.std(F))


@register_metric("sf", needs_sources=False, reference="Tang SF_evaluation.m (= CDDFuse Evaluator.SF)")
def sf(F, A=None, B=None) -> float:
    """Spatial frequency sqrt(RF^2 + CF^2), each the RMS of first differences over its own count."""
    rf = np.mean(np.diff(F, axis=0) ** 2)
    cf = np.mean(np.diff(F, axis=1) ** 2)
    return math.sqrt(rf + cf)


@register_metric("sf_vifb", needs_sources=False, reference="VIFB/MEFB metricsSpatial_frequency.m")
def sf_vifb(F, A=None, B=None) -> float:
    """Spatial frequency with both sums divided by M*N (VIFB/MEFB convention)."""
    n = F.size
    return math.sqrt((np.sum(np.diff(F, axis=1) ** 2) + np.sum(np.diff(F, axis=0) ** 2)) / n)


def _matlab_gradient(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``gradient``: central differences inside, one-sided at the borders -> (d/dx, d/dy)."""
    return np.gradient(x, axis=1, edge_order=1), np.gradient(x, axis=0, edge_order=1)


@register_metric("ag", needs_sources=False, reference="VIFB metricsAvg_gradient.m = Tang AG_evaluation.m")
def ag(F, A=None, B=None) -> float:
    """Average gradient: sum of sqrt((gx^2 + gy^2)/2) over all pixels divided by (M-1)(N-1)."""
    gx, gy = _matlab_gradient(F)
    s = np.sqrt((gx * gx + gy * gy) / 2.0)
    return float(s.sum() / ((F.shape[0] - 1) * (F.shape[1] - 1)))


@register_metric("ag_cddfuse", needs_sources=False, reference="CDDFuse Evaluator.AG")
def ag_cddfuse(F, A=None, B=None) -> float:
    """Average gradient averaged over all M*N pixels (CDDFuse convention)."""
    gx, gy = _matlab_gradient(F)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


def _mi_bits(x: np.ndarray, y: np.ndarray) -> float:
    xi, yi = _u8(x).ravel(), _u8(y).ravel()
    joint = np.bincount(xi * 256 + yi, minlength=256 * 256).astype(np.float64) / xi.size
    px = np.bincount(xi, minlength=256) / xi.size
    py = np.bincount(yi, minlength=256) / yi.size
    return _entropy_bits(px) + _entropy_bits(py) - _entropy_bits(joint)


@register_metric("mi", reference="Tang MI_evaluation.m (bits, 256-bin joint histograms)")
def mi(F, A, B) -> float:
    """Mutual information MI(F, IR) + MI(F, VIS) in bits from 256-bin (joint) histograms."""
    return _mi_bits(F, A) + _mi_bits(F, B)


@register_metric("mi_nats", reference="CDDFuse Evaluator.MI / VIFB metricsMutinf.m (nats)")
def mi_nats(F, A, B) -> float:
    """Mutual information MI(F, IR) + MI(F, VIS) in nats (= bits * ln 2)."""
    return mi(F, A, B) * LN2


def _corr2(x: np.ndarray, y: np.ndarray) -> float:
    """MATLAB ``corr2``; NaN when either image is constant (as the reference tools give)."""
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / den) if den > 0 else math.nan


@register_metric("cc", reference="Tang CC_evaluation.m / CDDFuse Evaluator.CC")
def cc(F, A, B) -> float:
    """Mean of the correlation coefficients corr(IR, F) and corr(VIS, F)."""
    return (_corr2(A, F) + _corr2(B, F)) / 2.0


@register_metric("scd", reference="Tang analysis_SCD.m / CDDFuse Evaluator.SCD")
def scd(F, A, B) -> float:
    """Sum of the correlations of differences: corr(F - VIS, IR) + corr(F - IR, VIS)."""
    return _corr2(F - B, A) + _corr2(F - A, B)


def _mse255(F, A, B) -> float:
    return float((np.mean((A - F) ** 2) + np.mean((B - F) ** 2)) / 2.0)


@register_metric("mse", lower_better=True, reference="CDDFuse Evaluator.MSE (0-255 scale)")
def mse(F, A, B) -> float:
    """Mean squared error to the sources on 0-255, averaged over IR and VIS."""
    return _mse255(F, A, B)


@register_metric("psnr", reference="10*log10(255^2 / MSE); = Tang PSNR_evaluation.m - 20*log10(255)")
def psnr(F, A, B) -> float:
    """Peak signal-to-noise ratio 10*log10(255^2 / MSE) with MSE the mean over both sources."""
    m = _mse255(F, A, B)
    return math.inf if m == 0 else 10.0 * math.log10(255.0**2 / m)


@register_metric("psnr_cddfuse", reference="CDDFuse Evaluator.PSNR: 10*log10(max(F)^2 / MSE)")
def psnr_cddfuse(F, A, B) -> float:
    """CDDFuse's PSNR, with the fused image's maximum as the peak."""
    m = _mse255(F, A, B)
    return math.inf if m == 0 else 10.0 * math.log10(float(F.max()) ** 2 / m)

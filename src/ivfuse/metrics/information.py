"""Information-theoretic metrics: Haghighat's fast FMI (raw pixels / DCT) and Wang's Qncie.

Each function takes float64 H×W arrays on 0–255 as ``(F, A, B)`` = (fused, infrared, visible).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.fft import dctn

from ._filters import normalize1
from .base import register_metric

_IDX = np.arange(1, 10, dtype=np.float64)  # i = 1..9 as in the reference loops


def _windows(x: np.ndarray) -> np.ndarray:
    """All 3×3 windows flattened column-major (MATLAB ``x(:)``): shape (H-2, W-2, 9)."""
    v = sliding_window_view(x, (3, 3))
    return np.ascontiguousarray(v.transpose(0, 1, 3, 2)).reshape(-1, 9)


def _norm_pdf(s: np.ndarray) -> np.ndarray:
    lo, hi = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
    const = hi == lo
    n = np.where(const, 1.0, (s - lo) / np.where(const, 1.0, hi - lo))
    return n / n.sum(axis=1, keepdims=True)


def _xlog2x_neg(p: np.ndarray) -> np.ndarray:
    """-p*log2|p| with 0 where p == 0 (MATLAB ``real(-p.*log2(p))`` also for tiny negative p)."""
    ap = np.abs(p)
    return np.where(p != 0, -p * np.log2(np.where(ap > 0, ap, 1.0)), 0.0)


def _fmi_pair(s: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Per-window fast-FMI between source windows ``s`` and fused windows ``f`` (both (P, 9), raw)."""
    same = np.all(s == f, axis=1)
    ap, fp = _norm_pdf(s), _norm_pdf(f)
    ac, fc = np.cumsum(ap, axis=1), np.cumsum(fp, axis=1)
    at, ft = ap - ap.mean(axis=1, keepdims=True), fp - fp.mean(axis=1, keepdims=True)
    num = (at * ft).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(num == 0, 0.0, num / np.sqrt((at * at).sum(axis=1) * (ft * ft).sum(axis=1)))
    a_sd = np.sqrt(np.maximum((_IDX**2 * ap).sum(1) - (_IDX * ap).sum(1) ** 2, 0))
    f_sd = np.sqrt(np.maximum((_IDX**2 * fp).sum(1) - (_IDX * fp).sum(1) ** 2, 0))
    Fi, Aj = fc[:, :, None], ac[:, None, :]  # (P, 9, 9): i over fused, j over source
    prod = Fi * Aj
    pos = c >= 0
    # upper (comonotone) and lower (countermonotone) Frechet bounds of the joint CDF
    bound = np.where(pos[:, None, None], np.minimum(Fi, Aj), np.maximum(Fi + Aj - 1, 0.0))
    cov = (bound - prod).sum(axis=(1, 2))
    sd = f_sd * a_sd
    ok = (sd != 0) & ~((c == 0) & pos)
    with np.errstate(invalid="ignore", divide="ignore"):
        mix = np.where(ok, c / (cov / np.where(sd == 0, 1, sd)), 0.0)
    # joint pmf from the bound by 2-D differencing (bound at index 0 taken as 0, as in the loops)
    pad = np.zeros((bound.shape[0], 10, 10))
    pad[:, 1:, 1:] = bound
    d = pad[:, 1:, 1:] - pad[:, :-1, 1:] - pad[:, 1:, :-1] + pad[:, :-1, :-1]
    jpdf = mix[:, None, None] * d + (1 - mix[:, None, None]) * (fp[:, :, None] * ap[:, None, :])
    je = _xlog2x_neg(jpdf).sum(axis=(1, 2))
    ae, fe = _xlog2x_neg(ap).sum(1), _xlog2x_neg(fp).sum(1)
    mi = ae + fe - je
    with np.errstate(invalid="ignore", divide="ignore"):
        fmi = np.where(mi == 0, 0.0, 2 * mi / (ae + fe))
    return np.where(same, 1.0, fmi)


def fmi_haghighat(a: np.ndarray, b: np.ndarray, f: np.ndarray, chunk: int = 40000) -> float:
    """Haghighat & Razian fast-FMI (``analysis_fmi.m``) on feature maps ``a``, ``b``, ``f``, 3×3 windows."""
    wa, wb, wf = _windows(a), _windows(b), _windows(f)
    total = 0.0
    for i in range(0, wa.shape[0], chunk):
        sl = slice(i, i + chunk)
        total += ((_fmi_pair(wa[sl], wf[sl]) + _fmi_pair(wb[sl], wf[sl])) / 2).sum()
    return float(total / wa.shape[0])


@register_metric("fmi", reference="Tang analysis_fmi.m, feature 'none' (raw pixels), w = 3", min_size=3)
def fmi(F, A, B) -> float:
    """Fast feature mutual information (Haghighat 2014) on raw pixels, 3×3 windows."""
    return fmi_haghighat(A, B, F)


@register_metric("fmi_dct", reference="Tang analysis_fmi.m, feature 'dct' (orthonormal dct2), w = 3", min_size=3)
def fmi_dct(F, A, B) -> float:
    """Fast FMI on the orthonormal 2-D DCT coefficients of each image (MATLAB ``dct2``)."""
    return fmi_haghighat(*(dctn(x, type=2, norm="ortho") for x in (A, B, F)))


def _ncc(x: np.ndarray, y: np.ndarray) -> float:
    xi, yi = x.astype(np.int64).ravel(), y.astype(np.int64).ravel()
    h = np.bincount(xi * 256 + yi, minlength=65536).reshape(256, 256).astype(np.float64)
    h /= h.sum()

    def ent(p):
        return float(-(p * np.log2(p + (p == 0))).sum())

    return (ent(h.sum(0)) + ent(h.sum(1)) - ent(h)) / 8.0


@register_metric("qncie", reference="Liu et al. toolbox metricWang.m (nonlinear correlation information entropy)")
def qncie(F, A, B) -> float:
    """Wang et al.'s nonlinear correlation information entropy Q_NCIE (inputs min-max stretched to 0..255)."""
    a, b, f = normalize1(A), normalize1(B), normalize1(F)
    nab, naf, nbf = _ncc(a, b), _ncc(a, f), _ncc(b, f)
    R = np.array([[1, nab, naf], [nab, 1, nbf], [naf, nbf, 1]])
    r = np.linalg.eigvalsh(R)
    K = 3
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(r > 0, r * np.log2(np.where(r > 0, r, 1) / K) / K, 0.0)
    return float(1 + terms.sum() / np.log2(256))

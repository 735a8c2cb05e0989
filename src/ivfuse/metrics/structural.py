"""Structural metrics: SSIM (+variants), Wang's MS-SSIM, MEF-SSIM, Yang's Qy and pixel VIF.

Each function takes float64 H×W arrays on 0–255 as ``(F, A, B)`` = (fused, infrared, visible).
"""

from __future__ import annotations


import numpy as np

from ._filters import EPS, downsample2, filter2_valid_sep, gaussian_1d
from .base import register_metric

_G11 = gaussian_1d(11, 1.5)


def _moments(x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = filter2_valid_sep(x, g)
    return m, filter2_valid_sep(x * x, g) - m * m


def _ssim_terms(x: np.ndarray, y: np.ndarray, g: np.ndarray, c1: float, c2: float, y_moments=None):
    """Wang's SSIM maps ('valid' window g): returns (luminance*cs map, cs map, sigma_x^2, sigma_y^2)."""
    mx, sx = _moments(x, g)
    my, sy = y_moments if y_moments is not None else _moments(y, g)
    mx2, my2, mxy = mx * mx, my * my, mx * my
    sxy = filter2_valid_sep(x * y, g) - mxy
    cs = (2 * sxy + c2) / (sx + sy + c2)
    lum = (2 * mxy + c1) / (mx2 + my2 + c1)
    return lum * cs, cs, sx, sy


def ssim_wang(x: np.ndarray, y: np.ndarray, y_moments=None) -> float:
    """Wang et al. (2004) ``ssim_index``: 11×11 Gaussian (sigma 1.5), K = (0.01, 0.03), L = 255, 'valid'."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float(_ssim_terms(x, y, _G11, c1, c2, y_moments)[0].mean())


@register_metric("ssim", reference="VIFB metricsSsim.m: SSIM(F,VIS) + SSIM(F,IR)", min_size=11)
def ssim(F, A, B) -> float:
    """Sum over both sources of Wang's SSIM (11×11 Gaussian sigma 1.5, L = 255, valid window)."""
    fm = _moments(F, _G11)
    return ssim_wang(A, F, fm) + ssim_wang(B, F, fm)


@register_metric("ssim_skimage", reference="CDDFuse Evaluator.SSIM (skimage 0.19, data_range=2)", min_size=7)
def ssim_skimage(F, A, B) -> float:
    """Sum over both sources of scikit-image SSIM as CDDFuse calls it (7×7 uniform, data_range=2)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(F, A, data_range=2.0) + structural_similarity(F, B, data_range=2.0))


_MS_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def ms_ssim_wang(x: np.ndarray, y: np.ndarray) -> float:
    """Wang, Simoncelli & Bovik (2003) ``msssim.m``: 5 scales, weights 0.0448..0.1333, 2×2 mean downsampling."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mcs = []
    for level in range(5):
        full, cs, _, _ = _ssim_terms(x, y, _G11, c1, c2)
        if level == 4:
            last = full.mean()
            break
        mcs.append(cs.mean())
        x, y = downsample2(x), downsample2(y)
    vals = np.array(mcs + [last])
    # negative contrast terms would give complex powers; the reference code does not guard them either
    return float(np.prod(np.sign(vals) * np.abs(vals) ** _MS_WEIGHTS))


@register_metric("ms_ssim", reference="Wang et al. 2003 msssim.m, summed over both sources", min_size=176)
def ms_ssim(F, A, B) -> float:
    """Sum over both sources of Wang's 5-scale MS-SSIM (needs >= 176 px per side)."""
    return ms_ssim_wang(A, F) + ms_ssim_wang(B, F)


def _mef_ssim_single(seq: list[np.ndarray], f: np.ndarray, K: float = 0.03) -> float:
    """Ma et al. MEF-SSIM (``mef_ssim.m``) of fused ``f`` against the source stack ``seq``, vectorised.

    Per window the reference builds the desired patch r = s * sum_k w_k (x_k - mu_k) / ed_k with
    ``s = maxEd / ||.||`` and scores it against the fused patch with Gaussian-weighted SSIM statistics;
    all those sums are expressed here through uniform- and Gaussian-filtered moments.
    """
    ws = 11
    u = np.full(ws, 1.0 / ws)  # uniform sWindow = ones(11)/121 as a separable kernel
    mus, eds, dev2 = [], [], []
    for x in seq:
        mu = filter2_valid_sep(x, u)
        var = filter2_valid_sep(x * x, u) - mu * mu
        mus.append(mu)
        eds.append(np.sqrt(np.maximum(ws * ws * var, 0)) + 0.001)
        dev2.append(np.maximum(ws * ws * var, 0))
    # consistency map R = ||sum_k (x_k - mu_k)|| / sum_k ||x_k - mu_k||
    tot = sum(seq)
    mt = filter2_valid_sep(tot, u)
    num = np.sqrt(np.maximum(ws * ws * (filter2_valid_sep(tot * tot, u) - mt * mt), 0))
    den = sum(np.sqrt(d) for d in dev2)
    R = (num + EPS) / (den + EPS)
    R[R > 1] = 1 - EPS
    R[R < 0] = EPS
    p = np.tan(np.pi / 2 * R)
    p[p > 10] = 10
    wmap = [(ed / ws) ** p + EPS for ed in eds]
    norm = sum(wmap)
    coef = [w / norm / ed for w, ed in zip(wmap, eds)]  # c_k: r = s * sum_k c_k (x_k - mu_k)
    max_ed = np.maximum.reduce(eds)

    n = len(seq)
    # ||sum_k c_k (x_k - mu_k)||^2 over the uniform window: sum_{k,l} c_k c_l * 121 * cov_u(x_k, x_l)
    # Gaussian-weighted moments of d_k = x_k - mu_k (mu_k is the uniform mean at the window centre)
    g = _G11
    gx = [filter2_valid_sep(x, g) for x in seq]
    gf = filter2_valid_sep(f, g)
    gff = filter2_valid_sep(f * f, g)
    r_norm2 = np.zeros_like(mus[0])
    e_r = np.zeros_like(mus[0])  # sum g r / s
    e_r2 = np.zeros_like(mus[0])  # sum g r^2 / s^2
    e_rf = np.zeros_like(mus[0])  # sum g r f / s
    for k in range(n):
        e_r += coef[k] * (gx[k] - mus[k])
        e_rf += coef[k] * (filter2_valid_sep(seq[k] * f, g) - mus[k] * gf)
        for m in range(k, n):
            xkm = seq[k] * seq[m]
            cov_u = filter2_valid_sep(xkm, u) - mus[k] * mus[m]
            gkm = filter2_valid_sep(xkm, g) - mus[m] * gx[k] - mus[k] * gx[m] + mus[k] * mus[m]
            factor = 1.0 if k == m else 2.0
            r_norm2 += factor * coef[k] * coef[m] * ws * ws * cov_u
            e_r2 += factor * coef[k] * coef[m] * gkm
    r_norm = np.sqrt(np.maximum(r_norm2, 0))
    s = np.where(r_norm > 0, max_ed / np.where(r_norm > 0, r_norm, 1), 1.0)
    mu1 = s * e_r
    sigma1 = s * s * e_r2 - mu1 * mu1
    sigma2 = gff - gf * gf
    sigma12 = s * e_rf - mu1 * gf
    C = (K * 255) ** 2
    q = (2 * sigma12 + C) / (sigma1 + sigma2 + C)
    return float(q.mean())


@register_metric("mef_ssim_single", reference="Tang Evaluation mef_ssim.m (Ma et al. MEF-SSIM, one scale)", min_size=11)
def mef_ssim_single(F, A, B) -> float:
    """Ma et al.'s single-scale MEF-SSIM of F against the [IR, VIS] stack (K = 0.03)."""
    return _mef_ssim_single([A, B], F)


_MEF_WEIGHTS = np.array([0.0448, 0.2856, 0.3001])
_MEF_WEIGHTS = _MEF_WEIGHTS / _MEF_WEIGHTS.sum()


@register_metric(
    "mef_ssim", reference="Tang analysis_ms_ssim.m ('MS_SSIM' in Tang's tables): 3-level MEF-MS-SSIM", min_size=44
)
def mef_ssim(F, A, B) -> float:
    """The 3-level MEF-MS-SSIM (Ma et al.) that Tang's evaluation reports as "MS_SSIM"."""
    seq, f, qs = [A, B], F, []
    for level in range(3):
        qs.append(_mef_ssim_single(seq, f))
        if level < 2:
            seq, f = [downsample2(x) for x in seq], downsample2(f)
    return float(np.prod(np.asarray(qs) ** _MEF_WEIGHTS))


_G7 = gaussian_1d(7, 1.5)


def _ssim_yang(x, y):
    c = 2e-16
    mx, my = filter2_valid_sep(x, _G7), filter2_valid_sep(y, _G7)
    sx = filter2_valid_sep(x * x, _G7) - mx * mx
    sy = filter2_valid_sep(y * y, _G7) - my * my
    sxy = filter2_valid_sep(x * y, _G7) - mx * my
    smap = ((2 * mx * my + c) * (2 * sxy + c)) / ((mx * mx + my * my + c) * (sx + sy + c))
    return smap, sx, sy


@register_metric("qy", reference="Liu et al. toolbox metricYang.m (Yang et al. 2008)", min_size=11)
def qy(F, A, B) -> float:
    """Yang's SSIM-based fusion metric Qy (7×7 Gaussian windows, threshold 0.75)."""
    s_ab, va, vb = _ssim_yang(A, B)
    s_af, _, _ = _ssim_yang(A, F)
    s_bf, _, _ = _ssim_yang(B, F)
    binm = s_ab >= 0.75
    with np.errstate(invalid="ignore", divide="ignore"):
        lam = va / (va + vb)
    q = np.where(binm, lam * s_af + (1 - lam) * s_bf, np.maximum(s_af, s_bf))
    return float(q.mean())


def vifp_mscale(ref: np.ndarray, dist: np.ndarray) -> float:
    """Sheikh & Bovik pixel-domain VIF over 4 scales (``vifp_mscale.m``, = sewar ``vifp``)."""
    return _vifp_many([ref], dist)[0]


def _vifp_many(refs: list[np.ndarray], dist: np.ndarray) -> list[float]:
    """``vifp_mscale(ref, dist)`` for several references, filtering the distorted image once per scale."""
    sigma_nsq = 2.0
    num, den = [0.0] * len(refs), [0.0] * len(refs)
    refs = list(refs)
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        g = gaussian_1d(n, n / 5.0)
        if scale > 1:
            refs = [filter2_valid_sep(r, g)[::2, ::2] for r in refs]
            dist = filter2_valid_sep(dist, g)[::2, ::2]
        mu2 = filter2_valid_sep(dist, g)
        s2_full = filter2_valid_sep(dist * dist, g) - mu2 * mu2
        s2_full[s2_full < 0] = 0
        for i, ref in enumerate(refs):
            mu1 = filter2_valid_sep(ref, g)
            s1 = filter2_valid_sep(ref * ref, g) - mu1 * mu1
            s12 = filter2_valid_sep(ref * dist, g) - mu1 * mu2
            s2 = s2_full
            s1[s1 < 0] = 0
            gain = s12 / (s1 + 1e-10)
            sv = s2 - gain * s12
            low1 = s1 < 1e-10
            gain[low1] = 0
            sv[low1] = s2[low1]
            s1[low1] = 0
            low2 = s2 < 1e-10
            gain[low2] = 0
            sv[low2] = 0
            neg = gain < 0
            sv[neg] = s2[neg]
            gain[neg] = 0
            sv[sv <= 1e-10] = 1e-10
            num[i] += np.log10(1 + gain * gain * s1 / (sv + sigma_nsq)).sum()
            den[i] += np.log10(1 + s1 / sigma_nsq).sum()
    return [float(nu / de) if de != 0 else 1.0 for nu, de in zip(num, den)]


@register_metric("vif", reference="Tang vifp_mscale.m / CDDFuse VIFF / sewar vifp, summed over sources", min_size=41)
def vif(F, A, B) -> float:
    """Multi-scale pixel VIF (Sheikh-Bovik vifp, 4 scales) of F against IR plus against VIS."""
    return sum(_vifp_many([A, B], F))

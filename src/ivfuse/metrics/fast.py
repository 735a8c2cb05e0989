"""One pass over a triple for many metrics: :func:`compute_all` shares intermediates between metrics.

The registered metric functions (``Metric.fn``, in :mod:`.statistics`, :mod:`.structural`, :mod:`.gradient`,
:mod:`.information`, :mod:`.perceptual`) are the plain transcriptions of the reference tools and stay the
definition; this module computes the same values faster and is what ``ivfuse eval``/``score_triple``, the bench,
:func:`ivfuse.metrics.compute_metrics` and ``Metric.__call__`` use (metrics not in :data:`FAST_METRICS` are
computed by their own function). ``tests/test_metrics_fast.py`` holds the two equal (observed <= 5e-15 relative
on MSRS triples and the golden cases). What is shared or saved:

* one Sobel pass per image (``[-1 0 1; -2 0 2; -1 0 1]`` and its transpose, zero border) for Qabf and Nabf
  (whose mirror border differs on the outer frame only, recomputed there; its /8 Sobel is the same sum scaled by
  a power of two) and, on the min-max stretched images, Qcv (magnitude only, no angle);
* the fused image's 11×11 Gaussian moments for both SSIM terms, and VIF's distorted-image pyramid for both
  sources;
* Qcb: MATLAB filters with complex transforms (and ``fftconvolve`` transformed each image twice, once per
  Gaussian); the CSF responses of Qcb and Qcv are real and even, so the filtered images are real (MATLAB's
  imaginary parts are rounding noise): one real transform pair per image, then both 31×31 Gaussians directly
  (separable);
* the min-max stretched images (``normalize1``) once per image for Qcb and Qcv; the fused 8-bit histogram for EN
  and MI; the MSE for PSNR;
* the per-pixel stages of SSIM, VIF, Qabf, Nabf, Qcb and the FMI windows run as numba kernels
  (:mod:`._kernels`), one pass per row without image-sized temporaries; without numba, numpy code with the same
  values runs instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
from scipy import fft as sfft

from ..errors import InputError
from ._filters import filter2_valid_sep, gaussian_1d, normalize1
from ._kernels import kernels
from .base import DEFAULT_METRICS, create_metric, to_gray255

__all__ = ["FAST_METRICS", "compute_all", "compute_arrays"]

_DX = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)  # correlation kernels (cv2.filter2D)
_DY = np.ascontiguousarray(_DX.T)
_HALF_PI = math.pi / 2
_LN10 = math.log(10.0)


class _Triple:
    """Lazily computed intermediates of one (fused, ir, vis) triple; ``F``, ``A``, ``B`` as in the metrics."""

    def __init__(self, f: np.ndarray, a: np.ndarray | None, b: np.ndarray | None):
        self.img = {"F": f, "A": a, "B": b}
        self._memo: dict = {}

    def get(self, key, fn: Callable[[], Any]):
        try:
            return self._memo[key]
        except KeyError:
            v = self._memo[key] = fn()
            return v

    # ---- per-image intermediates ----
    def sobel(self, k: str, norm: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(dx, dy): 3×3 Sobel correlations with zero border (MATLAB ``filter2(.., 'same')``)."""
        x = self.norm1(k) if norm else self.img[k]
        return self.get(("sobel", k, norm), lambda: _sobel_zero(x))

    def sobel_mirror(self, k: str) -> tuple[np.ndarray, np.ndarray]:
        """(dx, dy) with a mirrored border (Tang's ``sobel_fn.m``, unscaled): the zero-border result, outer frame
        redone."""
        return self.get(("sobel_m", k), lambda: _to_mirror(self.img[k], *self.sobel(k)))

    def norm1(self, k: str) -> np.ndarray:
        return self.get(("norm1", k), lambda: normalize1(self.img[k]))

    def u8(self, k: str) -> np.ndarray:
        x = self.img[k]
        return self.get(("u8", k), lambda: np.clip(np.round(x), 0, 255).astype(np.int64).ravel())

    def hist(self, k: str) -> np.ndarray:
        return self.get(("hist", k), lambda: np.bincount(self.u8(k), minlength=256) / self.img[k].size)


def _sobel_zero(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (
        cv2.filter2D(x, cv2.CV_64F, _DX, borderType=cv2.BORDER_CONSTANT),
        cv2.filter2D(x, cv2.CV_64F, _DY, borderType=cv2.BORDER_CONSTANT),
    )


def _to_mirror(x: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-border Sobel -> mirror-border (BORDER_REFLECT_101) Sobel: only the outer one-pixel frame differs."""
    out = []
    m = cv2.BORDER_REFLECT_101
    for d, k in ((dx, _DX), (dy, _DY)):
        d = d.copy()
        d[:1] = cv2.filter2D(x[:2], cv2.CV_64F, k, borderType=m)[:1]
        d[-1:] = cv2.filter2D(x[-2:], cv2.CV_64F, k, borderType=m)[-1:]
        d[:, :1] = cv2.filter2D(np.ascontiguousarray(x[:, :2]), cv2.CV_64F, k, borderType=m)[:, :1]
        d[:, -1:] = cv2.filter2D(np.ascontiguousarray(x[:, -2:]), cv2.CV_64F, k, borderType=m)[:, -1:]
        out.append(d)
    return out[0], out[1]


# ------------------------------------------------------------------------------------------- statistics
def _en(t: _Triple) -> float:
    p = t.hist("F")
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _mi(t: _Triple) -> float:
    fi = t.u8("F")
    n = fi.size
    pf = t.hist("F")
    pf = pf[pf > 0]
    hf = -(pf * np.log2(pf)).sum()
    tot = 0.0
    for k in ("A", "B"):
        yi = t.u8(k)
        joint = np.bincount(fi * 256 + yi, minlength=256 * 256) / n
        joint = joint[joint > 0]
        py = t.hist(k)
        py = py[py > 0]
        tot += hf + (-(py * np.log2(py)).sum()) - (-(joint * np.log2(joint)).sum())
    return float(tot)


def _mse(t: _Triple) -> float:
    F, A, B = t.img["F"], t.img["A"], t.img["B"]
    return t.get("mse", lambda: float((np.mean((A - F) ** 2) + np.mean((B - F) ** 2)) / 2.0))


def _psnr(t: _Triple) -> float:
    m = _mse(t)
    return math.inf if m == 0 else 10.0 * math.log10(255.0**2 / m)


def _psnr_cddfuse(t: _Triple) -> float:
    m = _mse(t)
    return math.inf if m == 0 else 10.0 * math.log10(float(t.img["F"].max()) ** 2 / m)


# ------------------------------------------------------------------------------------------- Qabf / Nabf
def _qabf_side(dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Qabf's ``conv2`` Sobel (sx = -dx, sy = dy): magnitude and ``atan(sy/sx)`` (pi/2 where sx == 0)."""
    g = np.sqrt(dx * dx + dy * dy)
    zero = dx == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.arctan(dy / -dx)
    a[zero] = _HALF_PI
    return g, a


def _qabf_q(ga, aa, gf, af) -> np.ndarray:
    """Q^{AF} map, as ``gradient._qabf_q``: G = min/max ratio (gf where equal), orientation term, two sigmoids."""
    with np.errstate(divide="ignore", invalid="ignore"):
        G = np.minimum(ga, gf) / np.maximum(ga, gf)
    eq = ga == gf
    G[eq] = gf[eq]
    # 0.9994 / (1 + exp(-15 (G - 0.5))) * 0.9879 / (1 + exp(-22 (Aa - 0.8))), Aa = 1 - |aa - af| / (pi/2)
    eg = np.exp(-15 * (G - 0.5))
    eg += 1
    d = np.abs(aa - af)
    d /= _HALF_PI
    ea = np.exp(-22 * ((1 - d) - 0.8))
    ea += 1
    qg = 0.9994 / eg
    qg *= 0.9879 / ea
    return qg


def _qabf(t: _Triple) -> float:
    K = kernels()
    if K is not None:
        num, den = K["qabf_sums"](*t.sobel("A"), *t.sobel("B"), *t.sobel("F"))
        return float(num / den)
    ga, aa = _qabf_side(*t.sobel("A"))
    gb, ab = _qabf_side(*t.sobel("B"))
    gf, af = _qabf_side(*t.sobel("F"))
    qa, qb = _qabf_q(ga, aa, gf, af), _qabf_q(gb, ab, gf, af)
    qa *= ga
    qb *= gb
    qa += qb
    return float(qa.sum() / (ga + gb).sum())


def _nabf_from(sa, sb, sf) -> float:
    """``analysis_nabf(f, I1, I2)`` from unscaled mirror-border Sobels (dx, dy) of I1, I2 and f."""
    gs = [np.sqrt(dx * dx + dy * dy) / 8 for dx, dy in (sa, sb, sf)]  # = sqrt(gh^2 + gv^2) of the /8 Sobel
    gA, gB, gF = gs
    wtA = np.where(gA >= 2, gA * np.sqrt(gA), 0.001)
    wtB = np.where(gB >= 2, gB * np.sqrt(gB), 0.001)
    wt_sum = np.sum(wtA + wtB)
    na = (gF > gA) & (gF > gB)
    gA, gB, gF, wtA, wtB = gA[na], gB[na], gF[na], wtA[na], wtB[na]

    def angle(s):
        gv, gh = s[0][na], s[1][na]  # atan(gv/gh) of the /8 Sobel = atan(dx/dy)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.arctan(gv / gh)
        a[(gv == 0) & (gh == 0)] = 0.0
        return a

    aF = angle(sf)

    def q(g, s, wt):
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(g > gF, gF / g, g / gF)
        r[(g == 0) | (gF == 0)] = 0.0
        ar = np.abs(np.abs(angle(s) - aF) - math.pi / 2) * 2 / math.pi
        qg = 0.9999 / (1 + np.exp(-19 * (r - 0.5)))
        qa = 0.9995 / (1 + np.exp(-22 * (ar - 0.5)))
        return np.sum((1 - np.sqrt(qg * qa)) * wt)

    return float((q(gA, sa, wtA) + q(gB, sb, wtB)) / wt_sum)


def _nabf_any(t: _Triple, i1: str, i2: str, f: str) -> float:
    K = kernels()
    if K is not None:
        tot, wsum = K["nabf_sums"](*t.sobel_mirror(i1), *t.sobel_mirror(i2), *t.sobel_mirror(f))
        return float(tot / wsum)
    return _nabf_from(t.sobel_mirror(i1), t.sobel_mirror(i2), t.sobel_mirror(f))


def _nabf(t: _Triple) -> float:
    return _nabf_any(t, "A", "B", "F")


def _nabf_tang_as_called(t: _Triple) -> float:
    return _nabf_any(t, "B", "F", "A")


# ------------------------------------------------------------------------------------------- SSIM / VIF
_G11 = gaussian_1d(11, 1.5)
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _moments11(t: _Triple, k: str):
    x = t.img[k]

    def mk():
        m = filter2_valid_sep(x, _G11)
        return m, filter2_valid_sep(x * x, _G11) - m * m

    return t.get(("mom11", k), mk)


def _ssim(t: _Triple) -> float:
    F = t.img["F"]
    my, sy = _moments11(t, "F")
    my2 = my * my
    tot = 0.0
    K = kernels()
    for k in ("A", "B"):
        x = t.img[k]
        mx, sx = _moments11(t, k)
        if K is not None:
            fxy = filter2_valid_sep(x * F, _G11)
            tot += K["ssim_sum"](mx, sx, my, sy, fxy, _C1, _C2) / mx.size
            continue
        mxy = mx * my
        sxy = filter2_valid_sep(x * F, _G11)
        sxy -= mxy
        # (2 mxy + c1)(2 sxy + c2) / ((mx^2 + my^2 + c1)(sx + sy + c2)), in the order of structural._ssim_terms
        cs = (2 * sxy + _C2) / (sx + sy + _C2)
        lum = (2 * mxy + _C1) / (mx * mx + my2 + _C1)
        lum *= cs
        tot += float(lum.mean())
    return tot


@lru_cache(maxsize=8)
def _vif_kernels():
    return [gaussian_1d(2 ** (4 - s + 1) + 1, (2 ** (4 - s + 1) + 1) / 5.0) for s in range(1, 5)]


def _vif(t: _Triple) -> float:
    """``structural._vifp_many([A, B], F)`` summed: the per-pixel stage in one compiled pass per scale and source
    (without numba, the reference function itself)."""
    from .structural import _vifp_many

    K = kernels()
    if K is None:
        return sum(_vifp_many([t.img["A"], t.img["B"]], t.img["F"]))
    refs = [t.img["A"], t.img["B"]]
    dist = t.img["F"]
    num, den = [0.0, 0.0], [0.0, 0.0]
    for scale, g in enumerate(_vif_kernels(), start=1):
        if scale > 1:
            refs = [filter2_valid_sep(r, g)[::2, ::2] for r in refs]
            dist = filter2_valid_sep(dist, g)[::2, ::2]
        mu2 = filter2_valid_sep(dist, g)
        s2 = filter2_valid_sep(dist * dist, g) - mu2 * mu2
        s2[s2 < 0] = 0
        for i, ref in enumerate(refs):
            w = mu2.shape[1]
            buf, lbuf, ibuf = np.empty(2 * w), np.empty(2 * w), np.empty(2 * w, np.int64)
            nu, de = K["vif_sums"](
                filter2_valid_sep(ref, g),
                filter2_valid_sep(ref * ref, g),
                mu2,
                s2,
                filter2_valid_sep(ref * dist, g),
                buf,
                lbuf,
                ibuf,
            )
            num[i] += nu / _LN10  # the reference sums log10
            den[i] += de / _LN10
    return sum(float(nu / de) if de != 0 else 1.0 for nu, de in zip(num, den))


# ------------------------------------------------------------------------------------------- FMI
def _fmi(t: _Triple) -> float:
    """``fmi`` through the compiled ``_kernels._fmi_rows`` (row blocks over threads, as ``information.fmi_map``)."""
    from .information import _fmi_threads, fmi_map

    K = kernels()
    a, b, f = (np.ascontiguousarray(t.img[k], dtype=np.float64) for k in ("A", "B", "F"))
    if K is None:
        return float(fmi_map(a, b, f).mean())
    out = np.empty((a.shape[0] - 2, a.shape[1] - 2))
    rows = K["fmi_rows"]
    n = min(_fmi_threads(), out.shape[0])
    if n == 1:
        rows(a, b, f, out, 0, out.shape[0])
    else:
        from concurrent.futures import ThreadPoolExecutor

        edges = np.linspace(0, out.shape[0], min(4 * n, out.shape[0]) + 1).astype(int)
        with ThreadPoolExecutor(n) as ex:
            list(ex.map(lambda i: rows(a, b, f, out, edges[i], edges[i + 1]), range(len(edges) - 1)))
    return float(out.mean())


# ------------------------------------------------------------------------------------------- Qcb / Qcv
def _freqspace_r(h: int, w: int, su: float, sv: float) -> np.ndarray:
    """r = sqrt(u^2 + v^2) on MATLAB's ``freqspace`` grid scaled by (su, sv), in FFT order (``ifftshift``)."""
    fu = (np.arange(w) - np.floor(w / 2)) * (2.0 / w)
    fv = (np.arange(h) - np.floor(h / 2)) * (2.0 / h)
    u, v = np.meshgrid(fu, fv)
    u, v = su * u, sv * v
    return np.fft.ifftshift(np.sqrt(u * u + v * v))


def _gauss31_1d(sigma: float) -> np.ndarray:
    """1-D factor of ``perceptual._gauss31``: exp(-x^2 / 2 s^2) / sqrt(2 pi s^2), x = -15..15."""
    x = np.arange(-15, 16, dtype=np.float64)
    return np.exp(-(x * x) / (2 * sigma * sigma)) / math.sqrt(2 * math.pi * sigma * sigma)


_Q1, _Q2 = _gauss31_1d(2.0), _gauss31_1d(4.0)


@lru_cache(maxsize=8)
def _qcb_plan(h: int, w: int) -> np.ndarray:
    r = _freqspace_r(h, w, w / 30, h / 30)
    return np.exp(-((r / 15.3870) ** 2)) - 0.7622 * np.exp(-((r / 1.3456) ** 2))


def _csf_pair(x: np.ndarray, y: np.ndarray | None, resp: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """MATLAB ``ifft2(ifftshift(fftshift(fft2(x)) .* R))`` for real x (and y) and a real, even response R
    (given in FFT order): the result is real (MATLAB's imaginary part is rounding noise), so real transforms."""
    half = resp[:, : x.shape[1] // 2 + 1]
    out = [sfft.irfft2(sfft.rfft2(v) * half, s=x.shape) if v is not None else None for v in (x, y)]
    return out[0], out[1]


def _qcb_contrast(y: np.ndarray) -> np.ndarray:
    """Local band-limited contrast of the CSF-filtered image ``y`` (``filter2(G, y, 'same')``, G 31×31 Gaussian)."""
    y1 = cv2.sepFilter2D(y, cv2.CV_64F, _Q1, _Q1, borderType=cv2.BORDER_CONSTANT)
    y2 = cv2.sepFilter2D(y, cv2.CV_64F, _Q2, _Q2, borderType=cv2.BORDER_CONSTANT)
    y1 /= y2
    y1 -= 1
    c = np.abs(y1, out=y1)
    c2 = c * c
    return (c2 * c) / (c2 + 0.0001)  # k c^p / (h c^q + Z), k = h = 1, p = 3, q = 2


def _qcb(t: _Triple) -> float:
    a, b, f = t.norm1("A"), t.norm1("B"), t.norm1("F")
    resp = _qcb_plan(*a.shape)
    ya, yb = _csf_pair(a, b, resp)
    yf, _ = _csf_pair(f, None, resp)
    K = kernels()
    if K is not None:
        gs = []
        for y in (ya, yb, yf):
            gs += [cv2.sepFilter2D(y, cv2.CV_64F, g, g, borderType=cv2.BORDER_CONSTANT) for g in (_Q1, _Q2)]
        return float(K["qcb_sum"](*gs) / a.size)
    c1, c2, cf = _qcb_contrast(ya), _qcb_contrast(yb), _qcb_contrast(yf)
    with np.errstate(divide="ignore", invalid="ignore"):
        q1 = np.where(c1 < cf, c1 / cf, cf / c1)
        q2 = np.where(c2 < cf, c2 / cf, cf / c2)
        s1, s2 = c1 * c1, c2 * c2
        den = s1 + s2
        val = (s1 / den) * q1 + (s2 / den) * q2
    return float(np.mean(val))


@lru_cache(maxsize=8)
def _qcv_plan(h: int, w: int) -> np.ndarray:
    r = _freqspace_r(h, w, w / 8, h / 8)
    return 2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1))


def _block_sums(x: np.ndarray, size: int) -> np.ndarray:
    h, w = x.shape
    ph, pw = -h % size, -w % size
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw)))
    return x.reshape(x.shape[0] // size, size, x.shape[1] // size, size).sum(axis=(1, 3))


def _qcv(t: _Triple) -> float:
    a, b, f = t.norm1("A"), t.norm1("B"), t.norm1("F")
    ws = 16
    rams = []
    for k in ("A", "B"):
        dx, dy = t.sobel(k, norm=True)
        g2 = dx * dx + dy * dy
        g = np.sqrt(g2)
        rams.append(_block_sums(g2 * g2 * g, ws))  # g ** 5
    Ds = []
    for d in _csf_pair(a - f, b - f, _qcv_plan(*a.shape)):
        Ds.append(_block_sums(d * d, ws) / (ws * ws))
    return float((rams[0] * Ds[0] + rams[1] * Ds[1]).sum() / (rams[0] + rams[1]).sum())


# ------------------------------------------------------------------------------------------- registry
#: metrics with a shared-intermediate implementation here; any other registered metric is computed by its own
#: function inside :func:`compute_all`.
FAST_METRICS: dict[str, Callable[[_Triple], float]] = {
    "en": _en,
    "mi": _mi,
    "mse": _mse,
    "psnr": _psnr,
    "psnr_cddfuse": _psnr_cddfuse,
    "qabf": _qabf,
    "nabf": _nabf,
    "nabf_tang_as_called": _nabf_tang_as_called,
    "ssim": _ssim,
    "vif": _vif,
    "fmi": _fmi,
    "qcb": _qcb,
    "qcv": _qcv,
}


def compute_all(fused: Any, ir: Any = None, vis: Any = None, names: Sequence[str] | None = None) -> dict[str, float]:
    """Score one triple with several metrics, sharing intermediates; ``{name: value}`` in the order asked.

    Inputs as for any metric (numpy 0–255, torch [0, 1], colour -> luma); ``names`` defaults to
    :data:`~ivfuse.metrics.DEFAULT_METRICS`. Values equal those of the individual metric functions (to rounding).
    """
    objs = [create_metric(n) for n in (names if names is not None else DEFAULT_METRICS)]
    f = to_gray255(fused, "fused")
    need = any(m.needs_sources for m in objs)
    a = to_gray255(ir, "ir") if need and ir is not None else None
    b = to_gray255(vis, "vis") if need and vis is not None else None
    return compute_arrays(f, a, b, objs)


def compute_arrays(
    f: np.ndarray, a: np.ndarray | None, b: np.ndarray | None, metrics, timings: dict | None = None
) -> dict[str, float]:
    """:func:`compute_all` on already-converted float64 H×W arrays (``metrics``: names or :class:`Metric` objects).

    ``timings``: if a dict, receives each metric's wall time in seconds (an intermediate shared by several
    metrics is charged to the first one that needs it).
    """
    objs = [create_metric(m) if isinstance(m, str) else m for m in metrics]
    t = _Triple(f, a, b)
    out = {}
    for m in objs:
        t0 = time.perf_counter() if timings is not None else 0.0
        fa, fb = (a, b) if m.needs_sources else (None, None)
        if m.needs_sources and (a is None or b is None):
            raise InputError(f"metric '{m.name}' needs the fused, infrared and visible images")
        m.check(f, fa, fb)
        fast = FAST_METRICS.get(m.name)
        out[m.name] = float(fast(t)) if fast is not None else float(m.fn(f, fa, fb))
        if timings is not None:
            timings[m.name] = time.perf_counter() - t0
    return out

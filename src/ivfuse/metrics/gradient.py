"""Edge-preservation metrics: Qabf (Xydeas & Petrovic), Nabf (Kumar / Petrovic artefacts), Qg (Liu toolbox).

Each function takes float64 H×W arrays on 0–255 as ``(F, A, B)`` = (fused, infrared, visible).
"""

from __future__ import annotations

import math

import numpy as np

from ._filters import conv2_same, filter2_same, sobel_tang
from .base import register_metric

_H1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
_H3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


def _qabf_grad(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx, sy = conv2_same(x, _H3), conv2_same(x, _H1)
    g = np.sqrt(sx * sx + sy * sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(sx == 0, math.pi / 2, np.arctan(sy / np.where(sx == 0, 1, sx)))
    return g, a


def _qabf_q(ga, aa, gf, af) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        G = np.where(ga > gf, gf / ga, np.where(ga == gf, gf, ga / gf))
    Aa = 1 - np.abs(aa - af) / (math.pi / 2)
    qg = 0.9994 / (1 + np.exp(-15 * (G - 0.5)))
    qa = 0.9879 / (1 + np.exp(-22 * (Aa - 0.8)))
    return qg * qa


@register_metric("qabf", reference="VIFB metricsQabf.m = Tang analysis_Qabf.m = CDDFuse Evaluator.Qabf")
def qabf(F, A, B) -> float:
    """Xydeas & Petrovic gradient-based edge preservation Q^{AB/F} (L = 1)."""
    ga, aa = _qabf_grad(A)
    gb, ab = _qabf_grad(B)
    gf, af = _qabf_grad(F)
    qa, qb = _qabf_q(ga, aa, gf, af), _qabf_q(gb, ab, gf, af)
    return float((qa * ga + qb * gb).sum() / (ga + gb).sum())


def nabf_petrovic(f: np.ndarray, i1: np.ndarray, i2: np.ndarray) -> float:
    """``analysis_nabf(f, I1, I2)`` of Tang's evaluation (Kumar's modified N^{AB/F}), vectorised.

    Only pixels where the fused gradient exceeds both source gradients contribute to the numerator, so
    the edge-preservation terms are evaluated on those pixels alone.
    """
    gvA, ghA = sobel_tang(i1)
    gvB, ghB = sobel_tang(i2)
    gvF, ghF = sobel_tang(f)
    gA = np.sqrt(ghA**2 + gvA**2)
    gB = np.sqrt(ghB**2 + gvB**2)
    gF = np.sqrt(ghF**2 + gvF**2)
    wtA = np.where(gA >= 2, gA * np.sqrt(gA), 0.001)  # gA ** 1.5
    wtB = np.where(gB >= 2, gB * np.sqrt(gB), 0.001)
    wt_sum = np.sum(wtA + wtB)
    na = (gF > gA) & (gF > gB)
    gA, gB, gF, wtA, wtB = gA[na], gB[na], gF[na], wtA[na], wtB[na]
    gvA, ghA, gvB, ghB, gvF, ghF = gvA[na], ghA[na], gvB[na], ghB[na], gvF[na], ghF[na]

    def ratio(g):
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(g > gF, gF / g, g / gF)
        return np.where((g == 0) | (gF == 0), 0.0, r)

    def angle(gv, gh):
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.arctan(gv / gh)  # gh == 0, gv != 0 -> +-pi/2 as MATLAB's atan(+-Inf)
        return np.where((gv == 0) & (gh == 0), 0.0, a)

    aF = angle(gvF, ghF)
    aAF = np.abs(np.abs(angle(gvA, ghA) - aF) - math.pi / 2) * 2 / math.pi
    aBF = np.abs(np.abs(angle(gvB, ghB) - aF) - math.pi / 2) * 2 / math.pi

    def q(gr, ar):
        qg = 0.9999 / (1 + np.exp(-19 * (gr - 0.5)))
        qa = 0.9995 / (1 + np.exp(-22 * (ar - 0.5)))
        return np.sqrt(qg * qa)

    QAF, QBF = q(ratio(gA), aAF), q(ratio(gB), aBF)
    return float(np.sum((1 - QAF) * wtA + (1 - QBF) * wtB) / wt_sum)


@register_metric("nabf", lower_better=True, reference="Tang analysis_nabf.m called fused-first (documented order)")
def nabf(F, A, B) -> float:
    """Rate of fusion artefacts N^{AB/F} (Kumar's modification), fused image first as documented."""
    return nabf_petrovic(F, A, B)


@register_metric(
    "nabf_tang_as_called", lower_better=True, reference="Tang analysis_Reference.m: analysis_nabf(ir, vis, fused)"
)
def nabf_tang_as_called(F, A, B) -> float:
    """Nabf with the argument-order bug of Tang's analysis_Reference.m (reproduces published tables)."""
    return nabf_petrovic(A, B, F)


_FLT1 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
_FLT2 = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float64)


def sobel_liu(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient magnitude and angle as in Liu's ``metricXydeas.m`` / VIFB ``metricsQcv.m``."""
    gx, gy = filter2_same(x, _FLT1), filter2_same(x, _FLT2)
    g = np.sqrt(gx * gx + gy * gy)
    gx = gx + (gx == 0) * 0.00001
    return g, np.arctan(gy / gx)


@register_metric("qg", reference="Liu et al. toolbox metricXydeas.m (gradient-based Qg)")
def qg(F, A, B) -> float:
    """Gradient-based fusion metric Qg of Liu et al.'s toolbox (Xydeas & Petrovic, per-pixel normalised)."""
    fG, fA = sobel_liu(F)
    out = []
    Ws = []
    for src in (A, B):
        sG, sA = sobel_liu(src)
        bimap = sG > fG
        sG = sG + (sG == 0) * 0.00001
        b1 = fG / sG
        fG = fG + (fG == 0) * 0.00001
        b2 = sG / fG
        G = bimap * b1 + (1 - bimap) * b2
        Ang = np.abs(np.abs(sA - fA) - math.pi / 2) * 2 / math.pi
        Qg_ = 1 / (1 + np.exp(-10 * (G - 0.5)))
        Qa = 1 / (1 + np.exp(-20 * (Ang - 0.75)))
        out.append(Qg_ * Qa)
        Ws.append(sG)
    return float(np.mean((out[0] * Ws[0] + out[1] * Ws[1]) / (Ws[0] + Ws[1])))

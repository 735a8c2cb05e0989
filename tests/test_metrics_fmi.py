"""Fast FMI (``fmi``, ``fmi_dct``) against a plain per-window transcription of Tang's ``analysis_fmi.m``.

The compiled staircase kernel and the vectorised numpy path of :mod:`ivfuse.metrics.information` must give,
window by window, what the reference loops give. The transcription below follows the MATLAB/Octave code
statement by statement, including its two value-changing details: ``fSub`` is overwritten by its normalised
version in the infrared branch (so the visible branch's "equal windows" test sees the normalised fused window),
and ``mean`` sums sequentially (so two constant windows get c = 1). It was checked against GNU Octave running
``analysis_fmi.m`` on the four triples below (largest per-window difference 1.8e-14).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.fft import dctn

import ivfuse
from ivfuse.metrics import information


# ---------------------------------------------------------------------------------------------------------------
# Slow reference: one window at a time, sequential sums, log2, no vectorisation.
# ---------------------------------------------------------------------------------------------------------------
def _neg_xlog2x(p: float) -> float:
    """``real(-p .* log2(p))``; for p < 0 the real part of log2(p) is log2(|p|)."""
    return -p * math.log2(abs(p))


def _ref_fmi_pair(s_win: list[float], f_win: list[float]) -> float:
    n = 9
    s_max, s_min = max(s_win), min(s_win)
    s_nrm = [1.0] * n if s_max == s_min else [(v - s_min) / (s_max - s_min) for v in s_win]
    f_max, f_min = max(f_win), min(f_win)
    f_nrm = [1.0] * n if f_max == f_min else [(v - f_min) / (f_max - f_min) for v in f_win]
    # sum(sum(sub)): column sums of the 3x3 window, then their sum
    s_tot = (s_nrm[0] + s_nrm[1] + s_nrm[2]) + (s_nrm[3] + s_nrm[4] + s_nrm[5]) + (s_nrm[6] + s_nrm[7] + s_nrm[8])
    f_tot = (f_nrm[0] + f_nrm[1] + f_nrm[2]) + (f_nrm[3] + f_nrm[4] + f_nrm[5]) + (f_nrm[6] + f_nrm[7] + f_nrm[8])
    s_pdf = [v / s_tot for v in s_nrm]
    f_pdf = [v / f_tot for v in f_nrm]
    s_cdf, f_cdf = [s_pdf[0]], [f_pdf[0]]
    for i in range(1, n):
        s_cdf.append(s_pdf[i] + s_cdf[i - 1])
        f_cdf.append(f_pdf[i] + f_cdf[i - 1])
    s_mean = sum(s_pdf) / n
    f_mean = sum(f_pdf) / n
    s_tmp = [v - s_mean for v in s_pdf]
    f_tmp = [v - f_mean for v in f_pdf]
    num = sum(x * y for x, y in zip(s_tmp, f_tmp))
    c = 0.0 if num == 0 else num / math.sqrt(sum(x * x for x in s_tmp) * sum(y * y for y in f_tmp))
    e_s = e2_s = e_f = e2_f = 0.0
    for i in range(1, n + 1):
        e_s += i * s_pdf[i - 1]
        e2_s += i**2 * s_pdf[i - 1]
        e_f += i * f_pdf[i - 1]
        e2_f += i**2 * f_pdf[i - 1]
    s_sd = math.sqrt(e2_s - e_s**2)
    f_sd = math.sqrt(e2_f - e_f**2)

    if c >= 0:

        def bound(x, y):  # Frechet upper bound
            return 0.5 * (x + y - abs(x - y))

        degenerate = c == 0 or s_sd == 0 or f_sd == 0
    else:

        def bound(x, y):  # Frechet lower bound
            return 0.5 * (x + y - 1 + abs(x + y - 1))

        degenerate = s_sd == 0 or f_sd == 0
    if degenerate:
        mix = 0.0
    else:
        cov = 0.0
        for i in range(n):
            for j in range(n):
                cov += bound(f_cdf[i], s_cdf[j]) - f_cdf[i] * s_cdf[j]
        mix = c / (cov / (f_sd * s_sd))
    joint_entropy = 0.0
    for i in range(n):
        for j in range(n):
            d = bound(f_cdf[i], s_cdf[j])
            if i > 0:
                d -= bound(f_cdf[i - 1], s_cdf[j])
            if j > 0:
                d -= bound(f_cdf[i], s_cdf[j - 1])
            if i > 0 and j > 0:
                d += bound(f_cdf[i - 1], s_cdf[j - 1])
            jpdf = mix * d + (1 - mix) * f_pdf[i] * s_pdf[j]
            if jpdf != 0:
                joint_entropy += _neg_xlog2x(jpdf)
    s_entropy = sum(-p * math.log2(p) for p in s_pdf if p != 0)
    f_entropy = sum(-p * math.log2(p) for p in f_pdf if p != 0)
    mi = s_entropy + f_entropy - joint_entropy
    return 0.0 if mi == 0 else 2 * mi / (s_entropy + f_entropy)


def _normalised(win: list[float]) -> list[float]:
    hi, lo = max(win), min(win)
    return [1.0] * 9 if hi == lo else [(v - lo) / (hi - lo) for v in win]


def reference_fmi_map(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.ndarray:
    """``fmi_map`` of ``analysis_fmi.m`` (w = 3) before its final ``mean2``."""
    h, w = a.shape
    out = np.zeros((h - 2, w - 2))
    for p in range(1, h - 1):
        for q in range(1, w - 1):

            def sub(x, p=p, q=q):  # x(p-1:p+1, q-1:q+1)(:), column-major
                return [float(v) for v in x[p - 1 : p + 2, q - 1 : q + 2].T.ravel()]

            a_sub, b_sub, f_sub = sub(a), sub(b), sub(f)
            if a_sub == f_sub:
                fmi_af = 1.0
            else:
                fmi_af = _ref_fmi_pair(a_sub, f_sub)
                f_sub = _normalised(f_sub)  # the reference overwrites fSub here
            fmi_bf = 1.0 if b_sub == f_sub else _ref_fmi_pair(b_sub, f_sub)
            out[p - 1, q - 1] = (fmi_af + fmi_bf) / 2
    return out


# ---------------------------------------------------------------------------------------------------------------
# Test triples
# ---------------------------------------------------------------------------------------------------------------
def _crafted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """17x23 integer triple (sizes not multiples of 3) with every special window of the reference."""
    rng = np.random.default_rng(7)
    h, w = 17, 23
    a, b, f = (rng.integers(0, 256, (h, w)).astype(np.float64) for _ in range(3))
    a[0:5, 0:6], f[0:5, 0:6], b[0:5, 0:6] = 40, 90, 90  # constant windows; visible == fused
    b[6:11, 0:7] = f[6:11, 0:7]  # visible == fused, infrared differs
    a[0:5, 8:14] = f[0:5, 8:14]  # infrared == fused
    b[0:5, 8:14] = 3
    a[8:14, 9:16], f[8:14, 9:16], b[8:14, 9:16] = 0, 5, 1  # flat, with single bright pixels: zero-entropy pmfs
    a[10, 12], f[11, 12] = 200, 50
    f[11:14, 0:5], b[11:14, 0:5] = 7, 1  # constant fused (normalised: ones) and visible == ones
    a[11:14, 0:5] = rng.integers(0, 3, (3, 5))
    yy, xx = np.mgrid[0:h, 0:w]
    f[:, 16:] = np.round(128 + 60 * np.sin(xx[:, 16:] / 2.0) + 3 * yy[:, 16:])  # smooth structure
    b[:, 16:] = 255 - f[:, 16:]  # anti-correlated with the fused image (c < 0, lower Frechet bound)
    return a, b, f


def _triples() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    a2, b2, f2 = (rng.random((11, 14)) * 255 for _ in range(3))
    return {
        "crafted": _crafted(),
        "random_float": (a2, b2, f2),
        "dct": tuple(dctn(x, type=2, norm="ortho") for x in (a2, b2, f2)),
        "ties": tuple(rng.integers(0, 3, (10, 13)).astype(np.float64) for _ in range(3)),
    }


TRIPLES = _triples()


@pytest.fixture(scope="module")
def reference_maps():
    return {k: reference_fmi_map(*t) for k, t in TRIPLES.items()}


def test_crafted_triple_has_the_edge_cases():
    """The crafted triple really contains the windows whose handling differs between plausible implementations."""
    a, b, f = TRIPLES["crafted"]
    wins = [information._windows(x) for x in (a, b, f)]
    const = [np.ptp(wx, axis=1) == 0 for wx in wins]
    same_af = np.all(wins[0] == wins[2], axis=1)
    same_bf = np.all(wins[1] == wins[2], axis=1)
    one_hot = [np.sum(wx > wx.min(axis=1, keepdims=True), axis=1) == 1 for wx in wins]
    assert np.sum(const[0] & const[2] & ~same_af) >= 4  # two different constant windows
    assert np.sum(same_bf & ~same_af & ~const[2]) >= 4  # visible == fused (raw) while infrared differs
    assert np.sum(same_af) >= 4
    assert np.sum(one_hot[0]) >= 4 and np.sum(one_hot[2]) >= 4  # pmfs with zero entropy
    assert np.sum(one_hot[0] & one_hot[2]) >= 1
    ones_b = np.all(wins[1] == 1, axis=1)
    assert np.sum(ones_b & const[2] & ~same_af) >= 1  # visible equals the *normalised* fused window


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("name", sorted(TRIPLES))
def test_fast_fmi_matches_per_window_reference(reference_maps, name, backend):
    if backend == "numba":
        pytest.importorskip("numba")
    ref = reference_maps[name]
    got = information.fmi_map(*TRIPLES[name], backend=backend)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert information.fmi_haghighat(*TRIPLES[name]) == pytest.approx(ref.mean(), rel=1e-10)


def test_reference_special_windows(reference_maps):
    """What the reference does on the special windows (and the fast map with it): values, not just agreement."""
    ref = reference_maps["crafted"]
    got = information.fmi_map(*TRIPLES["crafted"])
    # window (0, 0): infrared constant 40, fused constant 90 -> c = 1 from Octave's sequential mean -> FMI ~1;
    # visible constant 90 vs the normalised fused ones(3) -> also two constant windows -> ~1
    assert ref[0, 0] == pytest.approx(1.0, abs=1e-12)
    assert got[0, 0] == pytest.approx(1.0, abs=1e-12)
    # zero-entropy windows: both one-hot and aligned (infrared bright pixel at (10,12), fused at (11,12))
    assert np.all(np.isfinite(got))
    assert np.all((got > -1) & (got <= 1 + 1e-9))


def test_threaded_rows_equal_single_thread(monkeypatch):
    pytest.importorskip("numba")
    a, b, f = TRIPLES["crafted"]
    monkeypatch.setattr(information, "_fmi_threads", lambda: 1)
    one = information.fmi_map(a, b, f)
    monkeypatch.setattr(information, "_fmi_threads", lambda: 4)
    assert np.array_equal(information.fmi_map(a, b, f), one)


def test_metrics_use_the_fast_map_on_pixels_and_dct():
    a, b, f = TRIPLES["crafted"]
    assert ivfuse.create_metric("fmi")(f, a, b) == pytest.approx(reference_fmi_map(a, b, f).mean(), rel=1e-10)
    da, db, df = (dctn(x, type=2, norm="ortho") for x in (a, b, f))
    assert ivfuse.create_metric("fmi_dct")(f, a, b) == pytest.approx(reference_fmi_map(da, db, df).mean(), rel=1e-10)


def test_identical_images_score_one_and_bad_shapes_raise():
    x = TRIPLES["ties"][0]
    assert information.fmi_haghighat(x, x, x) == 1.0
    with pytest.raises(ValueError, match="three equal 2-D arrays"):
        information.fmi_map(x, x[:-1], x)


@pytest.mark.realdata
def test_fast_fmi_matches_reference_on_real_flat_regions():
    """An MSRS night crop fused by gff: many constant windows in both source and fused image."""
    from conftest import need

    d = need("data/MSRS")
    ir = ivfuse.read_ir(d / "ir" / "00004N.png")[None]
    vis = ivfuse.read_vis(d / "vi" / "00004N.png")[None]
    fused = ivfuse.create_model("gff")(ir, vis)
    to255 = ivfuse.metrics.to_gray255
    crop = (slice(400, 434), slice(560, 601))
    f, a, b = (to255(x[0])[crop] for x in (fused, ir, vis))
    wa, wf = information._windows(a), information._windows(f)
    flat_pairs = (np.ptp(wa, axis=1) == 0) & (np.ptp(wf, axis=1) == 0) & np.any(wa != wf, axis=1)
    assert flat_pairs.sum() >= 10
    np.testing.assert_allclose(information.fmi_map(a, b, f), reference_fmi_map(a, b, f), rtol=1e-10, atol=1e-12)

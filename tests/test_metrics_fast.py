"""``compute_all`` (shared intermediates, compiled kernels) against the individual metric functions.

``Metric.fn`` is the plain transcription of each reference tool (pinned by test_metrics_calibration.py);
``compute_all`` / ``Metric.__call__`` / ``score_triple`` go through :mod:`ivfuse.metrics.fast` and must give the
same values to rounding on real images and on the edge cases (flat, identical, tiny, non-integer inputs).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import need
from PIL import Image

import ivfuse
from ivfuse.errors import InputError
from ivfuse.metrics import DEFAULT_METRICS, compute_all, create_metric, list_metrics
from ivfuse.metrics._kernels import kernels
from ivfuse.metrics.fast import FAST_METRICS, compute_arrays

SUITE = list(DEFAULT_METRICS) + ["fmi", "qcb", "qcv"]


def _gray(p) -> np.ndarray:
    return np.asarray(Image.open(p).convert("L"), dtype=np.float64)


def _assert_same(got: dict, F, A, B, names, rel=1e-9):
    for n in names:
        m = create_metric(n)
        want = m.fn(F, A, B) if m.needs_sources else m.fn(F, None, None)
        g = got[n]
        if math.isnan(want):
            assert math.isnan(g), n
        elif math.isinf(want):
            assert g == want, n
        else:
            assert g == pytest.approx(want, rel=rel, abs=1e-12), n


@pytest.mark.realdata
@pytest.mark.parametrize("stem", ["00004N", "00001D"])
def test_compute_all_equals_individual_metrics_on_msrs(stem):
    d = need("data/MSRS")
    A, B = _gray(d / "ir" / f"{stem}.png"), _gray(d / "vi" / f"{stem}.png")
    # two fused images of different character: a weighted mean and a max-abs-detail fusion
    F1 = np.round(0.6 * A + 0.4 * B)
    F2 = np.maximum(A, B)
    for F in (F1, F2):
        _assert_same(compute_all(F, A, B, list_metrics()), F, A, B, list_metrics())


@pytest.mark.realdata
@pytest.mark.parametrize("case", ["case1", "case2"])
def test_compute_all_equals_individual_metrics_on_golden_cases(case):
    d = need(f"metrics_golden/{case}")
    F, A, B = (_gray(d / f"{n}.png") for n in ("fused", "ir", "vi"))
    _assert_same(
        compute_all(F, A, B, SUITE + ["nabf_tang_as_called", "psnr_cddfuse"]),
        F,
        A,
        B,
        SUITE + ["nabf_tang_as_called", "psnr_cddfuse"],
    )


def _scene(seed, h=64, w=80):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    x = 110 + 70 * np.sin(xx / 7.0 + seed) * np.cos(yy / 11.0)
    x[10:30, 20:50] = 250
    return np.clip(x + rng.normal(0, 6, (h, w)), 0, 255).round()


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_edge_cases_match_the_individual_functions(backend, monkeypatch):
    if backend == "numpy":  # the fallback used without numba
        from ivfuse.metrics import fast

        monkeypatch.setattr(fast, "kernels", lambda: None)
    A, B = _scene(1), _scene(2)
    F = np.round((A + B) / 2)
    flat = np.full_like(A, 128.0)
    cases = {
        "structured": (F, A, B),
        "fused equals ir": (A, A, B),
        "fused equals vis": (B, A, B),
        "all identical": (A, A, A),
        "flat fused": (flat, A, B),
        "flat sources": (F, flat, flat.copy()),
        "saturated blocks": (np.where(A > 200, 255.0, F), np.where(A > 150, 255.0, A), np.where(B < 60, 0.0, B)),
        "non-integer floats": (F + 0.37, A * 0.93 + 0.1, B * 1.01),
    }
    names = [n for n in FAST_METRICS]  # every fast path
    for label, (f, a, b) in cases.items():
        with np.errstate(all="ignore"):
            try:
                _assert_same(compute_all(f, a, b, names), f, a, b, names)
            except AssertionError as e:
                raise AssertionError(f"{label}: {e}") from None


@pytest.mark.parametrize("h,w", [(41, 41), (45, 52), (3, 3)])
def test_small_images_match(h, w):
    rng = np.random.default_rng(h * w)
    A, B = (np.round(rng.uniform(0, 255, (h, w))) for _ in range(2))
    F = np.round((A + B) / 2)
    names = [n for n in FAST_METRICS if create_metric(n).min_size <= min(h, w)]
    _assert_same(compute_all(F, A, B, names), F, A, B, names)


def test_compute_all_interface():
    A, B = _scene(3), _scene(4)
    F = np.round((A + B) / 2)
    res = compute_all(F, A, B)
    assert list(res) == list(DEFAULT_METRICS)
    # torch tensors in [0, 1] are scored like the 8-bit arrays, as everywhere
    import torch

    def t(x):
        return torch.from_numpy(x / 255.0).float()[None, None]

    assert compute_all(t(F), t(A), t(B), ["qabf", "vif"])["vif"] == pytest.approx(res["vif"], rel=1e-12)
    # no-reference metrics need no sources; the others do
    assert set(compute_all(F, names=["en", "sf"])) == {"en", "sf"}
    with pytest.raises(InputError, match="needs the fused, infrared and visible"):
        compute_all(F, names=["qabf"])
    with pytest.raises(InputError, match="sizes must match"):
        compute_all(F, A[:-1], B, ["nabf"])
    with pytest.raises(InputError, match="at least 31x31"):
        compute_all(F[:20, :20], A[:20, :20], B[:20, :20], ["qcb"])
    tm: dict = {}
    compute_arrays(F, A, B, SUITE, timings=tm)
    assert list(tm) == SUITE and all(v >= 0 for v in tm.values())


def test_score_triple_uses_the_shared_pass(tmp_path):
    from ivfuse.evaluate import score_triple

    A, B = _scene(5), _scene(6)
    F = np.round(0.5 * A + 0.5 * B)
    paths = []
    for n, x in (("f", F), ("ir", A), ("vi", B)):
        Image.fromarray(x.astype(np.uint8)).save(tmp_path / f"{n}.png")
        paths.append(str(tmp_path / f"{n}.png"))
    got = score_triple(*paths, SUITE)
    assert list(got) == SUITE
    _assert_same(got, F, A, B, SUITE)
    assert ivfuse.compute_metrics(F, A, B, SUITE) == pytest.approx(got, rel=1e-15)


def test_vectorised_exp_and_atan_are_within_two_ulp():
    K = kernels()
    if K is None:
        pytest.skip("numba not installed")
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.normal(0, 3, 50000),
            rng.normal(0, 300, 20000),
            [0.0, 0.66, 2.414213562373095, 1.0, -1.0, np.inf, -np.inf, 1e300, 1e-300],
        ]
    )
    out = np.empty_like(x)
    K["atan"](x, out, x.size)
    ref = np.arctan(x)
    assert np.all(np.abs(out - ref) <= 2 * np.spacing(np.abs(ref)) + 1e-320)
    e = np.concatenate([rng.uniform(-700, 700, 50000), rng.uniform(-30, 40, 50000), [0.0, -1e-300, 1.0]])
    oute, ib = np.empty_like(e), np.empty(e.size, np.int64)
    K["exp"](e, oute, e.size, ib)
    refe = np.exp(e)
    assert np.all(np.abs(oute - refe) <= 2 * np.spacing(refe))

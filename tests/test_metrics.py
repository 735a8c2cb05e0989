"""Metric behaviour on synthetic images: identities, monotonicity, input conventions and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ivfuse
from ivfuse.errors import InputError, UnknownNameError
from ivfuse.metrics import DEFAULT_METRICS, compute_metrics, create_metric, list_metrics


def _scene(seed=0, h=96, w=128):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 100 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    base[30:60, 40:90] += 50
    return np.clip(base + rng.normal(0, 4, (h, w)), 0, 255).round()


@pytest.fixture
def triple():
    a = _scene(1)
    b = np.clip(255 - _scene(2) * 0.8, 0, 255).round()
    return np.round((a + b) / 2), a, b


def test_registry_lists_all_required_metrics():
    need = {
        "en",
        "sd",
        "sf",
        "ag",
        "mi",
        "fmi",
        "scd",
        "vif",
        "qabf",
        "nabf",
        "ssim",
        "ms_ssim",
        "psnr",
        "mse",
        "cc",
        "qcb",
        "qcv",
        "qy",
        "qncie",
        "qg",
    }
    assert need <= set(list_metrics())
    assert set(DEFAULT_METRICS) <= set(list_metrics())


@pytest.mark.parametrize("name,lower", [("mse", True), ("nabf", True), ("qcv", True), ("qabf", False), ("en", False)])
def test_lower_better_flags(name, lower):
    assert create_metric(name).lower_better is lower


def test_unknown_metric_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'qabf'"):
        create_metric("qabff")


def test_identity_values():
    x = _scene(3)
    assert create_metric("ssim")(x, x, x) == pytest.approx(2.0)
    assert create_metric("ms_ssim")(np.tile(x, (2, 2)), np.tile(x, (2, 2)), np.tile(x, (2, 2))) == pytest.approx(2.0)
    assert create_metric("mse")(x, x, x) == 0.0
    assert math.isinf(create_metric("psnr")(x, x, x))
    assert create_metric("cc")(x, x, x) == pytest.approx(1.0)
    assert create_metric("en")(np.full((20, 20), 7.0)) == 0.0
    # MI(F, X) with F == X is the entropy of X, twice
    assert create_metric("mi")(x, x, x) == pytest.approx(2 * create_metric("en")(x), rel=1e-12)
    assert create_metric("fmi")(x[:20, :20], x[:20, :20], x[:20, :20]) == pytest.approx(1.0)


def test_degradation_lowers_quality(triple):
    F, A, B = triple
    noisy = np.clip(F + np.random.default_rng(0).normal(0, 25, F.shape), 0, 255).round()
    blurred = (F + np.roll(F, 1, 0) + np.roll(F, 1, 1) + np.roll(F, (1, 1), (0, 1))) / 4
    for m in ("qabf", "vif", "ssim", "qy", "qg"):
        assert create_metric(m)(F, A, B) > create_metric(m)(noisy, A, B), m
    assert create_metric("sf")(blurred) < create_metric("sf")(F)
    assert create_metric("ag")(blurred) < create_metric("ag")(F)
    assert create_metric("mse")(noisy, A, B) > create_metric("mse")(F, A, B)


def test_tensor_inputs_follow_unit_range_and_match_arrays(triple):
    F, A, B = triple
    t = lambda x: torch.from_numpy(x / 255.0).float()[None, None]  # noqa: E731
    for name in ("qabf", "vif", "en", "mi"):
        m = create_metric(name)
        assert m(t(F), t(A), t(B)) == pytest.approx(m(F, A, B), rel=1e-9)


def test_batch_returns_one_value_per_image(triple):
    F, A, B = triple
    t = lambda x: torch.from_numpy(x / 255.0).float()[None, None].repeat(3, 1, 1, 1)  # noqa: E731
    vals = create_metric("qabf")(t(F), t(A), t(B))
    assert isinstance(vals, np.ndarray) and vals.shape == (3,)
    assert np.allclose(vals, vals[0])


def test_colour_fused_is_scored_on_luma(triple):
    F, A, B = triple
    rgb = np.stack([F, F, F], -1)
    assert create_metric("en")(rgb) == pytest.approx(create_metric("en")(F))


def test_compute_metrics_default_suite(triple):
    res = compute_metrics(*triple)
    assert list(res) == list(DEFAULT_METRICS)
    assert all(np.isfinite(v) for v in res.values())


def test_errors(triple):
    F, A, B = triple
    with pytest.raises(InputError, match="sizes must match"):
        create_metric("qabf")(F, A[:-1], B)
    with pytest.raises(InputError, match="NaN or inf"):
        create_metric("en")(np.full((8, 8), np.nan))
    with pytest.raises(InputError, match="needs the fused, infrared and visible"):
        create_metric("qabf")(F)
    with pytest.raises(InputError, match="at least 176x176"):
        create_metric("ms_ssim")(F, A, B)
    with pytest.raises(InputError, match="above 255"):
        create_metric("en")(np.full((8, 8), 4000, dtype=np.uint16))


def test_public_api_exposes_metrics():
    assert ivfuse.create_metric("vif").name == "vif"
    assert "qcb" in ivfuse.list_metrics()


def test_correlation_metrics_are_nan_for_constant_differences(triple):
    """corr2 of a constant image is undefined: NaN, as in MATLAB (F == VIS makes F - VIS constant)."""
    _, A, B = triple
    assert math.isnan(create_metric("scd")(B, A, B))
    assert math.isfinite(create_metric("cc")(B, A, B))

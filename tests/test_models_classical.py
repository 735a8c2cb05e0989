"""Classical baselines: shapes, colour handling, identities, and that they actually fuse."""

from __future__ import annotations

import pytest
import torch
from kornia.color import rgb_to_ycbcr

import ivfuse
from ivfuse.errors import InputError, UnknownNameError
from ivfuse.models.classical import box_mean, laplacian_pyramid, reconstruct_laplacian

BASELINES = ["average", "max", "laplacian", "gff", "thermal_chroma"]


def _pair(b=2, c=3, h=64, w=80):
    g = torch.Generator().manual_seed(0)
    ir = torch.rand(b, 1, h, w, generator=g)
    vis = torch.rand(b, c, h, w, generator=g)
    return ir, vis


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("c", [1, 3])
def test_shapes_and_range(name, c):
    ir, vis = _pair(c=c)
    out = ivfuse.create_model(name)(ir, vis)
    assert out.shape == vis.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("name", BASELINES)
def test_colour_is_kept(name):
    ir, vis = _pair()
    out = ivfuse.create_model(name)(ir, vis)
    a, b = rgb_to_ycbcr(out)[:, 1:], rgb_to_ycbcr(vis)[:, 1:]
    inside = (out > 0.02).all(1, keepdim=True) & (out < 0.98).all(1, keepdim=True)  # away from clipping
    assert torch.allclose(a * inside, b * inside, atol=2e-3)


@pytest.mark.parametrize("name", BASELINES)
def test_same_inputs_give_that_input(name):
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ivfuse.create_model(name)(x, x), x, atol=1e-4)


def test_thermal_chroma_is_the_infrared_image_in_the_visible_colours():
    ir, vis = _pair()
    out = ivfuse.create_model("thermal_chroma")(ir, vis)
    y = rgb_to_ycbcr(out)[:, :1]
    inside = (out > 0.02).all(1, keepdim=True) & (out < 0.98).all(1, keepdim=True)  # away from clipping
    assert inside.float().mean() > 0.3
    assert torch.allclose(y * inside, ir * inside, atol=2e-3)  # the luminance is the infrared image
    gray = ivfuse.create_model("thermal_chroma")(ir, vis[:, :1])
    assert torch.equal(gray, ir)  # a gray visible image adds nothing


def test_laplacian_pyramid_is_invertible():
    x = torch.rand(2, 1, 67, 93)
    assert torch.allclose(reconstruct_laplacian(laplacian_pyramid(x, 4)), x, atol=1e-5)


def test_box_mean_matches_clipped_window_average():
    x = torch.rand(1, 1, 9, 11)
    r = 2
    out = box_mean(x, r)
    i, j = 0, 5
    assert torch.isclose(out[0, 0, i, j], x[0, 0, 0 : i + r + 1, j - r : j + r + 1].mean())


def test_fusion_keeps_salient_content_of_both():
    """A hot target only in IR and texture only in visible both survive max/laplacian/gff."""
    ir = torch.full((1, 1, 96, 96), 0.2)
    ir[..., 40:56, 60:76] = 1.0  # hot target on the right
    vis = torch.full((1, 1, 96, 96), 0.3)
    vis[..., :, 0:32:4] = 0.9  # texture (stripes) on the left
    for name in ("max", "laplacian", "gff"):
        out = ivfuse.create_model(name)(ir, vis)
        assert float(out[..., 44:52, 64:72].mean() - out[..., 44:52, 84:92].mean()) > 0.3, name
        stripes = out[..., 8:40, 4:28]
        assert float(stripes[..., ::4].mean() - stripes[..., 2::4].mean()) > 0.3, name


def test_errors():
    with pytest.raises(UnknownNameError, match="did you mean 'gff'"):
        ivfuse.create_model("gfff")
    with pytest.raises(InputError, match="smaller than the 32x32 minimum of 'laplacian'"):
        ivfuse.create_model("laplacian")(torch.rand(1, 1, 20, 40), torch.rand(1, 1, 20, 40))
    with pytest.raises(InputError, match="differ in size"):
        ivfuse.create_model("average")(torch.rand(1, 1, 20, 40), torch.rand(1, 3, 21, 40))
    with pytest.raises(UnknownNameError, match="method 'average' takes no options"):
        ivfuse.create_model("average", levels=3)


@pytest.mark.realdata
@pytest.mark.slow
def test_baselines_on_real_pair_rank_as_expected():
    from conftest import need

    d = need("data/MSRS")
    ir = ivfuse.read_ir(d / "ir" / "00004N.png")[None]
    vis = ivfuse.read_vis(d / "vi" / "00004N.png")[None]
    q = {n: ivfuse.create_metric("qabf")(ivfuse.create_model(n)(ir, vis), ir, vis) for n in BASELINES}
    # multi-scale methods preserve edges better than plain averaging
    assert q["gff"] > q["average"] and q["laplacian"] > q["average"]


def test_method_options_are_checked_against_the_signature():
    from ivfuse.models.base import method_options

    assert list(method_options("laplacian")) == ["levels"] and method_options("average") == {}
    assert set(method_options("gff")) == {"mean_size", "r1", "eps1", "r2", "eps2", "rg", "sigma_g"}
    with pytest.raises(UnknownNameError, match="unknown option 'level' for method 'laplacian'; did you mean 'levels'"):
        ivfuse.create_model("laplacian", level=5)
    with pytest.raises(InputError, match="option 'levels' of method 'laplacian' must be int, got 'five'"):
        ivfuse.create_model("laplacian", levels="five")
    with pytest.raises(InputError, match="must be int, got 2.5"):
        ivfuse.create_model("laplacian", levels=2.5)
    with pytest.raises(InputError, match="must be int, got True"):
        ivfuse.create_model("laplacian", levels=True)
    with pytest.raises(InputError, match="method 'laplacian': levels must be >= 1"):
        ivfuse.create_model("laplacian", levels=0)
    with pytest.raises(InputError, match="method 'gff' has no learned weights.*methods with weights: .*metafusion"):
        ivfuse.create_model("gff", weights="gff.pt")
    with pytest.raises(UnknownNameError, match="method 'max' takes no options"):
        ivfuse.create_model("max", levels=2)
    assert ivfuse.create_model("gff", eps1=1).eps1 == 1  # an int where a float is expected is fine
    assert ivfuse.create_model("laplacian", levels=3).min_size == 16


def test_warm_average_keeps_warm_targets_and_averages_the_rest():
    """warm_average (issue 20): a flat infrared image gives exactly the pixel average; a blob 0.4 warmer than its
    surroundings is the infrared image at its centre and the average far from it; colour stays the visible image's."""
    from ivfuse.models.warm import warm_weight

    m, avg = ivfuse.create_model("warm_average"), ivfuse.create_model("average")
    g = torch.Generator().manual_seed(1)
    vis = torch.rand(1, 3, 96, 128, generator=g)
    flat = torch.full((1, 1, 96, 128), 0.3)
    assert torch.allclose(m(flat, vis), avg(flat, vis), atol=1e-6)
    ir = flat.clone()
    ir[..., 40:60, 60:70] = 0.7  # a warm person-sized blob
    w = warm_weight(ir)
    assert float(w[0, 0, 50, 65]) > 0.95 and float(w[0, 0, 50, 10]) < 1e-4
    y = rgb_to_ycbcr(vis)[:, :1]
    fy = rgb_to_ycbcr(m(ir, vis))[:, :1]
    assert abs(float(fy[0, 0, 50, 65] - ir[0, 0, 50, 65])) < 0.02
    assert abs(float(fy[0, 0, 50, 10] - (ir[0, 0, 50, 10] + y[0, 0, 50, 10]) / 2)) < 0.02
    far = (slice(None), slice(None), slice(0, 20), slice(0, 30))  # no warm pixel: the average's colour image itself
    assert torch.allclose(m(ir, vis)[far], avg(ir, vis)[far], atol=1e-5)
    with pytest.raises(InputError, match="tau"):
        ivfuse.create_model("warm_average", tau=0)
    with pytest.raises(InputError, match="minimum"):
        m(ir[..., :20, :20], vis[..., :20, :20])

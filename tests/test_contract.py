"""The fusion-method contract, checked for every registered method (``ivfuse.list_models()``, not a fixed list):
it builds with its defaults, takes ``(ir, vis)`` float tensors in [0, 1] (B×C×H×W, gray or RGB visible), and
returns the visible input's shape, finite, in [0, 1], the same for a pair alone and inside a batch.
Methods whose default weights are not available here skip with the reason the factory gives."""

from __future__ import annotations

import pytest
import torch

import ivfuse
from ivfuse.errors import IvfuseError

METHODS = ivfuse.list_models()


def _build(name):
    try:
        return ivfuse.create_model(name)
    except IvfuseError as e:  # only a missing weights file is a reason to skip; anything else fails the test
        if "weights" in str(e).lower() or "not found" in str(e).lower():
            pytest.skip(f"{name}: {e}")
        raise


def _pair(h, w, channels):
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    ir = (0.2 + 0.1 * torch.rand(2, 1, h, w, generator=g)).clone()
    ir[..., h // 4 : h // 2, w // 4 : w // 2] = 0.95  # a hot target
    vis = torch.stack([xx, yy, (xx + yy) / 2])[None].repeat(2, 1, 1, 1) * 0.8 + 0.1 * torch.rand(2, 3, h, w, generator=g)
    return ir.clamp(0, 1), (vis[:, :channels] if channels == 1 else vis).clamp(0, 1)


def test_registry_is_not_empty_and_has_the_default():
    from ivfuse.fusion import DEFAULT_METHOD

    assert DEFAULT_METHOD in METHODS and len(METHODS) >= 5


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("channels", [3, 1])
def test_method_contract(name, channels):
    model = _build(name)
    assert not model.training, f"{name}: create_model must return the model in eval mode"
    h, w = max(72, getattr(model, "min_size", 1)), max(88, getattr(model, "min_size", 1))
    ir, vis = _pair(h, w, channels)
    with torch.no_grad():
        out = model(ir, vis)
        single = model(ir[1:], vis[1:])
    assert out.shape == vis.shape and out.dtype == torch.float32, f"{name}: {tuple(out.shape)} for {tuple(vis.shape)}"
    assert torch.isfinite(out).all() and float(out.min()) >= 0 and float(out.max()) <= 1
    assert float(out.std()) > 1e-3, f"{name}: constant output"
    torch.testing.assert_close(single, out[1:], atol=1e-4, rtol=1e-4, msg=f"{name}: batch and single results differ")

"""The fusion-method contract, checked for every registered method (``ivfuse.list_models()``, not a fixed list):
it builds with its defaults, takes ``(ir, vis)`` float tensors in [0, 1] (B×C×H×W, gray or RGB visible), and
returns the visible input's shape, finite, in [0, 1], the same for a pair alone and inside a batch.
A method skips only when a default weights file it loads is *absent* (:func:`absent_weights`); a file that is there
but cannot be loaded (corrupted, wrong kind) fails the test (``test_a_corrupted_shipped_file_fails_not_skips``)."""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

import pytest
import torch

import ivfuse
from ivfuse.errors import IvfuseError
from ivfuse.utils import shared_root
from ivfuse.weights import WEIGHTS

METHODS = ivfuse.list_models()
SHIPPED = sorted(
    p.name.removesuffix("_default.safetensors")
    for p in (Path(ivfuse.__file__).parent / "weights").glob("*_default.safetensors")
)


def _shipped(name: str) -> Path:
    """Where the factories find the package's default file (``importlib.resources``)."""
    return Path(str(importlib.resources.files("ivfuse") / "weights" / f"{name}_default.safetensors"))


def absent_weights(name: str) -> list[Path]:
    """The default weights files of method ``name`` that are not there: the package's
    ``weights/<name>_default.safetensors`` when the method ships one, and the ``../shared`` files registered in
    :data:`ivfuse.weights.WEIGHTS` under the method's name (``name`` or ``name_*``)."""
    files = [_shipped(name)] if name in SHIPPED else []
    files += [
        shared_root() / "weights" / w.filename for k, w in WEIGHTS.items() if k == name or k.startswith(f"{name}_")
    ]
    return [f for f in files if not f.is_file()]


def build_or_skip(name: str):
    """``create_model(name)``; skip only if it failed *and* a default weights file of the method is absent (the
    error must name it); every other failure — a corrupted or wrong file that is there — is raised."""
    try:
        return ivfuse.create_model(name)
    except IvfuseError as e:
        msg = str(e)
        missing = [f for f in absent_weights(name) if f.name in msg or (f == _shipped(name) and "shipped" in msg)]
        if missing:
            pytest.skip(f"{name}: weights file absent: {missing[0]}")
        raise


def _pair(h, w, channels):
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    ir = (0.2 + 0.1 * torch.rand(2, 1, h, w, generator=g)).clone()
    ir[..., h // 4 : h // 2, w // 4 : w // 2] = 0.95  # a hot target
    vis = torch.stack([xx, yy, (xx + yy) / 2])[None].repeat(2, 1, 1, 1) * 0.8 + 0.1 * torch.rand(
        2, 3, h, w, generator=g
    )
    return ir.clamp(0, 1), (vis[:, :channels] if channels == 1 else vis).clamp(0, 1)


def test_registry_is_not_empty_and_has_the_default():
    from ivfuse.fusion import DEFAULT_METHOD

    assert DEFAULT_METHOD in METHODS and len(METHODS) >= 5


def test_the_shipped_weights_are_found():
    assert {"metafusion", "lite", "tim", "occo", "tsjnet"} <= set(SHIPPED)
    assert all(absent_weights(n) == [] for n in SHIPPED)


def test_one_default_weights_table_and_one_meaning_of_weights_none(tmp_path):
    """#21 item 2: the shipped files are registered once (``register_model(name, default_weights=...)``) and found by
    one function; ``weights=None`` is an untrained network for every learned method (TIM: of a named genotype), and a
    missing file is a one-line error naming it."""
    from ivfuse.errors import InputError
    from ivfuse.models.base import DEFAULT_WEIGHTS, default_weights_path, resolve_weights

    assert sorted(DEFAULT_WEIGHTS) == SHIPPED and all(default_weights_path(n) == _shipped(n) for n in SHIPPED)
    with pytest.raises(InputError, match="'average' ships no default weights"):
        default_weights_path("average")
    with pytest.raises(InputError, match=f"{tmp_path / 'no.pt'}: lite weights file not found"):
        resolve_weights("lite", tmp_path / "no.pt")
    for name in SHIPPED:
        if absent_weights(name):
            continue
        shipped = ivfuse.create_model(name).state_dict()
        fresh = ivfuse.create_model(name, weights=None, **({"genotype": "ivif_light"} if name == "tim" else {}))
        new = fresh.state_dict()
        assert any(k not in new or new[k].shape != v.shape or not torch.equal(new[k], v) for k, v in shipped.items()), (
            name
        )


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("damage", ["truncated", "header", "empty"])
def test_a_corrupted_shipped_file_fails_not_skips(tmp_path, monkeypatch, name, damage):
    """The package's default file replaced by a damaged copy (through ``importlib.resources``, as the factories find
    it): building the default model raises a one-line error naming the file — it does not skip, and it does not
    load."""
    real = _shipped(name)
    pkg = tmp_path / "ivfuse"
    (pkg / "weights").mkdir(parents=True)
    bad = pkg / "weights" / real.name
    shutil.copyfile(real, bad)
    data = bad.read_bytes()
    bad.write_bytes(
        {"truncated": data[: len(data) // 2], "header": data[:8] + b"#" * 16 + data[24:], "empty": b""}[damage]
    )
    files = importlib.resources.files
    monkeypatch.setattr(importlib.resources, "files", lambda p: pkg if p == "ivfuse" else files(p))
    assert absent_weights(name) == []  # the file is there: no reason to skip
    try:
        with pytest.raises(IvfuseError) as e:
            build_or_skip(name)
    except pytest.skip.Exception as s:
        pytest.fail(f"{name}: a corrupted shipped file made the contract test skip: {s}")
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    # the absent file, by contrast, is a skip
    bad.unlink()
    assert absent_weights(name) == [bad]
    with pytest.raises(pytest.skip.Exception, match="weights file absent"):
        build_or_skip(name)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("channels", [3, 1])
def test_method_contract(name, channels):
    model = build_or_skip(name)
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


@pytest.mark.parametrize("name", METHODS)
def test_channels_last_weights_give_the_same_images(name):
    """``create_model`` stores the convolution weights channels-last where the class says so (oneDNN then runs every
    convolution channels-last, ``docs/deployment.md``) and hands out its state dict in the standard layout; the images
    equal those of the same weights in the default layout."""
    model = build_or_skip(name)
    convs = [p for p in model.parameters() if p.ndim == 4]
    if model.channels_last:
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs), name
    else:
        assert all(p.is_contiguous() for p in convs), name
    # ... while its state dict is in the standard layout (safetensors refuses anything else)
    assert all(v.is_contiguous() for v in model.state_dict().values()), name
    if not convs:
        return
    ir, vis = _pair(max(72, model.min_size), max(88, model.min_size), 3)
    with torch.no_grad():
        got = model(ir, vis)
        model.to(memory_format=torch.contiguous_format)
        assert all(p.is_contiguous() for p in convs)
        want = model(ir, vis)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0, msg=f"{name}: channels-last changes the image")


def test_runner_channels_last_converts_with_a_standard_state_dict():
    """``Runner(channels_last=True)`` converts a model that keeps the default layout through the same
    :func:`ivfuse.models.base.to_channels_last` as ``create_model``: its state dict stays in the standard layout."""
    from ivfuse.fusion import Runner

    model = ivfuse.create_model("tsjnet", weights=None)  # TSJNet keeps the default layout
    assert all(p.is_contiguous() for p in model.parameters())
    Runner(model, channels_last=True)
    assert not all(p.is_contiguous() for p in model.parameters() if p.ndim == 4)
    assert all(v.is_contiguous() for v in model.state_dict().values())

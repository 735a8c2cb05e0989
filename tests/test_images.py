"""Image reading conventions and atomic writing."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from ivfuse.data import read_array, read_gray_u8, read_ir, read_vis, write_image
from ivfuse.errors import InputError


def test_8bit_gray_and_rgb(tmp_path):
    g = (np.arange(48 * 64) % 256).astype(np.uint8).reshape(48, 64)
    Image.fromarray(g).save(tmp_path / "g.png")
    rgb = np.stack([g, 255 - g, g // 2], -1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    ir = read_ir(tmp_path / "g.png")
    assert ir.shape == (1, 48, 64) and ir.dtype == torch.float32
    assert torch.allclose(ir[0], torch.from_numpy(g / 255.0).float())
    vis = read_vis(tmp_path / "c.png")
    assert vis.shape == (3, 48, 64)
    assert torch.allclose(vis[1], torch.from_numpy((255 - g) / 255.0).float())


def test_gray_stored_as_rgb_reads_as_one_channel(tmp_path):
    g = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(np.stack([g] * 3, -1)).save(tmp_path / "x.png")
    assert read_vis(tmp_path / "x.png").shape == (1, 20, 30)
    assert torch.equal(read_ir(tmp_path / "x.png")[0], torch.from_numpy(g / 255.0).float())


def test_16bit_png_is_minmax_normalised(tmp_path):
    a = np.linspace(7000, 9000, 40 * 50).reshape(40, 50).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "t16.png")
    assert read_array(tmp_path / "t16.png").dtype == np.uint16
    ir = read_ir(tmp_path / "t16.png")
    assert float(ir.min()) == 0.0 and float(ir.max()) == 1.0
    scaled = read_ir(tmp_path / "t16.png", ir_norm="scale")
    assert float(scaled.max()) == pytest.approx(9000 / 65535, rel=1e-6)


def test_float_tiff_temperatures(tmp_path):
    a = np.linspace(-5.0, 35.0, 30 * 40, dtype=np.float32).reshape(30, 40)
    tifffile.imwrite(tmp_path / "t.tif", a)
    ir = read_ir(tmp_path / "t.tif")
    assert ir.shape == (1, 30, 40) and float(ir.min()) == 0 and float(ir.max()) == 1
    p = read_ir(tmp_path / "t.tif", ir_norm="percentile")
    assert 0 <= float(p.min()) and float(p.max()) <= 1
    with pytest.raises(InputError, match=r"t\.tif: float values outside \[0, 1\]"):
        read_ir(tmp_path / "t.tif", ir_norm="scale")


def test_nan_tiff_is_rejected_with_its_name(tmp_path):
    a = np.ones((10, 10), np.float32)
    a[3, 3] = np.nan
    tifffile.imwrite(tmp_path / "bad.tif", a)
    with pytest.raises(InputError, match=r"bad\.tif: contains NaN or inf"):
        read_ir(tmp_path / "bad.tif")


def test_rgba_and_palette(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    v = read_vis(tmp_path / "a.png")
    assert v.shape == (3, 10, 12) and float(v[0, 0, 0]) == pytest.approx(200 / 255)
    pal = Image.fromarray(np.arange(120, dtype=np.uint8).reshape(10, 12) % 4, "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    pal.save(tmp_path / "p.png")
    v = read_vis(tmp_path / "p.png")
    assert v.shape == (3, 10, 12) and float(v[0, 0, 1]) == 1.0  # index 1 -> red


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png: file not found"):
        read_ir(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match=r"bad\.png: cannot be read as an image"):
        read_vis(tmp_path / "bad.png")
    good = tmp_path / "t.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(good)
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match=r"trunc\.jpg: cannot be read"):
        read_vis(tmp_path / "trunc.jpg")


def test_read_gray_u8_matches_cddfuse_luma(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    want = np.round(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])
    assert np.array_equal(read_gray_u8(tmp_path / "c.png"), want)


def test_write_is_atomic_and_roundtrips(tmp_path):
    x = torch.rand(3, 17, 23)
    out = write_image(tmp_path / "sub" / "f.png", x)
    back = read_vis(out)
    assert torch.allclose(back, (x * 255).round() / 255, atol=1e-6)
    assert [p.name for p in out.parent.iterdir()] == ["f.png"]
    with pytest.raises(InputError, match="NaN"):
        write_image(tmp_path / "n.png", torch.full((1, 4, 4), float("nan")))
    assert not (tmp_path / "n.png").exists()
    with pytest.raises(InputError, match="unsupported output extension"):
        write_image(tmp_path / "f.gif", x)

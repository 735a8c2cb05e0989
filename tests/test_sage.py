"""SAGE (Wu et al., CVPR 2025) in ivfuse's own code, from its official weights.

Parity: ``preset="official"`` against the official ``test.py`` outputs in ../shared/peers_reference/SAGE (saved
the way ``torchvision.utils.save_image`` saves: ``floor(x·255 + 0.5)``); the default ``preset="ivfuse"`` is
ivfuse's BT.601 colour path and is measured against the same files. Then the method's own behaviour: strict
loading, the OpenCV 8-bit colour emulation, large (LLVIP 1280×1024) and tiny (21×17) pairs, the 4×4 minimum,
gray visible input, batches, options through the CLI, weight errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import need
from PIL import Image

import ivfuse
import ivfuse.models.sage  # registration: ivfuse.models does not import it yet
from ivfuse.errors import InputError, UnknownNameError
from ivfuse.models.sage import SAGE, opencv_ycrcb_u8

STEMS = ("00004N", "00633D")
WEIGHTS_FILE = "weights/peers/SAGE_checkpoints.pt"
SHA256 = "ecfde477ca4cd65401f207d5dc91ce6c475a49891d768dbdb7a66366255ee836"

_models: dict[str, SAGE] = {}


def sage(preset: str = "ivfuse") -> SAGE:
    """SAGE with the shared official weights (skips when they are absent); cached per preset."""
    need(WEIGHTS_FILE)
    if preset not in _models:
        _models[preset] = ivfuse.create_model("sage", preset=preset)
    return _models[preset]


def msrs_pair(stem: str) -> tuple[torch.Tensor, torch.Tensor]:
    from ivfuse.data.images import read_ir, read_vis

    root = need("data/MSRS")
    return read_ir(root / "ir" / f"{stem}.png")[None], read_vis(root / "vi" / f"{stem}.png")[None]


def hwc(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).numpy().astype(np.float64)


def report(record_property, key: str, d: np.ndarray) -> tuple[float, float]:
    mean, mx = float(d.mean()), float(d.max())
    record_property(key, f"mean {mean:.3f}/255 max {mx:.0f}/255")
    print(f"{key}: mean abs diff {mean:.3f}/255, max {mx:.0f}/255")
    return mean, mx


def toy_pair(h: int = 17, w: int = 21, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ir = 0.2 + 0.1 * torch.rand(batch, 1, h, w, generator=g)
    ir[..., h // 4 : h // 2, w // 4 : w // 2] = 0.95  # a hot target
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    vis = torch.stack([xx, yy, (xx + yy) / 2])[None].repeat(batch, 1, 1, 1) * 0.8 + 0.1 * torch.rand(
        batch, 3, h, w, generator=g
    )
    return ir.clamp(0, 1), vis.clamp(0, 1)


# ------------------------------------------------------------------------------------------ parity (official)
@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
def test_official_preset_matches_official_outputs(stem, record_property):
    """test.py: OpenCV 8-bit YCrCb, model(Y, IR), raw tanh as Y, rounded matrix, save_image's x·255+0.5 clamp."""
    ir, vis = msrs_pair(stem)
    ref = np.asarray(Image.open(need(f"peers_reference/SAGE/{stem}.png")).convert("RGB"), dtype=np.float64)
    with torch.no_grad():
        out = hwc(sage("official")(ir, vis))
    assert out.shape == ref.shape == (480, 640, 3)
    saved = np.floor(np.clip(out * 255 + 0.5, 0, 255))  # torchvision.utils.save_image
    mean, mx = report(record_property, f"sage {stem} official preset (save_image)", np.abs(saved - ref))
    assert mean <= 1.0 and mx <= 1  # measured: 0.000 / 0 (bit-identical) on CPU, torch 2.14.1
    mean_r, mx_r = report(
        record_property, f"sage {stem} official preset (ivfuse rounding)", np.abs(np.round(out * 255) - ref)
    )
    assert mean_r <= 1.0 and mx_r <= 1


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
def test_default_preset_differs_only_by_the_colour_convention(stem, record_property):
    """The default (ivfuse's float BT.601 path, Y clamped before colouring, neutral chroma centred on ½) stays
    within a couple of grey levels of the official files; the official colour tint is the main difference."""
    ir, vis = msrs_pair(stem)
    ref = np.asarray(Image.open(need(f"peers_reference/SAGE/{stem}.png")).convert("RGB"), dtype=np.float64)
    with torch.no_grad():
        out = sage("ivfuse")(ir, vis)
        off = sage("official")(ir, vis)
    d = np.abs(np.round(hwc(out) * 255) - ref)
    mean, mx = report(record_property, f"sage {stem} default preset (ivfuse rounding)", d)
    assert 0.2 <= mean <= 1.5 and mx <= 4  # measured: 0.70 / 2 (00004N), 0.69 / 2 (00633D)
    # the official 128/255 chroma centre minus 0.5 shifts R up and G down on average
    bias = (off - out).mean((0, 2, 3)) * 255
    assert bias[0] > 0.3 and bias[1] < -0.1 and bias[2] > 0.3, bias.tolist()


# ------------------------------------------------------------------------------------------ loading
@pytest.mark.realdata
def test_state_dict_loads_strictly_and_completely():
    sd = torch.load(need(WEIGHTS_FILE), map_location="cpu", weights_only=True)
    model = sage()
    own = model.state_dict()
    assert len(sd) == 121 and set(sd) == set(own)
    for k, v in sd.items():
        assert torch.equal(own[k], v), k
    assert sum(p.numel() for p in model.parameters()) == 135_617
    assert not model.training and model.preset == "ivfuse"


@pytest.mark.realdata
def test_weights_entry_points_at_the_authors_file():
    from ivfuse.utils import sha256sum
    from ivfuse.weights import WEIGHTS, weights_path

    info = WEIGHTS["sage"]
    assert info.url.startswith("https://github.com/RollingPlain/SAGE_IVIF/raw/") and info.url.endswith("checkpoints.pt")
    assert info.sha256 == SHA256 == sha256sum(need(WEIGHTS_FILE))
    assert weights_path("sage") == need(WEIGHTS_FILE)


@pytest.mark.realdata
def test_explicit_weights_path_overrides(tmp_path):
    sd = torch.load(need(WEIGHTS_FILE), map_location="cpu", weights_only=True)
    sd["final_decoder.0.bias"] = sd["final_decoder.0.bias"] + 0.25
    p = tmp_path / "mine.pt"
    torch.save(sd, p)
    m = ivfuse.create_model("sage", weights=str(p))
    assert torch.equal(m.final_decoder[0].bias, sd["final_decoder.0.bias"])
    assert not torch.equal(m.final_decoder[0].bias, sage().final_decoder[0].bias)


@pytest.mark.realdata
def test_wrong_or_broken_weights_are_one_line_errors(tmp_path):
    p = tmp_path / "tardal.pt"
    p.write_bytes(need("weights/peers/TarDAL_tardal++.pt").read_bytes())
    with pytest.raises(InputError) as e:
        ivfuse.create_model("sage", weights=p)
    assert str(p) in str(e.value) and "not SAGE sub-network weights" in str(e.value) and "\n" not in str(e.value)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read sage weights"):
        ivfuse.create_model("sage", weights=bad)
    with pytest.raises(InputError, match="weights file not found"):
        ivfuse.create_model("sage", weights=tmp_path / "nope.pt")


def test_missing_shared_weights_message(tmp_path, monkeypatch):
    """Without the shared file and offline, one line names the file and how to pass it; nothing is cached."""
    import urllib.request

    monkeypatch.setenv("IVFUSE_SHARED", str(tmp_path / "shared"))
    monkeypatch.setenv("IVFUSE_CACHE", str(tmp_path / "cache"))
    urls = []

    def offline(url, filename):
        urls.append(url)
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    with pytest.raises(InputError) as e:
        ivfuse.create_model("sage")
    msg = str(e.value)
    assert "SAGE_checkpoints.pt" in msg and "--weights" in msg and "create_model('sage'" in msg and "\n" not in msg
    assert urls and "RollingPlain/SAGE_IVIF" in urls[0]  # it tried the authors' pinned URL
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir())


def test_unknown_preset_and_option_are_one_line_errors():
    with pytest.raises(InputError, match=r"unknown preset 'offical'.*ivfuse, official"):
        ivfuse.create_model("sage", preset="offical")
    with pytest.raises(UnknownNameError, match="did you mean 'preset'"):
        ivfuse.create_model("sage", presets="official")
    with pytest.raises(InputError, match="unknown preset"):
        SAGE(preset="bt709")


# ------------------------------------------------------------------------------------------ colour emulation
def test_opencv_ycrcb_emulation_is_exact():
    """opencv_ycrcb_u8 reproduces cv2.cvtColor(BGR2YCrCb) on 8-bit images bit for bit (all 2^24 colours)."""
    cv2 = pytest.importorskip("cv2")
    v = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)
    ref = cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2YCrCb)
    for rows in (slice(i, i + 1024) for i in range(0, 4096, 1024)):  # quarters: bounded memory
        t = torch.from_numpy(rgb[rows]).permute(2, 0, 1)[None].float() / 255
        y, cr, cb = opencv_ycrcb_u8(t)
        got = torch.cat([y, cr, cb], 1)[0].permute(1, 2, 0).numpy()
        assert np.array_equal(got, ref[rows].astype(np.float64))
    # the IR image: BGR2GRAY of a gray image stored as three equal channels is the stored value itself
    levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    assert np.array_equal(cv2.cvtColor(levels, cv2.COLOR_BGR2GRAY)[0], np.arange(256))


# ------------------------------------------------------------------------------------------ behaviour
@pytest.mark.realdata
def test_network_input_order_and_raw_output():
    """model(vi_Y, ir) in that order; the output is tanh in [-1, 1] and the fused Y is it clamped."""
    ir, vis = toy_pair(40, 48)
    y = 0.299 * vis[:, :1] + 0.587 * vis[:, 1:2] + 0.114 * vis[:, 2:]
    m = sage()
    with torch.no_grad():
        raw = m.network(y, ir)
        swapped = m.network(ir, y)
        torch.testing.assert_close(m.fuse_luma(ir, y), raw.clamp(0, 1))
    assert raw.min() >= -1 and raw.max() <= 1
    assert (raw - swapped).abs().mean() > 1e-3  # the two inputs are not interchangeable


@pytest.mark.realdata
def test_default_preset_is_ivfuses_bt601_path():
    from kornia.color import rgb_to_ycbcr, ycbcr_to_rgb

    ir, vis = toy_pair(33, 45)
    m = sage()
    with torch.no_grad():
        out = m(ir, vis)
        ycc = rgb_to_ycbcr(vis)
        want = ycbcr_to_rgb(torch.cat([m.network(ycc[:, :1], ir).clamp(0, 1), ycc[:, 1:]], 1)).clamp(0, 1)
    torch.testing.assert_close(out, want)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ivfuse", "official"])
def test_llvip_1280x1024_pair(preset):
    """A full LLVIP frame (night street, 1280×1024) is fused at its size; the hot pedestrians stay bright."""
    from ivfuse.data.images import read_ir, read_vis

    root = need("data/LLVIP_sample")
    ir, vis = read_ir(root / "ir" / "190006.jpg")[None], read_vis(root / "vi" / "190006.jpg")[None]
    assert ir.shape == (1, 1, 1024, 1280) and vis.shape == (1, 3, 1024, 1280)
    with torch.no_grad():
        out = sage(preset)(ir, vis)
    assert out.shape == (1, 3, 1024, 1280) and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0.05
    y = 0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]
    hot = ir[:, 0] > 0.8
    assert hot.sum() > 1000 and y[hot].mean() > y.mean() + 0.2  # thermal targets carried into the fused image


@pytest.mark.realdata
@pytest.mark.parametrize("preset", ["ivfuse", "official"])
def test_toy_21x17_pair_odd_sizes_and_batches(preset):
    m = sage(preset)
    ir, vis = toy_pair(17, 21, batch=2)
    y = 0.299 * vis[:, :1] + 0.587 * vis[:, 1:2] + 0.114 * vis[:, 2:]
    with torch.no_grad():
        out = m(ir, vis)
        single = m(ir[1:], vis[1:])
        gray = m(ir, y)
        small = m(ir[..., :4, :5], vis[..., :4, :5])  # the 4×4 minimum: two 2×2 pools leave one pixel
    assert out.shape == (2, 3, 17, 21) and gray.shape == (2, 1, 17, 21) and small.shape == (2, 3, 4, 5)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert (out - out.mean((2, 3), keepdim=True)).abs().mean() > 0.01  # not a constant image
    torch.testing.assert_close(out[1:], single, atol=1e-5, rtol=0)  # images of a batch are independent (BN eval)
    # the hot target is brighter in the fused image than around it
    fy = gray[:, 0]
    assert fy[:, 4:8, 5:10].mean() > fy.mean() + 0.1


@pytest.mark.realdata
def test_images_below_4x4_are_refused_in_one_line():
    with pytest.raises(InputError) as e:
        sage()(torch.rand(1, 1, 3, 21), torch.rand(1, 3, 3, 21))
    assert "minimum of 'sage'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="minimum of 'sage'"):
        sage("official")(torch.rand(1, 1, 17, 2), torch.rand(1, 1, 17, 2))


@pytest.mark.realdata
def test_official_preset_quantises_like_cv2_imread():
    """The official preset sees 8-bit inputs: a change below half a grey level does not change its output."""
    ir, vis = toy_pair(24, 32)
    ir8, vis8 = torch.round(ir * 255) / 255, torch.round(vis * 255) / 255
    m = sage("official")
    with torch.no_grad():
        a = m(ir8, vis8)
        b = m((ir8 + 0.3 / 255).clamp(0, 1), (vis8 - 0.3 / 255).clamp(0, 1))
        c = sage("ivfuse")(ir8, vis8)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0  # the two presets differ


@pytest.mark.realdata
def test_sage_through_the_cli_with_preset(pair_dirs, tmp_path):
    from ivfuse.cli import main
    from ivfuse.data.images import read_ir, read_vis

    need(WEIGHTS_FILE)
    ir_d, vis_d = pair_dirs
    outs = {}
    for preset in ("ivfuse", "official"):
        f = tmp_path / f"{preset}.png"
        rc = main(
            [
                "fuse",
                "--ir",
                str(ir_d / "p0.png"),
                "--vis",
                str(vis_d / "p0.png"),
                "-o",
                str(f),
                "--method",
                "sage",
                "--opt",
                f"preset={preset}",
            ]
        )
        assert rc == 0
        outs[preset] = np.asarray(Image.open(f), dtype=np.float64)
        with torch.no_grad():
            want = sage(preset)(read_ir(ir_d / "p0.png")[None], read_vis(vis_d / "p0.png")[None])
        assert outs[preset].shape == (64, 80, 3)
        assert np.abs(outs[preset] - np.round(hwc(want) * 255)).max() <= 1  # the option reached the factory
    assert np.abs(outs["ivfuse"] - outs["official"]).mean() > 0.1

"""The six TensorFlow peers (U2Fusion, STDFusionNet, SDNet, PMGI, CSF, DenseFuse) in ivfuse's own code, from their
official checkpoints converted to .npz (../shared/weights/peers, README_more.md there).

Parity: each method's default ``preset="official"`` against what its official script writes for two MSRS pairs
(../shared/peers_reference/<Method>/, README_more.md there: TF 2.21 compat.v1, Pillow 13, cross-checked against
TF 1.15). Then the methods' behaviour (sizes, batches, gray input, presets, CSF's gradient rule), the TF conversion
helpers of ``ivfuse.models._tf`` on known numbers, and weight errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import need
from PIL import Image

import ivfuse
from ivfuse.errors import InputError
from ivfuse.models import _tf
from ivfuse.utils import sha256sum
from ivfuse.weights import WEIGHTS

STEMS = ("00004N", "00633D")
METHODS = {  # ivfuse name: (reference folder, weight files)
    "densefuse": ("DenseFuse", ["DenseFuse.npz"]),
    "u2fusion": ("U2Fusion", ["U2Fusion.npz"]),
    "sdnet": ("SDNet", ["SDNet.npz"]),
    "stdfusionnet": ("STDFusionNet", ["STDFusionNet.npz"]),
    "pmgi": ("PMGI", ["PMGI.npz"]),
    "csf": ("CSF", ["CSF_ED.npz", "CSF_EC.npz"]),
}
NAMES = tuple(METHODS)
_models: dict[tuple[str, str], torch.nn.Module] = {}


def peer(name: str, preset: str = "official") -> torch.nn.Module:
    """The method with its shared weights (skips only when a shared file is absent); cached per session."""
    for f in METHODS[name][1]:
        need(f"weights/peers/{f}")
    if (name, preset) not in _models:
        _models[name, preset] = ivfuse.create_model(name, preset=preset)
    return _models[name, preset]


def read_pair(ir_path, vis_path) -> tuple[torch.Tensor, torch.Tensor]:
    from ivfuse.data.images import read_ir, read_vis

    return read_ir(ir_path)[None], read_vis(vis_path)[None]


def msrs(stem: str) -> tuple[torch.Tensor, torch.Tensor]:
    root = need("data/MSRS")
    return read_pair(root / "ir" / f"{stem}.png", root / "vi" / f"{stem}.png")


def u8(x: torch.Tensor) -> np.ndarray:
    """What ivfuse writes: round(255·x), H×W×C."""
    return np.round(x[0].permute(1, 2, 0).detach().numpy().astype(np.float64) * 255)


# ------------------------------------------------------------------------------------------ parity (official)
@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("name", NAMES)
def test_matches_official_output(name, stem, record_property):
    """``preset="official"`` written as ivfuse writes it vs the official script's PNG: measured max 1 grey level on
    ≤ 0.6 % of the values, mean ≤ 0.006/255 (docs/peers.md); the bound allows other BLAS/conv kernels."""
    ref = np.asarray(
        Image.open(need(f"peers_reference/{METHODS[name][0]}/{stem}.png")).convert("RGB"), dtype=np.float64
    )
    ir, vis = msrs(stem)
    model = peer(name, "official")
    assert model.preset == "official"
    with torch.no_grad():
        out = model(ir, vis)
    assert out.shape == vis.shape
    d = np.abs(u8(out) - ref)
    msg = f"mean {d.mean():.4f}/255 max {d.max():.0f}/255 ({(d > 0).mean():.3%} of values differ)"
    record_property(f"{name} {stem}", msg)
    print(f"{name} {stem}: {msg}")
    assert d.mean() <= 0.05 and d.max() <= 2 and (d > 0).mean() < 0.02


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_ivfuse_preset_is_the_same_network_without_8bit_steps_and_stretch(name):
    """``preset="ivfuse"`` feeds the float BT.601 luminance, keeps the network's own range (no stretch) and colours
    with ivfuse's BT.601 path. Its luminance, stretched, stays within a grey level of the official file's
    luminance: the same network; the raw output is not stretched (it does not span 0..1 exactly)."""
    ir, vis = msrs("00633D")
    ref = np.asarray(Image.open(need(f"peers_reference/{METHODS[name][0]}/00633D.png")).convert("L"), dtype=np.float64)
    model = peer(name, "ivfuse")
    with torch.no_grad():
        y = model.fuse_luma(ir, _tf.float_luma(vis))
        out = model(ir, vis)
    assert out.shape == vis.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    stretched = (y - y.min()) / (y.max() - y.min())
    d = np.abs(np.round(stretched[0, 0].numpy().astype(np.float64) * 255) - ref)
    print(f"{name}: ivfuse preset stretched vs official luminance: mean {d.mean():.3f}/255")
    assert d.mean() <= 1.0
    raw = y.flatten()
    assert not (float(raw.min()) == 0.0 and float(raw.max()) == 1.0), "ivfuse preset must not min-max stretch"


@pytest.mark.realdata
@pytest.mark.parametrize("stem,bound", [("00004N", 0.1), ("00633D", 0.5)])
def test_densefuse_official_is_almost_the_stretched_average(stem, bound):
    """A property of the released DenseFuse weights (docs/peers.md): the auto-encoder decodes the sum of two images'
    features to almost exactly the sum of the images, so the official file is nearly the stretched IR + visible
    luminance, with no network at all (measured 0.03 / 0.26 grey level); the network's output is closer still."""
    ref = np.asarray(Image.open(need(f"peers_reference/DenseFuse/{stem}.png")).convert("RGB"), dtype=np.float64)
    ir, vis = msrs(stem)
    i, v = _tf.official_inputs(ir, vis, "L")
    d = np.abs(u8(_tf.official_save(i + v, vis)) - ref)
    assert 0 < d.mean() <= bound


# ------------------------------------------------------------------------------------------ sizes
@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_llvip_1280x1024_and_toy_21x17(name):
    """Every peer fuses a full LLVIP pair (1280×1024, IR stored as 3 equal channels in a JPG) and a 21×17 toy pair;
    smaller than its minimum it refuses with a one-line error naming the minimum."""
    root = need("data/LLVIP_sample")
    ir, vis = read_pair(root / "ir" / "010001.jpg", root / "vi" / "010001.jpg")
    assert ir.shape == (1, 1, 1024, 1280)
    model = peer(name, "ivfuse")  # the default, as ivfuse fuse runs it
    with torch.inference_mode():  # as ivfuse fuse calls it
        out = model(ir, vis)
    assert out.shape == (1, 3, 1024, 1280) and torch.isfinite(out).all()
    lum = _tf.float_luma(out)
    assert float(out.min()) >= 0 and float(out.max()) <= 1 and float(lum.std()) > 0.03  # not flat
    # the hot targets of the IR image stay bright in the fusion: its brightest 1 % is brighter than the rest
    hot = ir >= torch.quantile(ir.flatten()[::97], 0.99)
    assert float(lum[hot].mean()) > float(lum[~hot].mean()) + 0.1

    g = torch.Generator().manual_seed(1)
    ir, vis = torch.rand(1, 1, 17, 21, generator=g), torch.rand(1, 3, 17, 21, generator=g)
    with torch.no_grad():
        toy = model(ir, vis)
    assert toy.shape == (1, 3, 17, 21) and torch.isfinite(toy).all() and float(toy.std()) > 0.01
    small = model.min_size - 1
    if small >= 1:
        with pytest.raises(InputError) as e:
            model(torch.rand(1, 1, small, 21), torch.rand(1, 3, small, 21))
        assert f"minimum of '{name}'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.realdata
def test_minimum_sizes():
    """Reflection padding needs 2 pixels (U2Fusion, DenseFuse); CSF's classifier reflect-pads by 2 after three
    2× poolings, so 17 is its minimum (⌈17/8⌉ = 3); zero-padded nets take 1 pixel."""
    assert {n: peer(n).min_size for n in NAMES} == {
        "densefuse": 2,
        "u2fusion": 2,
        "sdnet": 1,
        "stdfusionnet": 1,
        "pmgi": 1,
        "csf": 17,
    }
    with torch.no_grad():
        for n in ("sdnet", "stdfusionnet", "pmgi"):
            assert peer(n)(torch.rand(1, 1, 1, 3), torch.rand(1, 3, 1, 3)).shape == (1, 3, 1, 3)
        assert peer("csf")(torch.rand(1, 1, 17, 17), torch.rand(1, 1, 17, 17)).shape == (1, 1, 17, 17)
    with pytest.raises(InputError, match="16x16 is smaller than the 17x17 minimum of 'csf'"):
        peer("csf")(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))


# ------------------------------------------------------------------------------------------ behaviour
@pytest.mark.realdata
@pytest.mark.parametrize("preset", ["official", "ivfuse"])
@pytest.mark.parametrize("name", NAMES)
def test_batches_gray_and_odd_sizes(name, preset):
    model = peer(name, preset)
    g = torch.Generator().manual_seed(3)
    ir = torch.rand(2, 1, 37, 53, generator=g)
    vis = torch.rand(2, 3, 37, 53, generator=g)
    vis[1] = vis[1] * 0.5  # a different second image
    y = _tf.float_luma(vis)
    with torch.no_grad():
        out = model(ir, vis)
        single = model(ir[1:], vis[1:])
        gray = model(ir, y)
        rep = model(ir, y.expand(-1, 3, -1, -1))
    assert out.shape == (2, 3, 37, 53) and gray.shape == (2, 1, 37, 53)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out[1:], single, atol=1e-5, rtol=0)  # per-image stretch / statistics / saliency
    # a gray visible image gives the gray result; replicated to RGB it gives (about) three equal channels of the same.
    # ivfuse: exactly (BT.601). official: Pillow's luma of a gray RGB image and of an 'L' image can differ by a
    # fraction of a level after its 8-bit YCbCr round trip, which CSF's saliency softmax (c = 0.00015) amplifies
    # on a few pixels
    # (measured: ivfuse ≤ 0.06/255; official: 0 for the 'L' readers U2Fusion/DenseFuse, mean ≤ 0.16/255 for the
    # 'YCbCr' readers, CSF mean 0.39/255, max 4/255)
    d = (rep - gray.expand(-1, 3, -1, -1)).abs()
    if preset == "ivfuse":
        assert float(d.max()) < 1e-3
    else:
        assert float(d.mean()) < 0.6 / 255 and float(d.max()) <= 5 / 255 + 1e-6
        if model.input_mode == "L":
            assert float(d.max()) == 0.0
    assert (out[0] - out[1]).abs().mean() > 0.01


@pytest.mark.realdata
@pytest.mark.parametrize("name", NAMES)
def test_sources_are_not_interchangeable(name):
    """Every net has separate IR/visible inputs or paths (DenseFuse's addition is symmetric in the features, so it
    is the exception: swapping the sources changes nothing)."""
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(1, 1, 40, 48, generator=g), torch.rand(1, 1, 40, 48, generator=g)
    m = peer(name, "ivfuse")
    with torch.no_grad():
        d = (m.fuse_luma(a, b) - m.fuse_luma(b, a)).abs().max()
    if name == "densefuse":
        assert d < 1e-5
    else:
        assert d > 1e-3


@pytest.mark.realdata
@pytest.mark.parametrize("size", [(24, 32), (37, 53), (17, 20)])
def test_csf_single_gradient_equals_the_official_ten_sample_batch(size):
    """The official rule differentiates ``out[0, c]`` of a 10-sample batch: only sample 0 has a gradient, and the
    0.25^i-weighted mean over samples is that gradient /10. ivfuse's explicit backward of one sample gives the same
    array as autograd on the official batch (odd sizes: TF SAME pooling pads at the end)."""
    m = peer("csf")
    g = torch.Generator().manual_seed(5)
    ir, vis = torch.rand(1, 1, *size, generator=g) * 2 - 1, torch.rand(1, 1, *size, generator=g) * 2 - 1
    vis_shift = vis - vis.mean() + ir.mean()
    batch = torch.cat([vis_shift + (ir - vis_shift) * (k + 1) / 10 for k in range(10)])  # official var_ir
    feats = m.encode(batch).detach().requires_grad_(True)
    (grads,) = torch.autograd.grad(m.classify(feats)[0, 1], feats)
    assert grads[0].abs().sum() > 0 and torch.count_nonzero(grads[1:]) == 0
    official = torch.stack([grads[k].abs() * 0.25**k for k in range(10)]).mean(0, keepdim=True)
    ivfuse_s = m.saliency(vis_shift + (ir - vis_shift) / 10, 1) / 10
    torch.testing.assert_close(ivfuse_s, official, atol=2e-8, rtol=1e-4)
    # and for the visible class on a constant image (every pooling window a tie: the first maximum takes it)
    flat = torch.zeros(1, 1, *size)
    f = m.encode(flat).detach().requires_grad_(True)
    (want,) = torch.autograd.grad(m.classify(f)[0, 0], f)
    torch.testing.assert_close(m.saliency(flat, 0), want.abs(), atol=2e-8, rtol=1e-4)


@pytest.mark.realdata
def test_csf_works_under_inference_mode():
    m = peer("csf")
    x = torch.rand(1, 1, 24, 24)
    with torch.inference_mode():
        a = m(x, x.expand(-1, 3, -1, -1))
    with torch.no_grad():
        b = m(x, x.expand(-1, 3, -1, -1))
    torch.testing.assert_close(a, b)


@pytest.mark.realdata
@pytest.mark.parametrize("name", NAMES)
def test_default_preset_is_ivfuse_and_differentiable(name):
    """The default is ``preset="ivfuse"``, a plain torch graph (losses, fine-tuning): gradients reach both inputs
    (CSF: through its features, the saliency weights held constant)."""
    m = peer(name, "ivfuse")
    assert ivfuse.create_model(name).preset == "ivfuse"
    ir = torch.rand(1, 1, 20, 24, requires_grad=True)
    vis = torch.rand(1, 3, 20, 24, requires_grad=True)
    m(ir, vis).mean().backward()
    assert ir.grad.abs().sum() > 0 and vis.grad.abs().sum() > 0


@pytest.mark.realdata
def test_presets_validated_and_through_the_cli(capsys, pair_dirs, tmp_path):
    from ivfuse.cli import main

    need("weights/peers/SDNet.npz")
    with pytest.raises(InputError, match="sdnet: unknown preset 'paper' \\(choose from ivfuse, official\\)"):
        ivfuse.create_model("sdnet", preset="paper")
    ir, vis = pair_dirs
    written = {}
    for preset in ("official", "ivfuse"):
        out = tmp_path / f"{preset}.png"
        rc = main(
            [
                "fuse",
                "--ir",
                str(ir / "p0.png"),
                "--vis",
                str(vis / "p0.png"),
                "-o",
                str(out),
                "--method",
                "sdnet",
                "--opt",
                f"preset={preset}",
            ]
        )
        assert rc == 0
        written[preset] = np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)
    # the official preset returns 8-bit values, so the written file is exactly the Python result
    i, v = read_pair(ir / "p0.png", vis / "p0.png")
    with torch.no_grad():
        api = u8(peer("sdnet")(i, v))
        gray = peer("sdnet")(i, _tf.float_luma(v))
    assert np.array_equal(written["official"], api)
    assert float(gray.min()) == 0.0 and float(gray.max()) == 1.0  # the official stretch (gray: no colour step)
    assert np.abs(written["official"] - written["ivfuse"]).mean() > 1  # the presets differ


def test_methods_are_listed_with_paper_and_licence(capsys):
    from ivfuse.cli import main

    assert main(["list", "methods"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, paper in [
        ("u2fusion", "TPAMI 2022"),
        ("stdfusionnet", "TIM 2021"),
        ("sdnet", "IJCV 2021"),
        ("pmgi", "AAAI 2020"),
        ("csf", "TCI 2021"),
        ("densefuse", "TIP 2019"),
    ]:
        assert name in text and paper in text
    assert text.count("licence") >= 6 and "licence MIT" in text


# ------------------------------------------------------------------------------------------ weights
@pytest.mark.realdata
@pytest.mark.parametrize("key", ["u2fusion", "stdfusionnet", "sdnet", "pmgi", "csf_ec", "csf_ed", "densefuse"])
def test_shared_files_match_pinned_sha256(key):
    info = WEIGHTS[key]
    assert sha256sum(need(f"weights/{info.filename}")) == info.sha256
    assert "https://github.com/ycc568/my-seafusion/tree/cff58e5" in info.description and info.url is None


@pytest.mark.realdata
@pytest.mark.parametrize("name", NAMES)
def test_every_checkpoint_array_is_used_or_documented_unused(name):
    """Loading is strict: the parameters of each model are exactly the file's arrays (minus the documented unused
    ones: PMGI's stored BatchNorm, CSF's duplicate encoder in EC and its step counter)."""
    model = peer(name)
    n_model = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    arrays = {}
    for f in METHODS[name][1]:
        with np.load(need(f"weights/peers/{f}")) as z:
            arrays.update({f"{f}:{k}": z[k].size for k in z.files})
    unused = sum(
        v
        for k, v in arrays.items()
        if "/BatchNorm/" in k or k.endswith(":Variable") or k.startswith("CSF_EC.npz:Encoder/")
    )
    assert n_model == sum(arrays.values()) - unused
    expected = {
        "densefuse": 74193,
        "u2fusion": 659217,
        "sdnet": 67091,
        "stdfusionnet": 282513,
        "pmgi": 41633,
        "csf": 185067,
    }
    assert sum(p.numel() for p in model.parameters()) == expected[name]


@pytest.mark.realdata
def test_weight_file_errors(tmp_path):
    with pytest.raises(InputError) as e:
        ivfuse.create_model("densefuse", weights=need("weights/peers/U2Fusion.npz"))
    msg = str(e.value)
    assert "U2Fusion.npz" in msg and "keys do not match DenseFuse" in msg and "\n" not in msg
    z = dict(np.load(need("weights/peers/DenseFuse.npz")))
    z["decoder/conv2_4/kernel"] = z["decoder/conv2_4/kernel"][:, :, :8]
    bad_shape = tmp_path / "shape.npz"
    np.savez(bad_shape, **z)
    with pytest.raises(InputError, match=r"not DenseFuse weights \(decoder/conv2_4/kernel"):
        ivfuse.create_model("densefuse", weights=bad_shape)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read densefuse weights"):
        ivfuse.create_model("densefuse", weights=broken)
    with pytest.raises(InputError, match="weights file not found"):
        ivfuse.create_model("u2fusion", weights=tmp_path / "nope.npz")


@pytest.mark.realdata
def test_explicit_weights_and_csf_folder(tmp_path):
    src = need("weights/peers/CSF_ED.npz")
    (tmp_path / "ED.npz").write_bytes(src.read_bytes())
    (tmp_path / "EC.npz").write_bytes(need("weights/peers/CSF_EC.npz").read_bytes())
    m = ivfuse.create_model("csf", weights=tmp_path)  # a folder with both files
    ref = peer("csf")
    for (k, a), (_, b) in zip(m.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    (tmp_path / "EC.npz").unlink()
    with pytest.raises(InputError, match="EC.npz: csf weights file not found"):
        ivfuse.create_model("csf", weights=tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_missing_shared_weights_message(name, tmp_path, monkeypatch):
    """Without the shared file the error names the file, where it was looked for and how to pass it; one line."""
    monkeypatch.setenv("IVFUSE_SHARED", str(tmp_path / "shared"))
    with pytest.raises(InputError) as e:
        ivfuse.create_model(name)
    msg = str(e.value)
    assert METHODS[name][1][0] in msg and f"create_model('{name}'" in msg and "--weights" in msg
    assert "no download URL" in msg and "\n" not in msg


# ------------------------------------------------------------------------------------------ TF helpers
def test_hwio_kernels_become_oihw_and_same_padding_is_tfs():
    """A TF kernel ``[kh, kw, in, out]`` applied by :class:`TFConv` equals the correlation written out by hand
    (TF SAME, stride 1: zero padding, for an even kernel the extra row/column at the bottom/right)."""
    rng = np.random.default_rng(0)
    for k in (3, 2, 1):
        kern = rng.standard_normal((k, k, 2, 3)).astype(np.float32)
        bias = rng.standard_normal(3).astype(np.float32)
        x = rng.standard_normal((1, 2, 5, 6)).astype(np.float32)
        conv = _tf.TFConv(2, 3, k, "same")
        _tf.assign_tf({"k": conv.weight, "b": conv.bias}, {"k": kern, "b": bias}, "mem", "test")
        lo = (k - 1) // 2
        xp = np.pad(x[0], ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo)))
        want = np.zeros((3, 5, 6), np.float64)
        for o in range(3):
            for i in range(5):
                for j in range(6):
                    want[o, i, j] = (xp[:, i : i + k, j : j + k] * kern[:, :, :, o].transpose(2, 0, 1)).sum() + bias[o]
        got = conv(torch.from_numpy(x))[0].detach().numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_reflect_padding_does_not_repeat_the_edge():
    conv = _tf.TFConv(1, 1, 3, "reflect", bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 0] = 1.0  # picks the left neighbour
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 3, 4).contiguous()
    # TF REFLECT of [0 1 2 3] is [1 0 1 2 3 2]: the left neighbour of column 0 is 1
    assert conv(x)[0, 0, 0].tolist() == [1.0, 0.0, 1.0, 2.0]


def test_assign_tf_is_strict():
    conv = _tf.TFConv(1, 2, 3)
    arrays = {"w": np.zeros((3, 3, 1, 2), np.float32), "b": np.zeros(2, np.float32), "extra": np.zeros(1, np.float32)}
    with pytest.raises(InputError, match=r"unexpected \['extra'\]"):
        _tf.assign_tf({"w": conv.weight, "b": conv.bias}, arrays, "f.npz", "M")
    _tf.assign_tf({"w": conv.weight, "b": conv.bias}, arrays, "f.npz", "M", unused=("ext",))
    with pytest.raises(InputError, match=r"missing \['c'\]"):
        _tf.assign_tf({"w": conv.weight, "c": conv.bias}, arrays, "f.npz", "M", unused=("ext", "b"))


def test_max_pool_same_and_batch_norms():
    x = torch.arange(15.0).view(1, 1, 3, 5) - 20  # all negative: zero padding would win, TF's never does
    p = _tf.tf_max_pool_same(x)
    assert p.shape == (1, 1, 2, 3)
    assert p[0, 0].tolist() == [[-14.0, -12.0, -11.0], [-9.0, -7.0, -6.0]]  # padding at the bottom/right
    y = torch.randn(2, 4, 6, 7) * 3 + 1
    torch.testing.assert_close(_tf.tf_instance_standardise(y, 1e-5), F.instance_norm(y, eps=1e-5), atol=1e-5, rtol=0)
    bn = {
        "gamma": torch.full((4,), 2.0),
        "beta": torch.ones(4),
        "moving_mean": torch.full((4,), 0.5),
        "moving_variance": torch.full((4,), 4.0),
    }
    torch.testing.assert_close(_tf.tf_batch_norm(y, bn, 1e-3), 2 * (y - 0.5) / np.sqrt(4.001) + 1)


def test_bytescale_is_scipy_imsave():
    y = np.array([[0.0, 0.3], [0.7, 2.0]], np.float32)
    assert _tf.bytescale(y).tolist() == [[0, 38], [89, 255]]  # x*127.5 = 0, 38.25, 89.25, 255; floor(+.5)
    assert _tf.bytescale(np.full((2, 2), 0.7, np.float32)).tolist() == [[0, 0], [0, 0]]  # constant -> 0


def test_official_inputs_and_save_use_pillow_conventions():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    vis = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    ir = vis[:, :1]
    _, v_l = _tf.official_inputs(ir, vis, "L")
    _, v_f = _tf.official_inputs(ir, vis, "luma")
    assert torch.equal(v_l[0, 0], torch.from_numpy(np.asarray(Image.fromarray(rgb).convert("L"), np.float32)))
    assert torch.equal(v_l.round(), v_l)  # integers
    plain = torch.from_numpy(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    assert 0 < (v_f[0, 0] - plain).abs().max() <= 2.0  # the 8-bit YCbCr round trip moves the luma a little
    fused = torch.rand(1, 1, 9, 11)
    out = _tf.official_save(fused, vis)
    y8 = _tf.bytescale(fused[0, 0].numpy())
    _, cb, cr = Image.fromarray(rgb).convert("YCbCr").split()
    want = np.array(Image.merge("YCbCr", (Image.fromarray(y8), cb, cr)).convert("RGB"))
    assert torch.equal((out[0] * 255).round().byte().permute(1, 2, 0), torch.from_numpy(want))
    gray = _tf.official_save(fused, vis[:, :1])
    assert gray.shape == (1, 1, 9, 11) and torch.equal((gray[0, 0] * 255).round().byte(), torch.from_numpy(y8))


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["densefuse", "sdnet", "pmgi"])
def test_official_preset_keeps_the_authors_memory_layout(name):
    """``preset="official"`` keeps the default (NCHW) weights, whose summation order its 8-bit round trips need;
    the default preset runs them channels-last (``FusionModel.channels_last``)."""
    convs = {p: [w for w in peer(name, p).parameters() if w.ndim == 4] for p in ("official", "ivfuse")}
    assert convs["official"] and all(w.is_contiguous() for w in convs["official"])
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs["ivfuse"])
    assert not all(w.is_contiguous() for w in convs["ivfuse"])  # (1-channel kernels are both)

"""The authors' own checkpoints of MetaFusion, TIM (full and light), OCCO and TSJNet.

Parity data: ``$IVFUSE_SHARED/seed_reference`` (see its README): each official network class built with seeded
weights, saved in the official container format, and the official inference script run on two MSRS pairs. With
``preset="official"`` ivfuse must reproduce those PNGs (mean |diff| <= 1 grey level; the max is printed and bounded
too) and, where the raw network output was saved (``out_00004N.npy``), the raw output within 1e-4.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ivfuse
from ivfuse.errors import InputError
from ivfuse.utils import shared_root

SHARED = shared_root()

SEED = SHARED / "seed_reference"
MSRS = SHARED / "data" / "MSRS"
PAIRS = ("00004N", "00633D")


def _need(*paths: Path) -> None:
    for p in paths:
        if not p.exists():
            pytest.skip(f"shared file {p} is absent")


def _pair(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    _need(MSRS / "ir" / f"{name}.png", MSRS / "vi" / f"{name}.png")
    return ivfuse.read_ir(MSRS / "ir" / f"{name}.png")[None], ivfuse.read_vis(MSRS / "vi" / f"{name}.png")[None]


def _u8(x: torch.Tensor) -> np.ndarray:
    """What ``write_image`` would write: ``C×H×W`` in [0, 1] -> uint8 ``H×W×C`` (as int16 for differences)."""
    return np.clip(np.round(x.permute(1, 2, 0).numpy() * 255.0), 0, 255).astype(np.int16)


def _compare(got: np.ndarray, ref_png: Path, label: str) -> tuple[float, int]:
    ref = np.asarray(Image.open(ref_png)).astype(np.int16)
    if got.shape[-1] == 1:  # gray output against the official 3-channel PNG (equal channels)
        assert (ref == ref[..., :1]).all()
        ref = ref[..., :1]
    assert got.shape == ref.shape, f"{label}: shape {got.shape} vs official {ref.shape}"
    d = np.abs(got - ref)
    print(f"{label}: mean |diff| {d.mean():.4f}, max {d.max()}, pixels differing {(d > 0).mean():.2e}")
    return float(d.mean()), int(d.max())


def _check_pairs(model, folder: Path, label: str) -> None:
    for name in PAIRS:
        ir, vis = _pair(name)
        with torch.inference_mode():
            out = model(ir, vis)[0]
        mean, mx = _compare(_u8(out), folder / f"{name}.png", f"{label} {name}")
        assert mean <= 1.0 and mx <= 3, f"{label} {name}: mean {mean}, max {mx}"


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ MetaFusion
@pytest.mark.realdata
@pytest.mark.slow
def test_metafusion_official_parity():
    f = SEED / "MetaFusion" / "metafusion_seed.pth"
    _need(f, SEED / "MetaFusion" / "out_00004N.npy")
    model = ivfuse.create_model("metafusion", weights=f, preset="official")
    assert model.checkpoint_format == "official" and model.colour == "hsv"
    ir, vis = _pair("00004N")
    with torch.inference_mode():
        x = model.official_inputs(ir[0], vis[0])
        _, w = model.features_and_weights(x["ir"], x["vis_rgb"])
    ref = np.load(SEED / "MetaFusion" / "out_00004N.npy")
    assert w.shape == ref.shape == (1, 2, 384, 512)
    raw = float(np.abs(w.numpy() - ref).max())
    print(f"MetaFusion raw res_weight max |diff| {raw:.3g}")
    assert raw <= 1e-4
    _check_pairs(model, SEED / "MetaFusion", "MetaFusion")


@pytest.mark.realdata
def test_metafusion_official_default_preset_keeps_ivfuse_conventions():
    f = SEED / "MetaFusion" / "metafusion_seed.pth"
    _need(f)
    model = ivfuse.create_model("metafusion", weights=f)
    assert model.preset == "ivfuse"
    ir, vis = torch.rand(1, 1, 20, 28), torch.rand(1, 3, 20, 28)
    with torch.inference_mode():
        out = model(ir, vis)
        off = ivfuse.create_model("metafusion", weights=f, preset="official")(ir, vis)
    assert out.shape == (1, 3, 20, 28)  # input size, not the official 512×384
    assert off.shape == (1, 3, 384, 512)


# ------------------------------------------------------------------------------------------------ TIM
@pytest.mark.realdata
@pytest.mark.slow
def test_tim_full_official_parity():
    d = SEED / "TIMFusion" / "full"
    _need(d / "weights_1_seed.pth", d / "weights_2_seed.pth")
    model = ivfuse.create_model(
        "tim", weights=d / "weights_1_seed.pth", stage2=d / "weights_2_seed.pth", preset="official"
    )
    assert model.layout == "official" and model.stage2 is not None
    assert sum(p.numel() for p in model.parameters()) == 994_917 + 237_308  # the official counts (README)
    before = _state(model)
    _check_pairs(model, d, "TIM full")
    assert _same_state(before, _state(model))  # train-mode BN of stage 2 did not touch the running statistics


@pytest.mark.realdata
@pytest.mark.slow
def test_tim_light_official_parity():
    d = SEED / "TIMFusion" / "light"
    _need(d / "weights_1_seed.pth")
    model = ivfuse.create_model("tim", weights=d / "weights_1_seed.pth", preset="official")
    assert model.stage2 is None and model.stage1_order == "vis_ir"
    assert sum(p.numel() for p in model.parameters()) == 127_358
    _check_pairs(model, d, "TIM light")


@pytest.mark.realdata
def test_tim_light_official_through_the_cli(tmp_path):
    from ivfuse.cli import main

    f = SEED / "TIMFusion" / "light" / "weights_1_seed.pth"
    _need(f, MSRS / "ir" / "00004N.png")
    out = tmp_path / "fused.png"
    rc = main(
        [
            "fuse",
            "--ir",
            str(MSRS / "ir" / "00004N.png"),
            "--vis",
            str(MSRS / "vi" / "00004N.png"),
            "-o",
            str(out),
            "--method",
            "tim",
            "--weights",
            str(f),
            "--opt",
            "preset=official",
            "-q",
        ]
    )
    assert rc == 0
    got = np.asarray(Image.open(out)).astype(np.int16)
    mean, mx = _compare(
        got[..., None] if got.ndim == 2 else got, SEED / "TIMFusion" / "light" / "00004N.png", "CLI light"
    )
    assert mean <= 1.0 and mx <= 3


@pytest.mark.realdata
def test_tim_full_finds_its_stage2_file_and_bench_key(tmp_path):
    from ivfuse.bench.cache import method_key
    from ivfuse.bench.protocols import build_method

    d = SEED / "TIMFusion" / "full"
    _need(d / "weights_1_seed.pth", d / "weights_2_seed.pth")
    shutil.copy(d / "weights_1_seed.pth", tmp_path / "weights_1_1059.pt")
    with pytest.raises(InputError, match="stage2=FILE") as e:  # the second file is missing
        ivfuse.create_model("tim", weights=tmp_path / "weights_1_1059.pt")
    assert "\n" not in str(e.value)
    shutil.copy(d / "weights_2_seed.pth", tmp_path / "weights_2_1059.pt")
    name, model, opts, _ = build_method(f"tim@{tmp_path / 'weights_1_1059.pt'}")  # ivfuse bench --methods tim@FILE
    assert model.stage2 is not None and model.checkpoint_format == "official"
    key, _ = method_key(name, opts, model)
    key_again, _ = method_key(name, opts, ivfuse.create_model("tim", weights=tmp_path / "weights_1_1059.pt"))
    _, light, lopts, _ = build_method(f"tim@{SEED / 'TIMFusion' / 'light' / 'weights_1_seed.pth'}")
    key_light, _ = method_key(name, lopts, light)
    key_default, _ = method_key("tim", {}, ivfuse.create_model("tim"))
    assert key == key_again and len({key, key_light, key_default}) == 3
    with pytest.raises(InputError, match="stage-2 file"):  # the stage-2 file given as the weights
        ivfuse.create_model("tim", weights=tmp_path / "weights_2_1059.pt")


# ------------------------------------------------------------------------------------------------ OCCO
@pytest.mark.realdata
@pytest.mark.slow
def test_occo_official_parity():
    f = SEED / "OCCO" / "occo_seed.pth"
    _need(f, SEED / "OCCO" / "out_00004N.npy")
    model = ivfuse.create_model("occo", weights=f, preset="official")
    assert model.checkpoint_format == "official" and all(b.shared_spatial for b in model.fifb)
    before = _state(model)
    ir, vis = _pair("00004N")
    with torch.inference_mode():
        raw = model.official_raw(ir, vis)
    ref = np.load(SEED / "OCCO" / "out_00004N.npy")
    assert raw.shape == ref.shape
    d = float(np.abs(raw.numpy() - ref).max())
    print(f"OCCO raw output max |diff| {d:.3g}")
    assert d <= 1e-4
    _check_pairs(model, SEED / "OCCO", "OCCO")
    assert _same_state(before, _state(model))  # batch statistics used, running statistics untouched


@pytest.mark.realdata
def test_occo_official_default_preset_is_eval_mode_and_clamped():
    f = SEED / "OCCO" / "occo_seed.pth"
    _need(f)
    model = ivfuse.create_model("occo", weights=f)
    assert model.preset == "ivfuse" and not model.training
    ir, vis = torch.rand(2, 1, 21, 27), torch.rand(2, 3, 21, 27)
    with torch.inference_mode():
        out = model(ir, vis)
        one = model(ir[1:], vis[1:])
    assert out.shape == (2, 3, 21, 27) and 0 <= out.min() and out.max() <= 1
    assert torch.allclose(out[1:], one, atol=1e-5)  # eval-mode BN: a pair's result does not depend on the batch


# ------------------------------------------------------------------------------------------------ wrong files
@pytest.mark.realdata
@pytest.mark.parametrize(
    "method,file",
    [
        ("tim", "OCCO/occo_seed.pth"),
        ("occo", "TIMFusion/light/weights_1_seed.pth"),
        ("metafusion", "OCCO/occo_seed.pth"),
        ("occo", "MetaFusion/metafusion_seed.pth"),
        ("tim", "MetaFusion/metafusion_seed.pth"),
        ("metafusion", "TIMFusion/full/weights_2_seed.pth"),
        ("tsjnet", "OCCO/occo_seed.pth"),
    ],
)
def test_seed_file_into_the_wrong_method_is_a_one_line_error(method, file):
    f = SEED / file
    _need(f)
    with pytest.raises(InputError) as e:
        ivfuse.create_model(method, weights=f)
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg and "accepted" in msg


@pytest.mark.parametrize("method", ["metafusion", "tim", "occo", "tsjnet"])
def test_file_of_neither_format_is_a_one_line_error(tmp_path, method):
    f = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, f)
    with pytest.raises(InputError) as e:
        ivfuse.create_model(method, weights=f)
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg and "accepted" in msg and "official" in msg


@pytest.mark.parametrize("method", ["metafusion", "tim", "occo", "tsjnet"])
def test_official_preset_needs_the_official_network(method):
    with pytest.raises(InputError, match="official"):
        ivfuse.create_model(method, preset="official")  # ivfuse's shipped model
    with pytest.raises(InputError, match="preset"):
        ivfuse.create_model(method, preset="authors")


def test_batch_stat_norms_restores_everything():
    from ivfuse.models.official import batch_stat_norms

    bn = torch.nn.BatchNorm2d(3).eval()
    bn.running_mean.fill_(5.0)
    before = _state(bn)
    x = torch.randn(2, 3, 4, 4) * 3 + 1
    with batch_stat_norms(bn):
        y = bn(x)
    assert _same_state(before, _state(bn)) and not bn.training
    mu, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    assert torch.allclose(y, (x - mu) / torch.sqrt(var + bn.eps), atol=1e-5)
    assert not torch.allclose(bn(x), y, atol=1e-2)  # eval mode again: running statistics


# ------------------------------------------------------------------------------------------------ TSJNet
def _tsjnet_official_parts(seed: int = 0, drop_rpb: bool = False) -> dict:
    """A state dict with exactly the official key names and shapes of the JSON (random values)."""
    f = SEED / "TSJNet" / "tsjnet_state_dict_keys.json"
    _need(f)
    spec = json.loads(f.read_text())
    g = torch.Generator().manual_seed(seed)
    parts = {}
    for part, info in spec["modules"].items():
        sd = {}
        for key, shape, dtype in info["keys"]:
            if drop_rpb and key.endswith(".attn.rpb"):
                continue
            sd[key] = (
                torch.randint(0, 1000, shape, generator=g) if dtype == "int64" else torch.randn(shape, generator=g)
            )
        assert len(info["keys"]) == info["n_keys"]
        parts[part] = sd
    assert sum(len(v) for v in parts.values()) == (816 - 36 if drop_rpb else 816)
    return parts


@pytest.mark.realdata
@pytest.mark.slow
def test_tsjnet_official_key_map_fills_the_paper_configuration(tmp_path):
    from ivfuse.models.tsjnet import OFFICIAL_KEYS, TSJNet

    parts = _tsjnet_official_parts()
    f = tmp_path / "TSJNet.pth"
    torch.save(parts, f)
    model = ivfuse.create_model("tsjnet", weights=f)  # format found from the keys
    assert isinstance(model, TSJNet) and model.checkpoint_format == "official" and model.layout == "official"
    ref = TSJNet(variant="paper", merge="concat")  # ivfuse's paper configuration: same widths and depths
    assert model.config == ref.config
    own = model.state_dict()
    flat = {f"{p}.{k}": v for p, sd in parts.items() for k, v in sd.items()}
    mapping = OFFICIAL_KEYS.mapping(list(flat))
    dropped = sorted(set(flat) - set(mapping))
    assert len(dropped) == 44 and all(
        ".spa." in k or ".attn.norm." in k or ".avgpool." in k or ".conv_head." in k for k in dropped
    )
    filled = set()
    for key, tgt in mapping.items():
        if tgt.endswith("]"):  # one head of the decoder's grouped attention conv
            name, i = tgt[:-1].split("[")
            assert torch.equal(own[name][int(i) : int(i) + 1], flat[key]), key
            filled.add(name)
        else:
            assert torch.equal(own[tgt], flat[key]), key
            filled.add(tgt)
    assert filled == set(own)  # every ivfuse tensor comes from the file
    assert len(mapping) == 816 - 44 and len(own) == 816 - 44 - 16 + 2
    assert sum(p.numel() for p in model.parameters()) == 45_133_055 - 17_040  # official total minus the unused
    rpb = {t: o for o, t in mapping.items() if t.endswith(".attn.rpb")}  # NATTEN 0.14/0.15: loaded as is
    assert len(rpb) == 36 and all(o.endswith(".attn.rpb") and torch.equal(own[t], flat[o]) for t, o in rpb.items())


@pytest.mark.realdata
@pytest.mark.slow
def test_tsjnet_official_natten_017_layout_and_partial_rpb():
    from ivfuse.models.tsjnet import TSJNet

    parts = _tsjnet_official_parts(drop_rpb=True)  # NATTEN 0.17: rel_pos_bias=False, no rpb keys
    model = TSJNet.from_official_state(parts, "natten017.pth")
    rpb = {k: v for k, v in model.state_dict().items() if k.endswith(".attn.rpb")}
    assert len(rpb) == 36 and all(not v.any() for v in rpb.values())  # zero bias = attention without one
    parts = _tsjnet_official_parts()
    del parts["BaseFuseLayer"]["attn.levels.0.blocks.0.attn.rpb"]
    with pytest.raises(InputError, match="35 of the 36 'rpb'"):
        TSJNet.from_official_state(parts, "partial.pth")
    parts = _tsjnet_official_parts()
    parts["DIDF_Decoder"]["extra.weight"] = torch.zeros(1)
    with pytest.raises(InputError, match="extra.weight"):
        TSJNet.from_official_state(parts, "extra.pth")


@pytest.mark.realdata
def test_cli_wrong_official_file_exits_2_with_one_line(tmp_path, capsys):
    from ivfuse.cli import main

    f = SEED / "OCCO" / "occo_seed.pth"
    _need(f, MSRS / "ir" / "00004N.png")
    out = tmp_path / "f.png"
    rc = main(
        [
            "fuse",
            "--ir",
            str(MSRS / "ir" / "00004N.png"),
            "--vis",
            str(MSRS / "vi" / "00004N.png"),
            "-o",
            str(out),
            "--method",
            "tim",
            "--weights",
            str(f),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert err.count("\n") == 0 and err.startswith("ivfuse: error:") and "not a TIM checkpoint" in err and str(f) in err


@pytest.mark.realdata
def test_tim_official_light_saved_by_ivfuse_keeps_layout_and_input_order(tmp_path):
    from ivfuse.models.tim import TIMNet

    f = SEED / "TIMFusion" / "light" / "weights_1_seed.pth"
    _need(f)
    model = ivfuse.create_model("tim", weights=f)
    model.save(tmp_path / "light.pt")
    again = TIMNet.from_checkpoint(tmp_path / "light.pt").eval()
    again.to(memory_format=torch.channels_last)  # the layout create_model gives (same summation order)
    assert again.layout == "official" and again.stage1_order == "vis_ir"
    ir, vis = torch.rand(1, 1, 24, 32), torch.rand(1, 3, 24, 32)
    with torch.inference_mode():
        assert torch.equal(model(ir, vis), again(ir, vis))
        swapped = model.stage1_order
        model.stage1_order = "ir_vis"
        assert not torch.allclose(model(ir, vis), again(ir, vis), atol=1e-3)  # the order matters to these weights
        model.stage1_order = swapped


@pytest.mark.parametrize("method", ["metafusion", "tim", "occo", "tsjnet"])
def test_official_preset_needs_the_authors_network(method):
    """The shipped (ivfuse-format) models cannot run the official pre/post-processing: one line, naming the file
    kind."""
    with pytest.raises(
        InputError, match=rf"^{method}: preset='official' .*(authors'|official) (network|weights)"
    ) as ei:
        ivfuse.create_model(method, preset="official")
    assert "\n" not in str(ei.value) and "weights=" in str(ei.value)
    with pytest.raises(InputError, match=rf"{method}: unknown preset 'offical' \(choose from ivfuse, official\)"):
        ivfuse.create_model(method, preset="offical")

"""OCCO: the FIFN fusion network (shapes, size, both spatial weights, loading) and its losses (pixel terms, the
contextual contrastive loss's defining property, gradients)."""

from __future__ import annotations

import pytest
import torch
from conftest import need
from kornia.color import rgb_to_ycbcr
from torch import nn

from ivfuse.errors import InputError
from ivfuse.losses.occo import (
    OMEGAS,
    ContextualContrastiveLoss,
    OCCOLoss,
    VGGFeatures,
    contextual_similarity,
    intensity_term,
    occo_pixel_loss,
    texture_term,
)
from ivfuse.models.base import create_model
from ivfuse.models.occo import FIFB, OCCONet

# ------------------------------------------------------------------------------------------------ FIFN


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (9, 15), (64, 48)])
def test_fifn_shapes_any_size(size):
    torch.manual_seed(0)
    m = OCCONet().eval()
    ir, vis = torch.rand(2, 1, *size), torch.rand(2, 3, *size)
    with torch.no_grad():
        out = m(ir, vis)
        raw = m.fuse_luma(ir, vis[:, :1])
        gray = m(ir, vis[:, :1])
    assert out.shape == (2, 3, *size) and raw.shape == (2, 1, *size) and gray.shape == (2, 1, *size)
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(raw).all()


def test_fifn_too_small_input_is_an_input_error():
    with pytest.raises(InputError, match="smaller than the 8x8 minimum"):
        OCCONet()(torch.rand(1, 1, 7, 20), torch.rand(1, 1, 7, 20))


def test_fifn_parameter_count_and_layout():
    m = OCCONet()
    n = sum(p.numel() for p in m.parameters())
    # the official net (bociic/OCCO models/net.py, nb_filter 32/64/112/160) has 3,621,161 parameters, including the
    # spatial-weight module it never calls; ivfuse calls it, so the count is the same
    assert n == 3_621_161
    assert 3.55e6 < n < 3.65e6  # "≈3.6 M" in the paper
    assert [b.cross_attn.heads for b in m.fifb] == [4, 4, 4, 1]
    assert [lvl[0].out_channels for lvl in m.enc_vis.levels] == [32, 64, 112, 160]
    assert (
        m.up3.conv1.in_channels == 160 + 112
        and m.up2.conv1.in_channels == 112 + 64
        and m.up1.conv1.in_channels == 64 + 32
    )


def test_fifb_uses_both_spatial_weights():
    """The official block computes the IR spatial weight with the visible module (bug); here each has its own."""
    torch.manual_seed(0)
    blk = FIFB(16, 4).eval()
    x1, x2 = torch.rand(2, 16, 8, 8), torch.rand(2, 16, 8, 8)
    with torch.no_grad():
        ref = blk(x1, x2)
        blk.space_weight_ir.mlp[2].bias += 3.0  # change only the IR spatial weight
        changed = blk(x1, x2)
    assert (changed - ref).abs().max() > 1e-3


def test_fifn_keeps_visible_chroma_and_gets_gradients():
    torch.manual_seed(0)
    m = OCCONet()
    ir, vis = torch.rand(1, 1, 24, 32, requires_grad=True), torch.rand(1, 3, 24, 32)
    vis = vis * 0.5 + 0.25  # away from the clamp limits
    out = m.eval()(ir, vis)
    out.mean().backward()
    assert ir.grad is not None and ir.grad.abs().sum() > 0
    with torch.no_grad():
        cc_in, cc_out = rgb_to_ycbcr(vis)[:, 1:], rgb_to_ycbcr(out)[:, 1:]
    inside = (out > 0.01).all(1, keepdim=True) & (out < 0.99).all(1, keepdim=True)
    assert (cc_in - cc_out).abs()[inside.expand_as(cc_in)].max() < 1e-4


def test_create_model_occo_loads_files(tmp_path):
    torch.manual_seed(1)
    net = OCCONet()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "occo.safetensors"))
    torch.save({"state_dict": net.state_dict()}, tmp_path / "occo.pt")
    ir, vis = torch.rand(1, 1, 16, 24), torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        ref = net.eval()(ir, vis)
        for f in ("occo.safetensors", "occo.pt"):
            assert torch.allclose(create_model("occo", weights=str(tmp_path / f))(ir, vis), ref, atol=1e-6)
    bad = tmp_path / "bad.pt"
    torch.save({"x.weight": torch.zeros(2)}, bad)
    with pytest.raises(InputError, match="keys do not match"):
        create_model("occo", weights=str(bad))
    with pytest.raises(InputError, match="not found"):
        create_model("occo", weights=str(tmp_path / "missing.pt"))


# ------------------------------------------------------------------------------------------------ pixel losses


def test_pixel_terms():
    torch.manual_seed(0)
    vis, ir = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    # L_int: squared error to vis + |f - ir| where ir is brighter
    f = torch.rand(2, 1, 32, 32)
    m = (ir > vis).float()
    assert torch.isclose(intensity_term(f, ir, vis), ((f - vis) ** 2).mean() + (m * (f - ir).abs()).mean())
    assert float(intensity_term(vis, torch.zeros_like(vis), vis)) == 0.0
    # L_texture vanishes when f carries the stronger gradient of two identical sources
    assert float(texture_term(vis, vis, vis)) == 0.0
    assert float(texture_term(torch.full_like(vis, 0.5), ir, vis)) > 0.1
    # L_ssim = 2 - SSIM(f, vis) - SSIM(f, ir): 0 for identical images
    total, parts = occo_pixel_loss(vis, vis, vis)
    assert abs(parts["ssim"]) < 1e-6 and abs(float(total)) < 1e-5
    total_f, parts_f = occo_pixel_loss(f, ir, vis)
    assert parts_f["ssim"] > 0.5
    assert torch.isclose(
        total_f, torch.tensor(parts_f["ssim"] + 10 * parts_f["int"] + 1 * parts_f["texture"]), rtol=1e-5
    )


# ------------------------------------------------------------------------------------------------ contrastive loss


def _small_vgg() -> VGGFeatures:
    torch.manual_seed(0)
    feats = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
    )
    return VGGFeatures(features=feats, layers={"relu1": 1, "relu4": 4, "relu5": 7})


def _synthetic(b=4, h=32, w=32):
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    vis = (0.5 + 0.4 * torch.sin(xx * 25)).expand(b, 1, h, w) * (0.8 + 0.2 * torch.rand(b, 1, 1, 1, generator=g))
    ir = (0.3 + 0.5 * (yy > 0.5).float()).expand(b, 1, h, w) + 0.05 * torch.rand(b, 1, h, w, generator=g)
    m_ir = torch.zeros(b, 1, h, w)
    m_ir[..., 8:24, 4:14] = 1  # IR-only object
    m_vis = torch.zeros(b, 1, h, w)
    m_vis[..., 8:24, 18:28] = 1  # visible-only object
    return ir.clamp(0, 1), vis.clamp(0, 1), m_ir, m_vis


def test_contextual_similarity_identity_and_order():
    torch.manual_seed(0)
    x, y = torch.rand(2, 8, 6, 6), torch.rand(2, 8, 6, 6)
    same = contextual_similarity(x, x)
    other = contextual_similarity(x, y)
    assert same.shape == (2,) and (same.abs() < 1e-3).all() and (other > same + 0.1).all()
    # a shuffled copy (same features, other places) is as similar as the original: contextual, not aligned
    perm = x.flatten(2)[:, :, torch.randperm(36)].view_as(x)
    assert (contextual_similarity(x, perm) - same).abs().max() < 1e-3
    with pytest.raises(InputError):
        contextual_similarity(x, torch.rand(2, 8, 5, 6))


def _falls_toward_positive(loss, ir, vis, m_ir, m_vis):
    vals = []
    for t in (0.1, 0.5, 0.9):
        # the fused image equals vis except in the IR-unique object, which moves from vis toward ir (its positive)
        f = vis + t * (ir - vis) * m_ir
        _, parts = loss(f, ir, vis, m_ir, m_vis)
        vals.append(parts["unique"])
    return vals


def test_contrastive_loss_falls_toward_positive_small_vgg():
    ir, vis, m_ir, m_vis = _synthetic()
    loss = ContextualContrastiveLoss(_small_vgg())
    vals = _falls_toward_positive(loss, ir, vis, m_ir, m_vis)
    assert vals[0] > vals[1] > vals[2], vals
    # and the other way: pushing the IR-unique region toward the visible image (its negative) raises it
    f_neg = vis.clone()
    f_pos = vis + (ir - vis) * m_ir
    assert loss(f_neg, ir, vis, m_ir, m_vis)[1]["unique"] > loss(f_pos, ir, vis, m_ir, m_vis)[1]["unique"]


@pytest.mark.realdata
def test_contrastive_loss_falls_toward_positive_vgg16_msrs():
    from ivfuse import read_ir, read_vis

    need("weights/vgg16_features_imagenet_fp16.pth")
    ir = read_ir(need("data/MSRS/ir/00004N.png"))[None][..., 190:318, 470:598]
    vis = rgb_to_ycbcr(read_vis(need("data/MSRS/vi/00004N.png"))[None])[:, :1, 190:318, 470:598]
    m_ir = torch.zeros_like(ir)
    m_ir[..., 12:156, 42:94] = 1  # the pedestrian seen only in the infrared image (box 510-565 × 200-349)
    m_vis = torch.zeros_like(ir)
    loss = ContextualContrastiveLoss("vgg16")
    assert loss.vgg.layers == {"relu1": 1, "relu4": 22, "relu5": 29}
    vals = _falls_toward_positive(loss, ir, vis, m_ir, m_vis)
    assert vals[0] > vals[1] > vals[2], vals
    # the full loss: pixel terms + ω6 · L_CCL, finite
    full = OCCOLoss(vgg=loss.vgg)
    total, parts = full(vis + 0.5 * (ir - vis) * m_ir, ir, vis, m_ir, m_vis)
    assert torch.isfinite(total) and parts["ccl_share"] == 0.0  # no shared region in this crop
    assert abs(parts["total"] - (parts["ssim"] + 10 * parts["int"] + parts["texture"] + 10 * parts["ccl"])) < 1e-3


def test_contrastive_loss_gradient_matches_finite_differences():
    ir, vis, m_ir, m_vis = (t[:2, :, :16, :16].double() for t in _synthetic(h=32, w=32))
    m_vis[..., 4:10, 6:12] = 1  # overlap with the IR object: a shared region too
    vgg = _small_vgg().double()
    loss = ContextualContrastiveLoss(vgg)
    f = (vis + 0.5 * (ir - vis) * m_ir).clone().requires_grad_(True)
    total, parts = loss(f, ir, vis, m_ir, m_vis)
    assert parts["unique"] > 0 and parts["share"] > 0 and parts["bg"] >= 0
    (g,) = torch.autograd.grad(total, f)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    d = torch.randn_like(f)
    h = 1e-6
    with torch.no_grad():
        fd = (loss(f + h * d, ir, vis, m_ir, m_vis)[0] - loss(f - h * d, ir, vis, m_ir, m_vis)[0]) / (2 * h)
    assert torch.isclose((g * d).sum(), fd, rtol=1e-4, atol=1e-8), (float((g * d).sum()), float(fd))
    assert all(not p.requires_grad for p in vgg.parameters())  # VGG frozen


def test_contrastive_loss_skips_empty_regions_and_checks_shapes():
    ir, vis, m_ir, m_vis = _synthetic()
    loss = ContextualContrastiveLoss(_small_vgg())
    total, parts = loss(vis.clone().requires_grad_(True), ir, vis, torch.zeros_like(m_ir), torch.zeros_like(m_vis))
    assert parts["unique"] == 0.0 and parts["share"] == 0.0 and torch.isfinite(total)
    with pytest.raises(InputError, match="differs from fused"):
        loss(vis, ir, vis, m_ir[..., :16], m_vis)


def test_vgg_choices():
    with pytest.raises(InputError, match="VGG19 weights are not in the shared folder"):
        VGGFeatures("vgg19")
    with pytest.raises(InputError, match="unknown VGG"):
        VGGFeatures("vgg11")
    assert OMEGAS == {"w1": 0.5, "w2": 0.5, "w3": 0.5, "w4": 10.0, "w5": 1.0, "w6": 10.0}


# ------------------------------------------------------------------------------------------------ recipe


def _objects(h: int, w: int, boxes) -> torch.Tensor:
    m = torch.zeros(2, h, w, dtype=torch.uint8)
    for k, (y0, y1, x0, x1) in boxes:
        m[k, y0:y1, x0:x1] = 1
    return m


def test_object_crop_contains_objects_when_there_are_objects():
    from ivfuse.engine.occo import ObjectCrop

    H, W = 120, 160
    obj = _objects(H, W, [(0, (100, 110, 140, 150)), (1, (5, 9, 3, 8))])  # one IR object, one visible object
    pos = torch.arange(H * W, dtype=torch.float64).reshape(1, H, W)  # pixel index: tells where a crop came from
    s = {"name": "x", "ir": pos, "vis": torch.rand(3, H, W), "objects": obj, "boxes": None}
    crop, g = ObjectCrop(32), torch.Generator().manual_seed(0)
    corners = set()
    for _ in range(200):
        c = crop(s, g)
        assert c["ir"].shape == (1, 32, 32) and c["vis"].shape == (3, 32, 32) and c["objects"].shape == (2, 32, 32)
        assert int(c["objects"].sum()) > 0
        top, left = divmod(int(c["ir"][0, 0, 0]), W)
        assert torch.equal(c["objects"], obj[:, top : top + 32, left : left + 32])  # masks move with the images
        assert torch.equal(c["vis"], s["vis"][:, top : top + 32, left : left + 32])
        corners.add((top, left))
    assert len(corners) > 20  # random windows, not one fixed position
    # without objects the position is uniform over the image: most windows hold none of the two small objects
    empty = dict(s, objects=torch.zeros(2, H, W, dtype=torch.uint8))
    hit = 0
    for _ in range(200):
        top, left = divmod(int(crop(empty, g)["ir"][0, 0, 0]), W)
        hit += int(obj[:, top : top + 32, left : left + 32].sum()) > 0
    assert hit < 100
    # smaller images are zero-padded, the object kept
    small = dict(s, ir=torch.rand(1, 20, 24), vis=torch.rand(3, 20, 24), objects=_objects(20, 24, [(0, (2, 4, 2, 4))]))
    c = crop(small, g)
    assert c["ir"].shape == (1, 32, 32) and int(c["objects"].sum()) == 4 and float(c["ir"][0, 20:].abs().sum()) == 0


def _tiny_items(tmp_path, masks_dir):
    return [
        "max_pairs=2",
        "crop=[32, 32]",
        "batch=2",
        "epochs=1",
        "val.max=1",
        "val.metrics=[en, sf]",
        f"masks.dir={masks_dir}",
    ]


@pytest.mark.realdata
@pytest.mark.slow
def test_train_occo_cli_end_to_end_with_ivfuse_masks_folder(tmp_path, capsys):
    """`ivfuse train occo preset=cpu` with tiny overrides reads hand-made `ivfuse masks` class maps, trains one
    epoch, validates and exports a file that create_model("occo", weights=...) loads and fuses with."""
    import json

    from PIL import Image
    from safetensors import safe_open

    from ivfuse.cli import main
    from ivfuse.data import load_dataset

    need("data/MSRS")
    need("weights/vgg16_features_imagenet_fp16.pth")
    masks = tmp_path / "masks"
    masks.mkdir()
    ds = load_dataset("msrs", split="dev-train")
    cm = torch.zeros(480, 640, dtype=torch.uint8)
    cm[200:300, 100:140], cm[210:300, 400:430], cm[50:90, 500:520] = 1, 2, 3  # shared, IR-unique, visible-unique
    for name in ds.names:
        Image.fromarray(cm.numpy()).save(masks / f"{name}.png")
    out, exp = tmp_path / "run", tmp_path / "occo.safetensors"
    assert (
        main(["train", "occo", "-q", "preset=cpu", f"out={out}", f"export={exp}", *_tiny_items(tmp_path, masks)]) == 0
    )
    assert f"exported the trained model to {exp}" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary and (out / "last.pt").is_file()
    with safe_open(str(exp), "pt") as f:
        meta = f.metadata()
    tr = json.loads(meta["training"])
    assert tr["max_pairs"] == 2 and tr["crop"] == [32, 32] and tr["masks"]["dir"] == str(masks)
    assert "val_en" in json.loads(meta["metrics"])
    net = create_model("occo", weights=str(exp))
    ir, vis = torch.rand(1, 1, 40, 56), torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        y = net(ir, vis)
    assert y.shape == vis.shape and 0 <= float(y.min()) and float(y.max()) <= 1


@pytest.mark.realdata
@pytest.mark.slow
def test_occo_recipe_reads_mask_cache_and_names_missing_masks(tmp_path):
    from safetensors.torch import save_file

    from ivfuse.engine.config import load_config
    from ivfuse.engine.occo import OCCORecipe

    need("data/MSRS")
    need("weights/vgg16_features_imagenet_fp16.pth")
    cache = tmp_path / "cache"
    cache.mkdir()
    hand = _objects(480, 640, [(0, (10, 60, 20, 50)), (1, (30, 70, 40, 90))])
    save_file({"objects": hand}, str(cache / "msrs__00001D.safetensors"))  # first pair of MSRS dev-train
    cfg = load_config("occo", preset="cpu", overrides=["max_pairs=1", "batch=1", f"masks.cache={cache}"])
    r = OCCORecipe(cfg, "cpu", progress=False)
    r.build()  # the cached file is read; no mask generator is built (it would take seconds per pair)
    assert r.samples[0]["name"] == "msrs/00001D" and torch.equal(r.samples[0]["objects"], hand)
    b = next(iter(r.batches.epoch(0, "train")))
    assert b["objects"].shape == (1, 2, 64, 64) and int(b["objects"].sum()) > 0
    stats = r.train_step(b, {})
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()) and stats["ccl_unique"] > 0
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = load_config("occo", preset="cpu", overrides=["max_pairs=1", "batch=1", f"masks.dir={empty}"])
    with pytest.raises(InputError, match=r"00001D\.png: no mask for training pair 'msrs/00001D'"):
        OCCORecipe(cfg, "cpu", progress=False).build()


@pytest.mark.realdata
def test_shipped_occo_model_fuses_a_real_pair():
    """create_model("occo") loads the shipped CPU-trained model; on an MSRS night pair the fused image is in [0, 1],
    not constant, and brings the infrared pedestrian (dark in the visible image) into the output."""
    import json
    from importlib import resources

    from safetensors import safe_open

    from ivfuse.data.images import read_ir, read_vis

    ir = read_ir(need("data/MSRS/ir/00004N.png"))[None][..., 190:318, 470:598]
    vis = read_vis(need("data/MSRS/vi/00004N.png"))[None][..., 190:318, 470:598]
    net = create_model("occo")
    with torch.no_grad():
        fused = net(ir, vis)
    assert fused.shape == vis.shape and float(fused.min()) >= 0 and float(fused.max()) <= 1
    assert float(fused.std()) > 0.02
    y_f, y_v = rgb_to_ycbcr(fused)[:, :1], rgb_to_ycbcr(vis)[:, :1]
    hot = ir > ir.mean() + 2 * ir.std()  # warm objects of the infrared image
    assert bool(hot.any())
    assert float(y_f[hot].mean()) > float(y_v[hot].mean()) + 0.05  # fused is brighter there than the visible image
    with (
        resources.as_file(resources.files("ivfuse") / "weights" / "occo_default.safetensors") as f,
        safe_open(str(f), "pt") as sf,
    ):
        meta = sf.metadata()
    tr = json.loads(meta["training"])
    assert (
        tr["data"] == [{"name": "msrs", "split": "dev-train"}]
        and tr["epochs"] > 0
        and "val_en" in json.loads(meta["metrics"])
    )

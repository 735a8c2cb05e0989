"""MetaFusion: F / MFG / FT shapes and gradients, the second-order inner update, training modes, checkpoints."""

from __future__ import annotations

import csv
import logging

import pytest
import torch
from conftest import need
from kornia.color import rgb_to_ycbcr

from ivfuse.data.labels import Boxes
from ivfuse.engine import OptimStep, train
from ivfuse.engine.config import load_config
from ivfuse.engine.metafusion import MetaFusionRecipe, box_mask, train_metafusion
from ivfuse.errors import InputError, UnknownNameError
from ivfuse.losses import FusionLoss
from ivfuse.models.metafusion import MetaFeatureEmbedding, MetaFusionNet, guide_loss
from ivfuse.tasks.detectors import create_detector


def test_fusion_net_matches_official_layout():
    f = MetaFusionNet(width=1.0, colour="hsv")
    assert sum(p.numel() for p in f.parameters()) == 2_252_994  # ≈2.25M as in the paper
    sd = f.state_dict()
    assert sd["block1.0.conv1_1.weight"].shape == (64, 4, 3, 3)  # IR + RGB input
    assert sd["block1.1.conv1_1.weight"].shape == (128, 128, 3, 3) and sd["block1.2.conv1_1.weight"].shape == (
        128,
        256,
        3,
        3,
    )
    assert [k for k in sd if k.startswith("block2") and k.endswith("weight")] == [
        f"block2.{i}.weight" for i in (0, 2, 4, 6, 8, 10)
    ]
    assert sd["block2.10.weight"].shape == (2, 64, 1, 1)


@pytest.mark.parametrize("colour", ["ycbcr", "hsv"])
def test_fusion_net_shapes_colour_and_gradients(colour):
    torch.manual_seed(0)
    f = MetaFusionNet(width=0.25, colour=colour)
    ir = torch.rand(2, 1, 40, 56, requires_grad=True)
    vis = torch.rand(2, 3, 40, 56)
    y, out, feats = f(ir, vis, with_features=True)
    assert y.shape == (2, 1, 40, 56) and out.shape == (2, 3, 40, 56)
    assert [t.shape[1] for t in feats] == f.feature_channels and all(t.shape[-2:] == (40, 56) for t in feats)
    out.sum().backward()
    assert ir.grad.abs().sum() > 0 and all(p.grad is not None for p in f.parameters())
    if colour == "ycbcr":  # chroma of the visible image is kept
        inside = ((out > 0.02) & (out < 0.98)).all(1, keepdim=True)  # away from RGB clipping
        assert torch.allclose(rgb_to_ycbcr(out)[:, 1:] * inside, rgb_to_ycbcr(vis)[:, 1:] * inside, atol=2e-3)
    assert f(ir.detach(), vis[:, :1]).shape == (2, 1, 40, 56)  # gray visible -> gray output


def test_mfg_ft_shapes_and_gradients():
    mfe = MetaFeatureEmbedding([32, 64, 64], [64, 128, 256], levels=(1, 3), mid=8)
    fu = [torch.rand(1, c, 32, 32, requires_grad=True) for c in (32, 64, 64)]
    fe = [torch.rand(1, c, 32 // s, 32 // s) for c, s in ((64, 8), (128, 16), (256, 32))]
    fm, ft = mfe(fu, fe)
    assert len(fm) == len(ft) == 2 and all(t.shape == (1, 8, 32, 32) for t in fm + ft)
    guide_loss(fm, ft).backward()
    assert fu[0].grad.abs().sum() > 0 and fu[1].grad is None and fu[2].grad.abs().sum() > 0
    assert all(p.grad is not None for p in mfe.parameters())


class _TinyRecipe(MetaFusionRecipe):
    """The recipe's pieces without data loading (F, MFE, D from scratch)."""

    def __init__(self, cfg):
        super().__init__(cfg, "cpu", progress=False)
        self.F = MetaFusionNet(width=0.125)
        self.D = create_detector("yolov5n", weights=None).eval()
        self.D_task = None
        self.MFE = MetaFeatureEmbedding(self.F.feature_channels, [64, 128, 256], cfg["levels"], 8)
        self.loss_f = FusionLoss(cfg["loss"])
        self.step_mfe = OptimStep(torch.optim.SGD(self.MFE.parameters(), lr=0.1))


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return {"ir": torch.rand(2, 1, 32, 32, generator=g), "vis": torch.rand(2, 3, 32, 32, generator=g)}


def test_inner_update_is_second_order():
    """MFG/FT get a gradient only through θ_F' = θ_F - β∇L_g: cutting that path leaves them unchanged."""
    torch.manual_seed(0)
    cfg = load_config("metafusion", "cpu")
    rec = _TinyRecipe(cfg)
    f_before = {k: v.clone() for k, v in rec.F.state_dict().items()}
    before = [p.detach().clone() for p in rec.MFE.parameters()]
    rec.inner_update(_batch(1), _batch(2))
    grads = [p.grad.abs().sum() for p in rec.MFE.parameters()]
    assert sum(float(g) for g in grads) > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, rec.MFE.parameters()))
    assert all(torch.equal(v, rec.F.state_dict()[k]) for k, v in f_before.items())  # F itself is unchanged
    before = [p.detach().clone() for p in rec.MFE.parameters()]
    rec.inner_update(_batch(1), _batch(2), first_order=True)
    assert all(float(p.grad.abs().sum()) == 0 for p in rec.MFE.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, rec.MFE.parameters()))


def test_box_mask_hand_case():
    b = Boxes(torch.tensor([[2.5, 1.0, 5.0, 3.0], [-4.0, 6.0, 2.2, 20.0]]), torch.tensor([0, 2]))
    m = box_mask([b, None], torch.Size([2, 1, 8, 6]))
    want = torch.zeros(2, 1, 8, 6)
    want[0, 0, 1:3, 2:5] = 1  # x 2.5..5 -> columns 2..4 (outward rounding), y 1..3 -> rows 1..2
    want[0, 0, 6:8, 0:3] = 1  # clipped to the image; x2 2.2 -> column 2
    assert torch.equal(m, want)


def test_target_term_is_the_box_masked_distance_to_the_target_and_reaches_f():
    """``target.intensity``: L_f + λ_t·mean over box pixels of |Y_F − IR| (``source: max``: max(IR, Y)); a batch
    without boxes adds nothing; the term's gradient reaches F."""
    torch.manual_seed(0)
    b = _batch(3)
    boxes = [Boxes(torch.tensor([[4.0, 4.0, 20.0, 28.0]]), torch.tensor([0])), None]
    for source in ("ir", "max"):
        cfg = load_config("metafusion", "cpu", overrides=["target.intensity=2.0", f"target.source={source}"])
        rec = _TinyRecipe(cfg)
        y, _, _ = rec.F(b["ir"], b["vis"], with_features=True)
        plain, _ = rec.loss_f(y, b["ir"], rec._lum(b["vis"]))
        total, parts = rec.fusion_loss(y, b["ir"], b["vis"], boxes)
        t = b["ir"] if source == "ir" else torch.maximum(b["ir"], rec._lum(b["vis"]))
        want = (y - t)[0, :, 4:28, 4:20].abs().mean()
        want, plain = float(want.detach()), float(plain.detach())
        assert parts["target"] == pytest.approx(want, rel=1e-5)
        assert float(total.detach()) == pytest.approx(plain + 2.0 * want, rel=1e-5)
        assert "target" not in rec.fusion_loss(y, b["ir"], b["vis"], [None, None])[1]
    rec.F.zero_grad()
    total.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in rec.F.block2.parameters())


def test_target_det_adds_the_fixed_detectors_loss_to_the_outer_update():
    """``target.det``: D's detection loss on F's fused image (labelled samples only) joins the outer update of F; D
    itself is not stepped."""
    torch.manual_seed(0)
    rec = _TinyRecipe(load_config("metafusion", "cpu", overrides=["target.det=1.0"]))
    rec.step_f = OptimStep(torch.optim.SGD(rec.F.parameters(), lr=0.1))
    batch = {**_batch(4), "boxes": [Boxes(torch.tensor([[2.0, 2.0, 20.0, 30.0]]), torch.tensor([0])), None]}
    f0 = [p.detach().clone() for p in rec.F.parameters()]
    d0 = {k: v.clone() for k, v in rec.D.state_dict().items()}
    out = rec.step_outer(batch, {})
    assert out["L_det"] > 0 and {"L_f", "L_g"} <= set(out)
    assert any(not torch.equal(a, p) for a, p in zip(f0, rec.F.parameters()))
    assert all(torch.equal(v, rec.D.state_dict()[k]) for k, v in d0.items())
    assert "L_det" not in rec.step_outer({**_batch(4), "boxes": [None, None]}, {})  # no labels, no term
    # target.detector=frozen: the loss comes from the frozen copy (not from D) and the copy is not changed
    rec.D_task = create_detector("yolov5n", weights=None).eval().requires_grad_(False)
    t0 = {k: v.clone() for k, v in rec.D_task.state_dict().items()}
    with torch.no_grad():
        fused = rec.F(batch["ir"][:1], batch["vis"][:1])
        want = float(rec.D_task.loss(fused, batch["boxes"][:1])[0])
        from_d = float(rec.D.loss(fused, batch["boxes"][:1])[0])
    got = rec.step_outer(batch, {})["L_det"]
    assert got == pytest.approx(want, rel=1e-4) and got != pytest.approx(from_d, rel=1e-4)
    assert all(torch.equal(v, rec.D_task.state_dict()[k]) for k, v in t0.items())


def test_target_options_are_checked():
    with pytest.raises(UnknownNameError, match="did you mean 'max'"):
        MetaFusionRecipe.check(load_config("metafusion", "cpu", overrides=["target.source=maxx"]))
    with pytest.raises(InputError, match="held-out"):
        MetaFusionRecipe.check(
            load_config(
                "metafusion", "cpu", overrides=["data.detection=[{name: msrs, split: dev-val, labels: infrared}]"]
            )
        )
    with pytest.raises(InputError, match="must be >= 0"):
        MetaFusionRecipe.check(load_config("metafusion", "cpu", overrides=["target.det=-1"]))


def _tiny_cfg(tmp_mode: str, **extra):
    ov = [
        f"mode={tmp_mode}",
        "fusion.width=0.125",
        "mfe.mid=4",
        "data.crop=[48, 48]",
        "data.det_crop=96",
        "data.batch=2",
        "data.det_batch=2",
        "data.max_batches=2",
        "epochs.pretrain=1",
        "epochs.det=1",
        "epochs.mfe=1",
        "inner.every=1",
        "inner.updates=1",
        "rounds=2",
        "val.max=1",
        "data.train=[{name: msrs, split: train}]",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config("metafusion", "cpu", overrides=ov)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize(
    "mode,levels",
    [("metafusion", "[1, 2, 3]"), ("metafusion", "[1]"), ("sofusion", "[1, 2, 3]"), ("cofusion", "[1, 2, 3]")],
)
def test_short_training_run_per_mode(tmp_path, mode, levels):
    need("data/MSRS")
    need("weights/yolov5n_coco_v6.1_state_dict.pt")
    cfg = _tiny_cfg(mode, levels=levels)
    summary = train_metafusion(cfg, tmp_path / "run", export=tmp_path / "f.safetensors", progress=False)
    assert summary["export"] == str(tmp_path / "f.safetensors")
    stages = {
        "metafusion": ["pretrain_f", "det_1", "mfe_1", "det_2", "mfe_2"],
        "sofusion": ["pretrain_f", "det_1"],
        "cofusion": ["pretrain_f", "det_1", "co_1", "det_2", "co_2"],
    }[mode]
    assert list(summary["timings_s"]) == stages
    m = summary["metrics"]
    assert m["pretrain_f"]["L_f"] > 0 and "val_qabf" in m["val"]
    if mode == "metafusion":
        assert "L_g" in m["mfe_1"] and "L_f_meta" in m["mfe_1"]
    f = MetaFusionNet.from_checkpoint(tmp_path / "f.safetensors")
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert {r["stage"] for r in rows} == set(stages)
    assert f.width == 0.125 and (tmp_path / "run" / "final.pt").is_file()


def _states(path):
    ck = torch.load(path, weights_only=True)
    return ck["modules"]


def _assert_same_states(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys()
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), f"{name}.{k} differs"


@pytest.mark.realdata
@pytest.mark.slow
def test_same_seed_is_bitwise_equal_and_interrupted_run_resumes_exactly(tmp_path, monkeypatch, caplog):
    """Seeding happens before F/MFE/D are built and the data order is a function of (seed, stage, epoch): two runs
    with one seed end bitwise equal, and a run killed inside mfe_1 and resumed ends bitwise equal to both."""
    need("data/MSRS")
    cfg = _tiny_cfg(
        "metafusion",
        **{
            "detector.weights": "scratch",
            "epochs.mfe": 2,
            "inner.every": 2,
            "rounds": 1,
            "epochs.pretrain": 2,
            "val.max": 0,
        },
    )
    train_metafusion(cfg, tmp_path / "a", progress=False)
    train_metafusion(cfg, tmp_path / "b", progress=False)
    _assert_same_states(_states(tmp_path / "a" / "final.pt"), _states(tmp_path / "b" / "final.pt"))
    other = train_metafusion({**cfg, "seed": 1}, tmp_path / "c", progress=False)
    assert not torch.equal(
        _states(tmp_path / "c" / "final.pt")["F"]["block2.10.weight"],
        _states(tmp_path / "a" / "final.pt")["F"]["block2.10.weight"],
    )
    assert other["metrics"]["pretrain_f"]["L_f"] > 0

    calls = {"n": 0}
    real = MetaFusionRecipe.step_outer

    def dying(self, batch, ctx):
        calls["n"] += 1
        if ctx["epoch"] == 1 and ctx["batch"] == 1:  # second batch of the second mfe_1 epoch
            raise KeyboardInterrupt
        return real(self, batch, ctx)

    monkeypatch.setattr(MetaFusionRecipe, "step_outer", dying)
    with pytest.raises(KeyboardInterrupt):
        train_metafusion(cfg, tmp_path / "d", progress=False)
    assert not (tmp_path / "d" / "final.pt").exists() and calls["n"] == 4
    monkeypatch.setattr(MetaFusionRecipe, "step_outer", real)
    with caplog.at_level(logging.INFO, logger="ivfuse"):
        train_metafusion(cfg, tmp_path / "d", progress=False)
    err = caplog.text
    assert f"resuming from {tmp_path / 'd' / 'last.pt'} after stage mfe_1 epoch 1" in err
    _assert_same_states(_states(tmp_path / "a" / "final.pt"), _states(tmp_path / "d" / "final.pt"))


@pytest.mark.realdata
@pytest.mark.slow
def test_resume_refuses_changed_config_unless_told(tmp_path, caplog):
    need("data/MSRS")
    cfg = _tiny_cfg("sofusion", **{"epochs.det": 0, "val.max": 0})
    train_metafusion(cfg, tmp_path / "run", progress=False)
    n1 = len(list(csv.DictReader((tmp_path / "run" / "log.csv").open())))
    cfg2 = _tiny_cfg("sofusion", **{"epochs.det": 0, "epochs.pretrain": 2, "val.max": 0})
    with pytest.raises(InputError, match=r"different config \(epochs.pretrain: 1 -> 2\).*resume=force"):
        train_metafusion(cfg2, tmp_path / "run", progress=False)
    # resume=force: a longer schedule in the same folder continues after the finished epoch instead of restarting
    with caplog.at_level(logging.INFO, logger="ivfuse"):
        train_metafusion(cfg2, tmp_path / "run", progress=False, resume="force")
    err = caplog.text
    assert "resuming from" in err and "stage pretrain_f epoch 1" in err
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    epochs = [int(r["epoch"]) for r in rows if r["stage"] == "pretrain_f"]
    assert sorted(set(epochs)) == [1, 2] and len(rows) == 2 * n1
    # resume=new starts over: one fresh log with the two epochs only
    train_metafusion(cfg2, tmp_path / "run", progress=False, resume="new")
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows if r["stage"] == "pretrain_f" and r["key"] == "L_f"] == [1, 2]


@pytest.mark.realdata
@pytest.mark.slow
def test_train_cli_prints_resume_and_export(tmp_path, capsys):
    need("data/MSRS")
    from ivfuse.cli import main

    items = [
        "mode=sofusion",
        "fusion.width=0.125",
        "data.crop=[48, 48]",
        "data.batch=2",
        "data.max_batches=2",
        "epochs.pretrain=1",
        "epochs.det=0",
        "val.max=1",
        "data.train=[{name: msrs, split: train}]",
    ]
    out, exp = tmp_path / "run", tmp_path / "f.safetensors"
    assert main(["train", "metafusion", "-q", "preset=cpu", f"out={out}", f"export={exp}", *items]) == 0
    cap = capsys.readouterr()
    assert f"exported the trained model to {exp}" in cap.out and "resuming" not in cap.err
    assert MetaFusionNet.from_checkpoint(exp).width == 0.125
    assert main(["train", "metafusion", "preset=cpu", f"out={out}", *items, "-q"]) == 0  # -q keeps the resume notice
    assert f"resuming from {out / 'last.pt'} after stage pretrain_f epoch 1" in capsys.readouterr().err


def test_inner_update_that_would_never_run_is_refused(tmp_path):
    cfg = load_config("metafusion", "cpu", overrides=["epochs.mfe=1", "inner.every=2"])
    with pytest.raises(InputError, match=r"inner \(meta\) update of MFE would never run"):
        train("metafusion", cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before any run folder is written
    ok = load_config("metafusion", "cpu", overrides=["epochs.mfe=1", "inner.every=2", "inner.updates=0"])
    assert MetaFusionRecipe.check(ok) == []


def test_shipped_default_model_is_the_default_method():
    import json
    from importlib import resources

    from safetensors import safe_open

    import ivfuse
    from ivfuse.fusion import DEFAULT_METHOD

    assert DEFAULT_METHOD == "metafusion"
    m = ivfuse.create_model("metafusion")
    assert isinstance(m, MetaFusionNet) and m.colour == "ycbcr"
    with resources.as_file(resources.files("ivfuse") / "weights" / "metafusion_default.safetensors") as p:
        with safe_open(p, "pt") as f:
            meta = f.metadata()
    training = json.loads(meta["training"])
    assert training["mode"] == "metafusion" and training["detector"]["name"] == "yolov5n"
    # trained on the fixed split's dev-train only (never dev-val), with the target-aware term (preset cpu_task)
    assert (
        training["data"] == training["detection_data"] == [{"name": "msrs", "split": "dev-train", "labels": "infrared"}]
    )
    assert training["target"]["intensity"] > 0
    # it fuses: a hot IR target and visible texture both survive
    ir = torch.full((1, 1, 96, 96), 0.2)
    ir[..., 40:56, 60:76] = 1.0
    vis = torch.full((1, 3, 96, 96), 0.3)
    vis[..., :, 0:32:4] = 0.9
    with torch.no_grad():
        out = m(ir, vis).mean(1, keepdim=True)
    assert float(out[..., 44:52, 64:72].mean() - out[..., 44:52, 84:92].mean()) > 0.2
    stripes = out[..., 8:40, 4:28]
    assert float(stripes[..., ::4].mean() - stripes[..., 2::4].mean()) > 0.2

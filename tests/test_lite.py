"""The real-time ``lite`` model: architecture, shipped weights + metadata, its training recipe and distillation, and
that the shipped model reproduces its teacher (speed is measured by benchmarks/bench_speed.py, not here)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import need

import ivfuse
from ivfuse.engine import train
from ivfuse.engine.config import load_config
from ivfuse.errors import InputError, UnknownNameError
from ivfuse.models.lite import LiteFusionNet


def test_shipped_lite_loads_with_training_metadata():
    from importlib import resources

    from safetensors import safe_open

    m = ivfuse.create_model("lite")
    assert isinstance(m, LiteFusionNet) and sum(p.numel() for p in m.parameters()) < 20_000
    with (
        resources.as_file(resources.files("ivfuse") / "weights" / "lite_default.safetensors") as f,
        safe_open(f, "pt") as st,
    ):
        meta = st.metadata()
    tr = json.loads(meta["training"])
    assert tr["data"] == [{"name": "msrs", "split": "dev-train"}] and tr["epochs"] > 0 and tr["wall_s"] > 0
    assert tr["teacher"]["method"] == "tim"  # the shipped model is distilled from the task-guided TIM
    assert set(json.loads(meta["metrics"])) >= {"val_en", "val_qabf"}
    assert json.loads(meta["config"])["width"] == m.width


def test_lite_output_contract():
    m = ivfuse.create_model("lite", weights=None)
    g = torch.Generator().manual_seed(0)
    ir, vis = torch.rand(2, 1, 37, 51, generator=g), torch.rand(2, 3, 37, 51, generator=g)  # odd sizes
    with torch.no_grad():
        out = m(ir, vis)
    assert out.shape == vis.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    assert m(ir, vis[:, :1]).shape == (2, 1, 37, 51)
    with pytest.raises(InputError, match="minimum"):
        m(ir[..., :3, :3], vis[..., :3, :3])


@pytest.mark.realdata
def test_shipped_lite_reproduces_its_teacher_on_unseen_pairs():
    """The shipped model is distilled from TIM on MSRS dev-train; on TNO (never trained on) its fused images stay
    within a small fraction of TIM's distance to the pixel average."""
    need("data/TNO")
    ds = ivfuse.load_dataset("tno")
    lite, tim, avg = (ivfuse.create_model(n) for n in ("lite", "tim", "average"))
    for i in range(3):
        s = ds[i]
        with torch.inference_mode():
            f_lite, f_tim, f_avg = (m(s["ir"][None], s["vis"][None]) for m in (lite, tim, avg))
        assert (f_lite - f_tim).abs().mean() < 0.25 * (f_avg - f_tim).abs().mean()


@pytest.mark.realdata
def test_lite_recipe_trains_exports_and_refuses_held_out_data(tmp_path):
    need("data/MSRS")
    with pytest.raises(InputError, match="held-out"):
        train("lite", load_config("lite", "cpu", overrides=["data=[{name: msrs, split: dev-val}]"]), tmp_path / "bad")
    with pytest.raises(InputError, match="nothing to learn"):
        train("lite", load_config("lite", "cpu", overrides=["teacher.method=null"]), tmp_path / "bad")
    with pytest.raises(UnknownNameError, match="did you mean .tim."):
        train("lite", load_config("lite", "cpu", overrides=["teacher.method=tmi"]), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before anything is written
    cfg = load_config(
        "lite",
        "cpu",
        overrides=[
            "epochs=2",
            "max_batches=2",
            "batch=2",
            "crop=[64, 64]",
            "val.max=1",
            "teacher.method=null",
            "loss.ssim=1",
            "loss.gradient=10",
        ],
    )
    train("lite", cfg, tmp_path / "run", export=tmp_path / "l.safetensors", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["history"]["train"]) == 2
    net = LiteFusionNet.from_checkpoint(tmp_path / "run" / "final.pt")
    net.to(memory_format=torch.channels_last)  # the layout create_model gives (same summation order)
    exported = ivfuse.create_model("lite", weights=str(tmp_path / "l.safetensors"))
    x, v = torch.rand(1, 1, 32, 40), torch.rand(1, 3, 32, 40)
    assert torch.equal(net(x, v), exported(x, v))


@pytest.mark.realdata
def test_lite_distillation_reads_the_teacher_once_and_learns_towards_it(tmp_path):
    """teacher.method: the teacher's fused luminance is computed once per pair (cached as safetensors, cropped with the
    pair) and the L1 term pulls the net towards it: distilling the pixel average on TNO moves the net's output closer
    to the average than the untrained net is."""
    need("data/TNO")
    from kornia.color import rgb_to_ycbcr
    from safetensors.torch import load_file

    over = [
        "data=[{name: tno}]",
        "epochs=6",
        "batch=4",
        "crop=[96, 96]",
        "val.max=0",
        "lr=0.01",
        "teacher.method=average",
        f"teacher.cache={tmp_path / 'teacher'}",
    ]
    train("lite", load_config("lite", "cpu", overrides=over), tmp_path / "run", progress=False)
    ds = ivfuse.load_dataset("tno")
    files = sorted((tmp_path / "teacher").glob("*.safetensors"))
    assert len(files) == len(ds)
    s = ds[0]
    vis = s["vis"].expand(3, -1, -1) if s["vis"].shape[0] == 1 else s["vis"]
    t = load_file(tmp_path / "teacher" / f"tno__{s['name']}.safetensors")["teacher"]
    avg_y = rgb_to_ycbcr(ivfuse.create_model("average")(s["ir"][None], vis[None]))[0, :1]
    assert t.shape == avg_y.shape and torch.allclose(t, avg_y, atol=1e-6)
    hist = json.loads((tmp_path / "run" / "summary.json").read_text())["history"]["train"]
    assert all("teacher" in h for h in hist) and hist[-1]["teacher"] < hist[0]["teacher"]
    trained = LiteFusionNet.from_checkpoint(tmp_path / "run" / "final.pt")
    torch.manual_seed(0)
    untrained = LiteFusionNet(8)
    y = rgb_to_ycbcr(vis[None])[:, :1]
    with torch.no_grad():
        d_trained = (trained.fuse_luma(s["ir"][None], y) - avg_y).abs().mean()
        d_untrained = (untrained.fuse_luma(s["ir"][None], y) - avg_y).abs().mean()
    assert d_trained < 0.5 * d_untrained


def test_box_mask_and_target_loss():
    """The target term's mask covers exactly the boxes of the named classes (softened edges stay in [0, 1]), and the
    loss is 0 on the oracle mix (IR in the boxes, the average elsewhere), weighted towards the box pixels."""
    from ivfuse.data.labels import Boxes
    from ivfuse.engine.lite import box_mask, target_loss

    b = Boxes(
        torch.tensor([[10.0, 5.0, 20.0, 25.0], [30.0, 0.0, 40.0, 10.0]]),
        torch.tensor([0, 2]),
        ("person", "bicycle", "car"),
    )
    m = box_mask(b, (32, 48), ["person"])
    assert m.shape == (1, 32, 48) and float(m.sum()) == 10 * 20
    assert float(m[0, 5:25, 10:20].min()) == 1 and float(m[0, :, 30:40].max()) == 0  # the car box is not a target
    assert float(box_mask(b, (32, 48), ["person", "car"]).sum()) == 10 * 20 + 10 * 10
    assert float(box_mask(None, (32, 48), ["person"]).sum()) == 0
    soft = box_mask(b, (32, 48), ["person"], soften=2.0)
    assert 0 <= float(soft.min()) and float(soft.max()) <= 1 and 0 < float(soft[0, 15, 9]) < 1  # ramp at the edge
    assert float(soft[0, 15, 15]) > 0.95 and float(soft[0, 15, 2]) < 1e-3

    g = torch.Generator().manual_seed(0)
    ir, y = torch.rand(1, 1, 32, 48, generator=g), torch.rand(1, 1, 32, 48, generator=g)
    mk = m[None]
    oracle = mk * ir + (1 - mk) * (ir + y) / 2
    assert float(target_loss(oracle, ir, y, mk)) == 0
    avg = (ir + y) / 2  # wrong only inside the box
    # box pixels weigh 11: the weighted mean is 11·1536 / (1336 + 11·200) = 4.78 times the plain mean
    ratio = float(target_loss(avg, ir, y, mk, boost=10)) / float(target_loss(avg, ir, y, mk, boost=0))
    assert ratio == pytest.approx(11 * 1536 / (1336 + 11 * 200), rel=1e-5)


@pytest.mark.realdata
@pytest.mark.slow
def test_lite_target_preset_learns_to_keep_the_infrared_image_on_people(tmp_path):
    """preset=target (issue 20): after a short training on MSRS dev-train with the person boxes, the net's output is
    closer to the infrared image inside the person boxes of a training pair than the pixel average is, and close to
    the average outside them; data without labels and a bad label set are refused before anything is written."""
    need("data/MSRS")
    with pytest.raises(InputError, match="needs detection labels"):
        train("lite", load_config("lite", "target", overrides=["data=[{name: tno}]"]), tmp_path / "bad")
    with pytest.raises(UnknownNameError, match="did you mean .union."):
        train("lite", load_config("lite", "target", overrides=["target.labels=unoin"]), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    over = ["epochs=4", "max_batches=8", "crop=[128, 128]", "val.max=0", "lr=0.01", "width=8"]
    train("lite", load_config("lite", "target", overrides=over), tmp_path / "run", progress=False)
    hist = json.loads((tmp_path / "run" / "summary.json").read_text())["history"]["train"]
    assert all("target" in h for h in hist) and hist[-1]["target"] < hist[0]["target"]
    from kornia.color import rgb_to_ycbcr

    from ivfuse.engine.lite import box_mask

    ds = ivfuse.load_dataset("msrs", split="dev-train", det_labels="infrared")
    s = next(ds[i] for i in range(len(ds)) if ds.names[i].endswith("N") and (ds[i]["boxes"].labels == 0).sum() >= 2)
    net = LiteFusionNet.from_checkpoint(tmp_path / "run" / "final.pt")
    ir, y = s["ir"][None], rgb_to_ycbcr(s["vis"][None])[:, :1]
    m = box_mask(s["boxes"], tuple(ir.shape[-2:]), ["person"])[None] > 0.5
    with torch.no_grad():
        out = net.fuse_luma(ir, y)
    avg = (ir + y) / 2
    assert (out - ir).abs()[m].mean() < 0.8 * (avg - ir).abs()[m].mean()
    assert (out - avg).abs()[~m].mean() < 0.05


@pytest.mark.realdata
@pytest.mark.slow
def test_lite_moving_judge_trains_the_detector_and_reaches_the_net(tmp_path):
    """preset=judge (issue 20, C3): the judge stage fine-tunes the detector on the fused images (its weights leave the
    COCO ones, its loss is logged) and its detection loss reaches the net (a larger ``judge.weight`` gives other net
    weights from the same seed); a misspelt detector and unlabelled data are refused before anything is written."""
    need("data/MSRS")
    need("weights/yolov5n_coco_v6.1_state_dict.pt")
    with pytest.raises(UnknownNameError, match="did you mean .yolov5n."):
        train("lite", load_config("lite", "judge", overrides=["judge.detector=yolov5nn"]), tmp_path / "bad")
    with pytest.raises(InputError, match="needs detection labels"):
        train(
            "lite", load_config("lite", "judge", overrides=["data=[{name: tno}]", "target.weight=0"]), tmp_path / "bad"
        )
    assert not (tmp_path / "bad").exists()
    over = [
        "epochs=1",
        "max_batches=2",
        "crop=[96, 96]",
        "val.max=0",
        "width=4",
        "judge.epochs=1",
        "judge.batch=2",
        "judge.imgsz=128",
    ]
    runs = {}
    for lam in (0.02, 2.0):
        out = tmp_path / f"run{lam}"
        train("lite", load_config("lite", "judge", overrides=[*over, f"judge.weight={lam}"]), out, progress=False)
        runs[lam] = torch.load(out / "final.pt", weights_only=True)["modules"]
    hist = json.loads((tmp_path / "run0.02" / "summary.json").read_text())["history"]["judge"]
    assert {"det", "det_train", "target"} <= set(hist[0]) and hist[0]["det"] > 0
    coco = ivfuse.tasks.create_detector("yolov5n").state_dict()
    moved = runs[0.02]["D"]
    assert any(not torch.equal(coco[k], moved[k]) for k in coco if k.endswith("weight"))
    a, b = runs[0.02]["net"], runs[2.0]["net"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_lite_learned_loss_is_trained_by_the_moving_judge(tmp_path):
    """preset=meta (issue 20, C4): the loss generator starts at uniform weights (the crop stage logs w_ir = 1/2), the
    meta stage's detection loss, taken after a virtual step of the net, moves the generator's weights and the judge's,
    and the net is trained by the learned loss alone; an unknown judge mode is refused with a suggestion."""
    need("data/MSRS")
    need("weights/yolov5n_coco_v6.1_state_dict.pt")
    with pytest.raises(UnknownNameError, match="did you mean .meta."):
        train("lite", load_config("lite", "meta", overrides=["judge.mode=mta"]), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    over = [
        "epochs=1",
        "max_batches=2",
        "crop=[96, 96]",
        "val.max=0",
        "width=4",
        "judge.epochs=1",
        "judge.batch=2",
        "judge.imgsz=128",
        "judge.gen_width=4",
    ]
    out = tmp_path / "run"
    train("lite", load_config("lite", "meta", overrides=over), out, progress=False)
    hist = json.loads((out / "summary.json").read_text())["history"]
    assert hist["train"][0]["learned_w_ir"] == pytest.approx(0.5)
    j = hist["judge"][0]
    assert {"det", "det_train", "intensity", "gradient", "w_ir"} <= set(j) and j["det"] > 0
    mods = torch.load(out / "final.pt", weights_only=True)["modules"]
    assert mods["G"]["out.weight"].abs().sum() > 0  # the meta-gradient reached the generator's zero-started layer
    coco = ivfuse.tasks.create_detector("yolov5n").state_dict()
    assert any(not torch.equal(coco[k], mods["D"][k]) for k in coco if k.endswith("weight"))
    w = ivfuse.losses.LossGenerator(4)
    w.load_state_dict(mods["G"])
    ir, y = torch.rand(1, 1, 40, 52), torch.rand(1, 1, 40, 52)
    wts = w(ir, y)
    assert wts.shape == (1, 2, 40, 52) and torch.allclose(wts.sum(1), torch.ones(1, 40, 52))
    assert not torch.allclose(wts, torch.full_like(wts, 0.5))

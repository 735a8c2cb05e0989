"""Task networks: mAP/mIoU on hand-computed cases, Faster R-CNN losses, segmenters, downstream protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import need
from ivfuse.cli import main
from ivfuse.data.labels import Boxes
from ivfuse.errors import InputError
from ivfuse.tasks import (
    DeepLabV3Plus,
    Detections,
    ESPNetv2Seg,
    confusion_matrix,
    create_detector,
    detection_map,
    segmentation_iou,
    segmentation_loss,
)
from ivfuse.engine.finetune import finetune_segmenter
from ivfuse.tasks.downstream import class_mapping, load_segmentation_set, evaluate_segmenter

NAMES = ("person", "car")


def _gt(*rows):
    return Boxes(torch.tensor([r[:4] for r in rows], dtype=torch.float32), torch.tensor([r[4] for r in rows]), NAMES)


def _det(*rows):
    return Detections(
        torch.tensor([r[:4] for r in rows], dtype=torch.float32),
        torch.tensor([r[5] for r in rows]),
        torch.tensor([r[4] for r in rows]),
    )


def test_map_perfect_and_half():
    gt = [_gt((10, 10, 50, 50, 0), (60, 60, 100, 120, 1)), _gt((0, 0, 30, 30, 0))]
    perfect = [_det((10, 10, 50, 50, 0, 0.9), (60, 60, 100, 120, 1, 0.8)), _det((0, 0, 30, 30, 0, 0.7))]
    r = detection_map(perfect, gt, NAMES)
    assert r["mAP50"] == pytest.approx(1.0) and r["mAP50_95"] == pytest.approx(1.0) and r["n_images"] == 2
    # one of the two persons found, car found: person AP = 51/101 (101-point interpolation), car AP = 1
    half = [_det((10, 10, 50, 50, 0, 0.9), (60, 60, 100, 120, 1, 0.8)), _det()]
    r = detection_map(half, gt, NAMES)
    assert r["per_class"]["person"]["AP50"] == pytest.approx(51 / 101)
    assert r["per_class"]["car"]["AP50"] == pytest.approx(1.0)
    assert r["mAP50"] == pytest.approx((51 / 101 + 1) / 2)


def test_map_iou_thresholds():
    gt = [_gt((0, 0, 100, 100, 0))]
    # IoU with GT = 70*100/(100*100) = 0.7 -> a hit at 0.50..0.70 (5 of 10 thresholds)
    r = detection_map([_det((0, 0, 70, 100, 0, 0.9))], gt, NAMES)
    assert r["mAP50"] == pytest.approx(1.0)
    assert r["mAP50_95"] == pytest.approx(0.5)
    assert r["per_class"]["car"]["AP50"] is None  # no car ground truth: excluded from the mean


def test_miou_hand_case():
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 2]])
    conf = confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[3, 1, 0], [1, 2, 0], [0, 0, 0]]
    r = segmentation_iou(conf, ["a", "b", "c"])
    assert r["per_class"]["a"] == pytest.approx(3 / 5) and r["per_class"]["b"] == pytest.approx(2 / 4)
    assert r["per_class"]["c"] is None and r["mIoU"] == pytest.approx((0.6 + 0.5) / 2)
    assert r["pixel_acc"] == pytest.approx(5 / 7)


def test_class_mapping():
    assert class_mapping(("person", "bicycle", "car"), create_detector("yolov5n", weights=None).class_names) == {
        0: 0,
        1: 1,
        2: 2,
    }
    assert class_mapping(("People", "Car"), ("person", "bicycle", "car")) == {0: 0, 1: 2}
    with pytest.raises(InputError, match="Lamp"):
        class_mapping(("Lamp",), ("person", "car"))


def test_fasterrcnn_regression_loss_reaches_image():
    torch.manual_seed(0)
    det = create_detector("fasterrcnn_mobilenet_v3_large_fpn", num_classes=2, class_names=NAMES)
    x = torch.rand(1, 3, 160, 200, requires_grad=True)
    loss, parts = det.regression_loss(x, [_gt((20, 30, 80, 120, 0))])
    assert set(parts) == {"loss_rpn_box_reg", "loss_objectness", "loss_box_reg"}
    loss.backward()
    assert torch.isfinite(loss) and x.grad is not None and x.grad.abs().sum() > 0
    full, parts = det.loss(x.detach(), [_gt((20, 30, 80, 120, 0))])
    assert "loss_classifier" in parts and float(full.detach()) > float(loss.detach()) - 1e-6


def test_deeplabv3plus_trains_on_made_up_masks(tmp_path):
    """Training and mIoU on synthetic masks (no segmentation labels exist in the shared data)."""
    torch.manual_seed(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        m = np.zeros((64, 64), np.uint8)
        r, c = rng.integers(8, 40, 2)
        m[r : r + 20, c : c + 20] = 1  # bright square = class 1
        img = np.where(m[..., None] == 1, 220, 40).astype(np.uint8).repeat(3, -1) + rng.integers(
            0, 20, (64, 64, 3)
        ).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(m).save(tmp_path / "mask" / f"{i}.png")
    data = load_segmentation_set(tmp_path / "img", tmp_path / "mask")
    model = DeepLabV3Plus(2, "resnet18")
    before = evaluate_segmenter(model, data, 2, progress=False)["mIoU"]
    hist = finetune_segmenter(model, data, epochs=8, batch_size=2, lr=2e-3, crop=None, progress=False)
    after = evaluate_segmenter(model, data, 2, progress=False)
    assert hist[-1] < hist[0] and after["mIoU"] > max(before, 0.6)
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    segmentation_loss(model(x), torch.zeros(1, 64, 64, dtype=torch.long)).backward()
    assert x.grad.abs().sum() > 0


def test_espnetv2_architecture_shapes():
    m = ESPNetv2Seg(5, s=1.0).eval()
    with torch.no_grad():
        y = m(torch.rand(1, 1, 96, 128))
    assert y.shape == (1, 5, 96, 128)


@pytest.mark.realdata
def test_espnetv2_cityscapes_checkpoint_on_msrs_day_image():
    w = need("weights/espnetv2_s2.0_cityscapes_1024x512.pth")
    sd = torch.load(w, weights_only=True, map_location="cpu")
    m = ESPNetv2Seg.from_checkpoint(w)
    assert set(m.state_dict()) == set(sd)
    from ivfuse.data import read_vis

    pred = m.predict(read_vis(need("data/MSRS/vi/00633D.png"))[None])[0]
    frac = torch.bincount(pred.flatten(), minlength=20).float() / pred.numel()
    names = m.class_names
    # a road scene: road is a large share of pixels, and cars/people are found
    assert frac[names.index("road")] > 0.15
    assert frac[names.index("car")] + frac[names.index("person")] > 0.005


@pytest.mark.realdata
@pytest.mark.slow
def test_downstream_detect_cli(tmp_path, capsys):
    msrs = need("data/MSRS")
    need("weights/yolov5n_coco_v6.1_state_dict.pt")
    sub = tmp_path / "vi"
    sub.mkdir()
    for n in ("00001D", "00004N", "00633D", "00881N", "00556D", "00039N"):
        (sub / f"{n}.png").write_bytes((msrs / "vi" / f"{n}.png").read_bytes())
    labels = msrs / "labels_det"
    rc = main(
        [
            "downstream",
            "detect",
            "--images",
            str(sub),
            "--labels",
            str(labels / "visible"),
            "--labels",
            str(labels / "infrared"),
            "--out",
            str(tmp_path / "r.json"),
            "-q",
        ]
    )
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert set(r["per_class"]) == {"person", "bicycle", "car"} and r["n_images"] == 6
    assert 0.05 < r["mAP50"] <= 1 and r["mAP50_95"] <= r["mAP50"]
    rc = main(["detect", "--images", str(sub / "00633D.png"), "-o", str(tmp_path / "drawn"), "-q"])
    assert rc == 0 and Image.open(tmp_path / "drawn" / "00633D.png").size == (640, 480)
    rc = main(["downstream", "detect", "--images", str(sub), "--labels", str(tmp_path / "nolabels"), "-q"])
    assert rc == 2 and "nolabels: label folder/file not found" in capsys.readouterr().err


def test_segmenter_registry_builds_loads_and_reports(tmp_path, capsys):
    from ivfuse.errors import UnknownNameError
    from ivfuse.tasks import create_segmenter, list_segmenters

    assert list_segmenters() == ["deeplabv3plus", "espnetv2"]
    with pytest.raises(UnknownNameError, match="did you mean 'espnetv2'"):
        create_segmenter("espnet")
    with pytest.raises(InputError, match="number of classes"):
        create_segmenter("deeplabv3plus", backbone="resnet18")
    scratch = create_segmenter("espnetv2", num_classes=3, class_names=("a", "b", "c"), s=0.5)
    assert isinstance(scratch, ESPNetv2Seg) and scratch.class_names == ("a", "b", "c")
    torch.manual_seed(0)
    m = create_segmenter("deeplabv3plus", class_names=("bg", "obj"), backbone="resnet18")
    assert m.num_classes == 2
    torch.save(m.state_dict(), tmp_path / "dl.pt")
    again = create_segmenter("deeplabv3plus", weights=tmp_path / "dl.pt", num_classes=2, backbone="resnet18")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in m.state_dict().items())
    with pytest.raises(InputError, match="does not fit deeplabv3plus/resnet18 with 3 classes"):
        create_segmenter("deeplabv3plus", weights=tmp_path / "dl.pt", num_classes=3, backbone="resnet18")
    # the CLI builds segmenters through the registry: its errors are one line
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(tmp_path / "x.png")
    rc = main(
        [
            "segment",
            "--images",
            str(tmp_path / "x.png"),
            "-o",
            str(tmp_path / "o"),
            "--model",
            "deeplabv3plus",
            "--backbone",
            "resnet18",
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("ivfuse: error:") and "number of classes" in err
    rc = main(
        [
            "segment",
            "--images",
            str(tmp_path / "x.png"),
            "-o",
            str(tmp_path / "o"),
            "--model",
            "deeplabv3plus",
            "--backbone",
            "resnet18",
            "--num-classes",
            "2",
            "--weights",
            str(tmp_path / "dl.pt"),
            "-q",
        ]
    )
    assert rc == 0 and (tmp_path / "o" / "x.png").is_file()

"""ivfuse's YOLOv5: architecture/key compatibility, equality with the official implementation, parts, loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import need
from ivfuse.data.labels import Boxes
from ivfuse.errors import InputError
from ivfuse.tasks.yolov5 import YOLOv5, YOLOv5Loss, non_max_suppression, yolov5_config

REF = Path(__file__).parent / "data" / "yolov5_official_detections.json"


@pytest.mark.parametrize("variant,params", [("n", 1_872_157), ("s", 7_235_389)])
def test_official_parameter_counts(variant, params):
    # official model summaries: YOLOv5n 1,872,157 and YOLOv5s 7,235,389 parameters (80 classes)
    m = YOLOv5(yolov5_config(variant))
    assert sum(p.numel() for p in m.parameters()) == params


def test_backbone_head_split_equals_forward_and_gray_input():
    torch.manual_seed(0)
    m = YOLOv5(yolov5_config("n", nc=3)).eval()
    x = torch.rand(2, 1, 96, 128)
    feats = m.backbone(x)
    assert [f.shape[-1] for f in feats] == [16, 8, 4] and [f.shape[1] for f in feats] == [64, 128, 256]
    with torch.no_grad():
        a = m.detect_layer.decode(m.head(m.backbone(x)))
        b = m(x.expand(-1, 3, -1, -1))
    assert torch.allclose(a, b) and a.shape == (2, 3 * (12 * 16 + 6 * 8 + 3 * 4), 8)


def test_nms_hand_case():
    # two overlapping boxes of class 0 (keep the better), one of class 1 at the same place (kept), one weak box
    pred = torch.tensor(
        [
            [
                [50, 50, 20, 20, 0.9, 0.9, 0.1],
                [51, 50, 20, 20, 0.8, 0.9, 0.1],
                [50, 50, 20, 20, 0.9, 0.1, 0.8],
                [10, 10, 4, 4, 0.2, 0.9, 0.1],
            ]
        ]
    )
    out = non_max_suppression(pred, 0.25, 0.45)[0]
    assert out.shape == (2, 6)
    assert torch.allclose(out[:, :4], torch.tensor([[40.0, 40, 60, 60], [40.0, 40, 60, 60]]))
    assert out[:, 5].tolist() == [0.0, 1.0] and torch.allclose(out[:, 4], torch.tensor([0.81, 0.72]))


def test_loss_trains_and_reaches_the_image():
    torch.manual_seed(0)
    m = YOLOv5(yolov5_config("n", nc=2)).train()
    crit = YOLOv5Loss(m)
    img = torch.rand(1, 3, 128, 128) * 0.2
    img[..., 40:90, 30:70] = 0.9
    boxes = [Boxes(torch.tensor([[30.0, 40.0, 70.0, 90.0]]), torch.tensor([1]))]
    targets = YOLOv5Loss.targets_from_boxes(boxes, 128, 128)
    assert torch.allclose(targets, torch.tensor([[0, 1, 50 / 128, 65 / 128, 40 / 128, 50 / 128]]))
    x = img.clone().requires_grad_(True)
    loss, parts = crit(m.head(m.backbone(x)), targets)
    loss.backward()
    assert x.grad.abs().sum() > 0 and parts.shape == (3,) and (parts > 0).all()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    first, first_box = float(loss), float(parts[0])
    for _ in range(30):
        loss, parts = crit(m(img), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first and float(parts[0]) < first_box


def test_bad_weights(tmp_path):
    with pytest.raises(InputError, match="not found"):
        YOLOv5.from_checkpoint(tmp_path / "none.pt")
    torch.save({"state_dict": {"x": torch.zeros(1)}, "yaml": yolov5_config("n"), "names": None}, tmp_path / "w.pt")
    with pytest.raises(InputError, match="keys do not match"):
        YOLOv5.from_checkpoint(tmp_path / "w.pt")


@pytest.mark.realdata
@pytest.mark.parametrize("key", json.loads(REF.read_text())["images"].keys())
def test_detections_equal_official_implementation(key):
    """Reference numbers were produced by the official ultralytics/yolov5 code on these files (see JSON 'source')."""
    from PIL import Image

    w = need("weights/yolov5n_coco_v6.1_state_dict.pt")
    img = np.asarray(Image.open(need(f"data/MSRS/{key}.png")).convert("RGB"))
    ref = json.loads(REF.read_text())["images"][key]
    m = _model(w)
    for mode, kw in (("detect", {}), ("val", dict(conf=0.001, iou=0.6, multi_label=True, rect_val=True))):
        d = m.predict(img, **kw)[0]
        assert len(d) == ref[mode]["n"], mode
        top = torch.tensor(ref[mode]["top"])
        k = len(top)
        got = torch.cat([d.xyxy[:k], d.scores[:k, None], d.labels[:k, None].float()], 1)
        assert torch.allclose(got[:, :4], top[:, :4], atol=1e-3), mode  # boxes to 1e-3 px
        assert torch.allclose(got[:, 4], top[:, 4], atol=1e-4) and torch.equal(got[:, 5], top[:, 5])


_CACHE: dict = {}


def _model(w):
    if "m" not in _CACHE:
        _CACHE["m"] = YOLOv5.from_checkpoint(w)
    return _CACHE["m"]


def test_detector_save_roundtrip(tmp_path):
    from ivfuse.tasks import create_detector

    det = create_detector("yolov5n", weights=None, num_classes=3, class_names=("person", "bicycle", "car"))
    det.save(tmp_path / "d.pt")
    back = create_detector("yolov5n", weights=tmp_path / "d.pt")
    assert back.class_names == det.class_names
    assert all(torch.equal(a, b) for a, b in zip(det.state_dict().values(), back.state_dict().values()))

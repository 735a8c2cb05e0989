"""Pairing, label readers, dataset layouts and joint transforms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import need
from ivfuse.data import (
    Boxes,
    Joint,
    load_dataset,
    pair_by_stem,
    random_crop,
    read_coco,
    read_mask,
    read_voc,
    read_yolo,
    train_transform,
)
from ivfuse.errors import InputError, PairingError, UnknownNameError


def test_pairing_is_by_stem_not_position(tmp_path):
    (tmp_path / "ir").mkdir()
    (tmp_path / "vi").mkdir()
    for n in ("b", "a", "c"):
        Image.new("L", (8, 8), ord(n)).save(tmp_path / "ir" / f"{n}.png")
    for n in ("c", "a", "b"):
        Image.new("L", (8, 8), ord(n)).save(tmp_path / "vi" / f"{n}.jpg")
    pairs = pair_by_stem(tmp_path / "ir", tmp_path / "vi")
    assert [k for k, _, _ in pairs] == ["a", "b", "c"]
    assert all(i.stem == v.stem for _, i, v in pairs)


def test_unmatched_names_are_listed(tmp_path):
    (tmp_path / "ir").mkdir()
    (tmp_path / "vi").mkdir()
    for n in ("a", "b", "x"):
        Image.new("L", (8, 8)).save(tmp_path / "ir" / f"{n}.png")
    for n in ("a", "b", "y"):
        Image.new("L", (8, 8)).save(tmp_path / "vi" / f"{n}.png")
    with pytest.raises(PairingError, match=r"only in .*ir: x; only in .*vi: y"):
        pair_by_stem(tmp_path / "ir", tmp_path / "vi")


def test_duplicate_stems_rejected(tmp_path):
    (tmp_path / "ir").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "ir" / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "ir" / "a.jpg")
    with pytest.raises(PairingError, match="share the name 'a'"):
        pair_by_stem(tmp_path / "ir", tmp_path / "ir")


def test_yolo_reader(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("0  0.5 0.5  0.25 0.5 \n\n2 0.1 0.2 0.1 0.2\n")
    b = read_yolo(p, 640, 480, ("person", "bicycle", "car"))
    assert torch.allclose(b.xyxy[0], torch.tensor([240.0, 120.0, 400.0, 360.0]))
    assert b.labels.tolist() == [0, 2] and b.names[2] == "car"
    assert len(read_yolo(tmp_path / "none.txt", 10, 10)) == 0
    p.write_text("0 0.5 0.5\n")
    with pytest.raises(InputError, match=r"l\.txt: line 1 has 3 fields"):
        read_yolo(p, 640, 480)


def test_voc_reader(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(
        "<annotation><object><name>person</name><difficult>1</difficult><bndbox><xmin>11</xmin><ymin>21</ymin>"
        "<xmax>30</xmax><ymax>60</ymax></bndbox></object><object><name>Car</name><bndbox><xmin>1</xmin>"
        "<ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
    )
    b = read_voc(p, ("person", "car"))
    assert b.xyxy[0].tolist() == [10.0, 20.0, 30.0, 60.0] and b.labels.tolist() == [0, 1]
    assert b.difficult.tolist() == [True, False]
    with pytest.raises(InputError, match="unknown class 'Car'"):
        read_voc(p, ("person", "truck"))
    assert read_voc(p, ("person",), extend=True).names == ("person", "Car")


def test_coco_reader(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "x/00001.png"}, {"id": 2, "file_name": "00002.png"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "iscrowd": 0}],
                "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
            }
        )
    )
    boxes, names = read_coco(p)
    assert names == ("person", "car")
    assert boxes["00001"].xyxy[0].tolist() == [10, 20, 40, 60] and boxes["00001"].labels.tolist() == [1]
    assert len(boxes["00002"]) == 0


def test_mask_reader(tmp_path):
    m = np.random.default_rng(0).integers(0, 9, (12, 16), dtype=np.uint8)
    Image.fromarray(m).save(tmp_path / "m.png")
    assert torch.equal(read_mask(tmp_path / "m.png"), torch.from_numpy(m.astype(np.int64)))


def _make_layout(root, ir_rel, vis_rel, names=("0001", "0002"), size=(40, 32)):
    for rel in (ir_rel, vis_rel):
        (root / rel).mkdir(parents=True, exist_ok=True)
        for n in names:
            Image.new("L" if rel == ir_rel else "RGB", size, 100).save(root / rel / f"{n}.png")


def test_m3fd_llvip_fmb_kaist_layouts(tmp_path):
    # M3FD: Ir/ Vis/ Annotation/*.xml
    r = tmp_path / "M3FD"
    _make_layout(r, "Ir", "Vis")
    (r / "Annotation").mkdir()
    (r / "Annotation" / "0001.xml").write_text(
        "<annotation><object><name>People</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>20</ymax>"
        "</bndbox></object></annotation>"
    )
    (r / "test.txt").write_text("0002\n")
    ds = load_dataset("m3fd", root=r)
    assert len(ds) == 2 and ds[0]["boxes"].labels.tolist() == [0] and ds[0]["boxes"].names[0] == "People"
    assert load_dataset("m3fd", root=r, split="test").names == ["0002"]
    # LLVIP: infrared/{train,test}, visible/{train,test}
    r = tmp_path / "LLVIP"
    _make_layout(r, "infrared/train", "visible/train", ("010001",))
    _make_layout(r, "infrared/test", "visible/test", ("190001", "190002"))
    assert load_dataset("llvip", root=r, split="test").names == ["190001", "190002"]
    assert len(load_dataset("llvip", root=r, split="all")) == 3
    # FMB: {split}/Infrared, {split}/Visible, {split}/Label
    r = tmp_path / "FMB"
    _make_layout(r, "train/Infrared", "train/Visible", ("a",))
    (r / "train" / "Label").mkdir()
    Image.fromarray(np.full((32, 40), 8, np.uint8)).save(r / "train" / "Label" / "a.png")
    s = load_dataset("fmb", root=r, split="train")[0]
    assert s["mask"].shape == (32, 40) and int(s["mask"][0, 0]) == 8
    # KAIST: images/setXX/VYYY/{lwir,visible}, split lists of setXX/VYYY/IZZZZZ
    r = tmp_path / "KAIST"
    _make_layout(r, "images/set00/V000/lwir", "images/set00/V000/visible", ("I00000", "I00001"))
    (r / "imageSets").mkdir()
    (r / "imageSets" / "test.txt").write_text("set00/V000/I00001\n")
    assert load_dataset("kaist", root=r, split="test").names == ["set00/V000/I00001"]


def test_dataset_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'msrs'"):
        load_dataset("msr", root=tmp_path)
    with pytest.raises(InputError, match="dataset folder not found"):
        load_dataset("tno", root=tmp_path / "missing")
    with pytest.raises(InputError, match="not a tno layout"):
        load_dataset("tno", root=tmp_path)


def test_joint_transform_moves_boxes_with_pixels():
    torch.manual_seed(0)
    ir = torch.zeros(1, 60, 80)
    ir[:, 10:30, 50:70] = 1.0  # bright object
    vis = ir.repeat(3, 1, 1) * 0.5
    mask = (ir[0] > 0).long()
    sample = {
        "ir": ir,
        "vis": vis,
        "mask": mask,
        "boxes": Boxes(torch.tensor([[50.0, 10.0, 70.0, 30.0]]), torch.tensor([0]), ("person",)),
    }
    for _ in range(5):
        out = train_transform(crop=(48, 64), flip=True)(sample)
        assert out["ir"].shape == (1, 48, 64) and out["vis"].shape == (3, 48, 64) and out["mask"].shape == (48, 64)
        assert torch.equal(out["mask"], (out["ir"][0] > 0).long())
        assert torch.equal(out["vis"][0] > 0, out["ir"][0] > 0)
        for x1, y1, x2, y2 in out["boxes"].xyxy.round().long().tolist():
            assert float(out["ir"][0, y1:y2, x1:x2].mean()) == 1.0  # still on the object


def test_crop_drops_boxes_outside():
    sample = {
        "ir": torch.zeros(1, 100, 100),
        "vis": torch.zeros(1, 100, 100),
        "mask": None,
        "boxes": Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [80.0, 80.0, 99.0, 99.0]]), torch.tensor([0, 1])),
    }
    from torchvision.transforms import v2

    out = Joint(v2.CenterCrop(50))(sample)
    assert len(out["boxes"]) == 0
    out = random_crop(100)(sample)
    assert len(out["boxes"]) == 2


@pytest.mark.realdata
def test_shared_datasets():
    need("data/MSRS")
    tno = load_dataset("tno")
    assert len(tno) == 42 and tno[0]["vis"].shape[0] == 1  # TNO visible is gray stored as RGB
    rs = load_dataset("roadscene", split="test")
    assert len(rs) == 50 and len(load_dataset("roadscene", split="train")) == 171
    msrs = load_dataset("msrs", split="test")
    assert len(msrs) == 241 and len(load_dataset("msrs", split="train")) == 34
    s = msrs[msrs.names.index("00004N")]
    assert s["vis"].shape == (3, 480, 640) and s["ir"].shape == (1, 480, 640)
    assert len(s["boxes"]) == 11 and s["boxes"].names == ("person", "bicycle", "car")
    union = load_dataset("msrs", split="test", det_labels="union")[msrs.names.index("00004N")]["boxes"]
    vis_only = load_dataset("msrs", split="test", det_labels="visible")[msrs.names.index("00004N")]["boxes"]
    concat = load_dataset("msrs", split="test", det_labels="union", union_iou=None)[msrs.names.index("00004N")]["boxes"]
    assert len(concat) == len(s["boxes"]) + len(vis_only) == 13
    assert len(union) == 11  # both visible people repeat an infrared box (IoU > 0.5): the infrared boxes stay
    assert torch.equal(union.xyxy, s["boxes"].xyxy)
    assert len(load_dataset("llvip")) == 38


@pytest.mark.realdata
def test_msrs_dev_split_follows_its_rule(shared):
    """The shipped MSRS dev split list is what the documented rule gives; dev-val holds no official-train pair."""
    import csv

    from ivfuse.data.splits import msrs_dev_split, read_split_file

    need("data/MSRS/manifest.tsv")
    with open(shared / "data/MSRS/manifest.tsv", newline="") as f:
        official = {r["name"]: r["msrs_split"] for r in csv.DictReader(f, delimiter="\t")}
    listed = read_split_file("msrs_dev.tsv")
    assert listed == {n: msrs_dev_split(n, s) for n, s in official.items()}
    val = load_dataset("msrs", split="dev-val", det_labels=None)
    train = load_dataset("msrs", split="dev-train", det_labels=None)
    assert len(val) == 104 and len(train) == 171
    assert not set(val.names) & set(train.names)
    assert all(official[n] == "test" for n in val.names)


def test_msrs_union_labels_merge_duplicates(tmp_path):
    """det_labels="union": a visible box that repeats a same-class infrared box (IoU > union_iou) is dropped."""
    _make_layout(tmp_path, "ir", "vi", names=("0001",), size=(100, 80))
    for s, rows in {
        "infrared": ["0 0.20 0.50 0.20 0.50", "2 0.70 0.50 0.30 0.40"],
        "visible": [
            "0 0.22 0.50 0.20 0.50",  # the same person, IoU 0.82
            "1 0.20 0.50 0.20 0.50",  # a bicycle at the same place: kept
            "2 0.85 0.50 0.30 0.40",  # the car, IoU 1/3: kept
        ],
    }.items():
        (tmp_path / "labels_det" / s).mkdir(parents=True)
        (tmp_path / "labels_det" / s / "0001.txt").write_text("\n".join(rows) + "\n")
    ds = load_dataset("msrs", root=tmp_path, det_labels="union")
    b = ds[0]["boxes"]
    assert b.labels.tolist() == [0, 2, 1, 2]
    assert torch.allclose(b.xyxy[0], torch.tensor([10.0, 20, 30, 60]))  # the infrared box is the one kept
    assert len(load_dataset("msrs", root=tmp_path, det_labels="union", union_iou=None)[0]["boxes"]) == 5
    assert len(load_dataset("msrs", root=tmp_path, det_labels="union", union_iou=0.3)[0]["boxes"]) == 3

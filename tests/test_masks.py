"""OCCO masks: region partition identities, MobileSAM (load, box prompts on MSRS, parity with the official code),
the SAM ViT checkpoint path, and the ``ivfuse masks`` command (files written, cached reruns)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import need
from ivfuse import masks as M
from ivfuse import regions as R
from ivfuse.errors import InputError

DATA = Path(__file__).parent / "data"

# ------------------------------------------------------------------------------------------------ partition


def test_partition_identities_on_hand_masks():
    m_ir = torch.zeros(1, 1, 6, 8)
    m_vis = torch.zeros(1, 1, 6, 8)
    m_ir[..., 1:4, 1:5] = 1
    m_vis[..., 2:5, 3:7] = 1
    p = R.partition(m_ir, m_vis)
    s, ui, uv, bg = p["shared"], p["u_ir"], p["u_vis"], p["bg"]
    assert torch.equal(s + ui + uv + bg, torch.ones_like(s))
    for a, b in [(s, ui), (s, uv), (s, bg), (ui, uv), (ui, bg), (uv, bg)]:
        assert float((a * b).sum()) == 0  # disjoint
    assert all(set(t.unique().tolist()) <= {0.0, 1.0} for t in p.values())
    assert float(s.sum()) == 2 * 2  # rows 2-3, cols 3-4
    assert float(ui.sum()) == 12 - 4 and float(uv.sum()) == 12 - 4 and float(bg.sum()) == 48 - 20
    assert torch.equal(s, m_ir * m_vis) and torch.equal(ui, m_ir - s) and torch.equal(uv, m_vis - s)

    cm = R.class_map(m_ir[0, 0], m_vis[0, 0])
    assert (
        cm.dtype == torch.uint8
        and int(cm[2, 3]) == 1
        and int(cm[1, 1]) == 2
        and int(cm[4, 6]) == 3
        and int(cm[0, 0]) == 0
    )
    back_ir, back_vis = R.object_masks_from_class_map(cm.numpy())
    assert torch.equal(back_ir, m_ir[0, 0]) and torch.equal(back_vis, m_vis[0, 0])
    with pytest.raises(InputError, match="expected 0-3"):
        R.object_masks_from_class_map(np.full((2, 2), 7, np.uint8))
    with pytest.raises(InputError, match="differ in shape"):
        R.partition(m_ir, m_vis[..., :4])
    # the old public path still works
    assert (M.partition, M.class_map, M.object_masks_from_class_map, M.CLASS_NAMES) == (
        R.partition,
        R.class_map,
        R.object_masks_from_class_map,
        R.CLASS_NAMES,
    )


# ------------------------------------------------------------------------------------------------ SAM


def test_sam_rejects_non_sam_checkpoints(tmp_path):
    from ivfuse.tasks.sam import load_sam

    bad = tmp_path / "x.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(InputError, match="not a SAM/MobileSAM checkpoint"):
        load_sam(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read SAM checkpoint"):
        load_sam(junk)


@pytest.fixture(scope="module")
def sam():
    from ivfuse.tasks.sam import load_sam

    need("weights/mobile_sam.pt")
    return load_sam()


@pytest.mark.realdata
def test_mobile_sam_loads_strictly_and_segments_a_person(sam):
    from ivfuse import read_ir
    from ivfuse.tasks.sam import mask_box_stats

    # every tensor of mobile_sam.pt (no extra, none missing)
    assert sum(p.numel() for p in sam.parameters()) == 10_130_092
    ir = read_ir(need("data/MSRS/ir/00004N.png"))
    # the pedestrian of labels_det/infrared/00004N.txt line 2 (YOLO cx cy w h = .8367 .5740 .0828 .2979 of 640×480)
    box = torch.tensor([[509.0, 204.0, 562.0, 347.0]])
    pred = sam.segment(ir, box)
    assert pred.masks.shape == (1, 480, 640) and pred.masks.dtype == torch.bool
    st = mask_box_stats(pred.masks[0], box[0])
    assert st["in_box"] > 0.95  # the mask lies in the box
    assert 0.35 < st["box_cover"] < 0.9  # a person fills part of the box, not all of it
    assert float(pred.iou[0]) > 0.8
    empty = sam.segment(ir, torch.zeros(0, 4))
    assert len(empty) == 0 and empty.masks.shape == (0, 480, 640)


@pytest.mark.realdata
@pytest.mark.slow
def test_mobile_sam_matches_official_masks(sam):
    """Masks of the official MobileSAM predictor (statistics in tests/data/mobile_sam_official.json) are reproduced."""
    from ivfuse.data.images import read_vis

    ref = json.loads((DATA / "mobile_sam_official.json").read_text())
    by_image: dict[str, list] = {}
    for case in ref["cases"]:
        by_image.setdefault(case["image"], []).append(case)
    for rel, cases in sorted(by_image.items())[:2]:
        x = read_vis(need("data/" + rel))  # the official predictor reads RGB (gray IR repeated)
        pred = sam.segment(x, torch.tensor([c["box"] for c in cases], dtype=torch.float32))
        for c, m, q in zip(cases, pred.masks, pred.iou):
            area = int(m.sum())
            assert abs(area - c["area_official"]) <= 0.01 * c["area_official"], (rel, area, c["area_official"])
            assert abs(float(q) - c["pred_iou_official"]) < 0.005
    assert min(c["iou_official_vs_ivfuse"] for c in ref["cases"]) > 0.99


@pytest.mark.slow
def test_sam_vit_checkpoint_path_loads_strictly(tmp_path):
    """An official SAM ViT checkpoint (keys image_encoder.* / prompt_encoder.* / mask_decoder.*) loads via timm."""
    import timm

    from ivfuse.tasks.sam import MaskDecoder, PromptEncoder, load_sam

    vit = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0)
    sd = {"image_encoder." + k.replace("mlp.fc", "mlp.lin"): v for k, v in vit.state_dict().items()}
    sd.update({"prompt_encoder." + k: v for k, v in PromptEncoder().state_dict().items()})
    sd.update({"mask_decoder." + k: v for k, v in MaskDecoder().state_dict().items()})
    path = tmp_path / "sam_vit_b.pth"
    torch.save(sd, path)
    model = load_sam(path)  # strict: every key mapped, none left over
    assert sum(p.numel() for p in model.parameters()) == sum(
        v.numel() for k, v in sd.items() if "gaussian_matrix" not in k
    )
    assert type(model.image_encoder.vit).__name__ == "VisionTransformerSAM"


# ------------------------------------------------------------------------------------------------ the command


def _run_masks(argv: list[str]) -> int:
    from ivfuse import cli

    args = cli.build_parser().parse_args(argv)
    return args.run(args)


def _link_pairs(src: Path, tmp_path: Path, stems: list[str]) -> tuple[Path, Path]:
    """``tmp_path/ir`` and ``tmp_path/vi`` with symlinks to the MSRS pairs ``stems``."""
    ir_d, vis_d = tmp_path / "ir", tmp_path / "vi"
    ir_d.mkdir()
    vis_d.mkdir()
    for s in stems:
        os.symlink(src / "ir" / f"{s}.png", ir_d / f"{s}.png")
        os.symlink(src / "vi" / f"{s}.png", vis_d / f"{s}.png")
    return ir_d, vis_d


def test_masks_command_bad_input(tmp_path):
    (tmp_path / "ir").mkdir()
    (tmp_path / "vi").mkdir()
    with pytest.raises(InputError, match="no images"):
        _run_masks(["masks", "--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vi"), "-o", str(tmp_path / "o")])
    with pytest.raises(InputError, match="no default weights here"):
        M.MaskGenerator("fasterrcnn_resnet50_fpn")  # would otherwise prompt SAM with an untrained detector's boxes


@pytest.mark.realdata
@pytest.mark.slow
def test_masks_command_on_msrs_pairs_and_cache(tmp_path, capsys):
    src = need("data/MSRS")
    need("weights/mobile_sam.pt")
    stems = ["00004N", "00633D"]
    ir_d, vis_d = _link_pairs(src, tmp_path, stems)
    out = tmp_path / "masks"
    assert _run_masks(["masks", "--ir", str(ir_d), "--vis", str(vis_d), "-o", str(out), "-q"]) == 0
    assert "2 written, 0 skipped" in capsys.readouterr().out
    for s in stems:
        cm = np.array(Image.open(out / f"{s}.png"))
        assert cm.shape == (480, 640) and cm.dtype == np.uint8 and set(np.unique(cm)) <= {0, 1, 2, 3}
        meta = json.loads((out / f"{s}.json").read_text())
        assert meta["classes"] == {"0": "background", "1": "shared", "2": "ir_unique", "3": "vis_unique"}
        assert sum(meta["areas"].values()) == 480 * 640
        assert meta["areas"]["shared"] == int((cm == 1).sum())
        for inst in meta["instances"]:
            assert inst["modality"] in ("ir", "vis") and inst["class"] in M.DEFAULT_CLASSES and inst["mask_area"] > 0
        prev = Image.open(out / "preview" / f"{s}.png")
        assert prev.size == (3 * 640, 480) and prev.mode == "RGB"
    # night: the pedestrian at the right is found in the infrared image only -> IR-unique pixels there
    night = np.array(Image.open(out / "00004N.png"))
    assert (night[204:347, 509:562] == 2).mean() > 0.3
    # day: both people are seen in both images -> mostly shared
    day = json.loads((out / "00633D.json").read_text())
    assert sum(i["class"] == "person" for i in day["instances"]) >= 4
    assert day["areas"]["shared"] > 2 * (day["areas"]["ir_unique"] + day["areas"]["vis_unique"])
    # rerun: cached, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert _run_masks(["masks", "--ir", str(ir_d), "--vis", str(vis_d), "-o", str(out), "-q"]) == 0
    assert "0 written, 2 skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes
    assert not [p for p in out.rglob(".*")]  # no temporary files left behind


# ------------------------------------------------------------------------------------------------ seg pseudo-masks


@pytest.mark.realdata
@pytest.mark.slow
def test_masks_command_seg_pseudo_masks_on_msrs(tmp_path, capsys):
    """``ivfuse masks --kind seg`` writes TSJNet's pseudo-masks (MSRS class ids) as PNGs: the same values as
    :func:`pseudo_mask` in memory, the night pedestrian of 00004N labelled person, cached reruns, bad options
    refused."""
    from ivfuse.data.images import read_ir, read_vis
    from ivfuse.tasks.pseudo import pseudo_mask
    from ivfuse.errors import UnknownNameError
    from ivfuse.tasks.segmenters import create_segmenter

    src = need("data/MSRS")
    need("weights")
    stems = ["00004N", "00633D"]
    ir_d, vis_d = _link_pairs(src, tmp_path, stems)
    out = tmp_path / "seg"
    argv = ["masks", "--kind", "seg", "--ir", str(ir_d), "--vis", str(vis_d), "-o", str(out), "-q"]
    assert _run_masks(argv) == 0
    assert "2 written, 0 skipped" in capsys.readouterr().out
    seg = create_segmenter("espnetv2").eval()
    for s in stems:
        m = np.array(Image.open(out / f"{s}.png"))
        assert m.shape == (480, 640) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1, 2, 3}
        ref = pseudo_mask(read_ir(ir_d / f"{s}.png"), read_vis(vis_d / f"{s}.png"), seg, "auto", 0.2)
        assert np.array_equal(m, ref.numpy())
    night = np.array(Image.open(out / "00004N.png"))
    assert (night[204:347, 509:562] == 2).sum() > 500  # the pedestrian at the right (IR-bright, dark in visible)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert _run_masks(argv) == 0
    assert "0 written, 2 skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == mtimes
    assert not list(out.glob(".*"))
    with pytest.raises(UnknownNameError, match="pseudo-mask source"):
        _run_masks([*argv, "--seg-source", "thermal", "--overwrite"])

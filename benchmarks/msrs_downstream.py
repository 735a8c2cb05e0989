"""Downstream protocol on the shared MSRS pairs: zero-shot YOLOv5n mAP of IR, visible and fused images, and a
short CPU fine-tuning run on part of the set evaluated on the rest.

    OMP_NUM_THREADS=1 python benchmarks/msrs_downstream.py [--split test] [--methods laplacian,gff] [--epochs 5] \
        [--merge-iou 0.5] [--skip-finetune] [--out runs/msrs_downstream/results.json]

Images: the pairs of ``--split`` of ``load_dataset("msrs")`` (default ``test``: the 241 official-test pairs of the
shared copy, never used to train the shipped model; ``all`` = all 275).
Ground truths: the ``infrared`` label set; ``union`` = infrared + visible boxes with same-class duplicates (IoU above
``--merge-iou``) merged, the infrared box kept (:func:`ivfuse.data.labels.merge_boxes`); ``union-concat`` = both
sets concatenated without merging (how union was scored before duplicates were merged; kept for comparison).
Each image set is run through the detector once and scored against every ground truth.
Fine-tuning: on the images whose names sort into the first ``--train-frac`` of a seeded shuffle; the rest is held out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import warnings
from pathlib import Path

import torch

import ivfuse
from ivfuse.data.images import read_vis
from ivfuse.errors import IvfuseWarning
from ivfuse.tasks import create_detector
from ivfuse.engine.finetune import finetune_detector
from ivfuse.tasks.downstream import class_mapping, evaluate_detector, load_detection_set
from ivfuse.tasks.evaluation import detection_map
from ivfuse.utils import atomic_write_text, shared_root


def _split_folder(msrs: Path, split: str, work: Path) -> dict[str, Path]:
    """``{"ir": dir, "vis": dir}`` of the split's pairs (symbolic links under ``work`` unless the split is ``all``)."""
    if split == "all":
        return {"ir": msrs / "ir", "vis": msrs / "vi"}
    ds = ivfuse.load_dataset("msrs", root=msrs, split=split, det_labels=None)
    out = {}
    for key, sub, idx in (("ir", "ir", 1), ("vis", "vi", 2)):
        d = work / f"split_{split}" / sub
        d.mkdir(parents=True, exist_ok=True)
        for pair in ds.pairs:
            link = d / pair[idx].name
            if not link.exists():
                os.symlink(pair[idx].resolve(), link)
        out[key] = d
    return out


def predict_all(det, paths: list[Path], classes: list[int]) -> list:
    """val.py-setting detections for each image (one detector pass, reused for every ground truth)."""
    return [det.predict([read_vis(p)], mode="val", classes=classes)[0] for p in paths]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="test", help="MSRS split of the shared copy (test, all, train, dev-val, ...)")
    ap.add_argument("--methods", default="laplacian,gff")
    ap.add_argument("--work", default="runs/msrs_downstream")
    ap.add_argument(
        "--merge-iou", type=float, default=0.5, help="IoU above which infrared/visible boxes are one object"
    )
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--train-frac", type=float, default=0.5)
    ap.add_argument("--finetune-on", default="gff", help="image set used for the fine-tuning experiment")
    ap.add_argument("--out", default="runs/msrs_downstream/results.json")
    ap.add_argument("--skip-zero-shot", action="store_true")
    ap.add_argument("--skip-finetune", action="store_true")
    a = ap.parse_args()
    if a.split != "all":  # the label folders cover all 275 pairs; a split uses some of them on purpose
        warnings.filterwarnings("ignore", message=".*label files have no image", category=IvfuseWarning)
    msrs = shared_root() / "data" / "MSRS"
    work = Path(a.work)
    sets = _split_folder(msrs, a.split, work)
    for m in filter(None, a.methods.split(",")):
        out = work / f"fused_{a.split}_{m}"
        if not out.exists():
            ivfuse.fuse_folder(sets["ir"], sets["vis"], out, method=m, progress=False)
        sets[m] = out
    ir_l, vis_l = msrs / "labels_det" / "infrared", msrs / "labels_det" / "visible"
    gts = {"infrared": ([ir_l], None), "union": ([ir_l, vis_l], a.merge_iou), "union-concat": ([ir_l, vis_l], None)}
    det = create_detector("yolov5n")
    res: dict = {"split": a.split, "merge_iou": a.merge_iou, "zero_shot": {}, "finetune": {}}
    if not a.skip_zero_shot:
        print(
            f"MSRS {a.split}: zero-shot YOLOv5n (COCO)\n| images | GT | boxes | mAP50 | mAP50:95 |\n"
            "|---|---|---:|---:|---:|"
        )
        for sname, d in sets.items():
            data = {g: load_detection_set(d, labels, merge_iou=iou) for g, (labels, iou) in gts.items()}
            first = next(iter(data.values()))
            mapping = class_mapping(first.class_names, det.class_names)
            inverse = {v: k for k, v in mapping.items()}
            with torch.inference_mode():
                raw = predict_all(det, first.paths, sorted(inverse))
            preds = [
                type(p)(p.xyxy, p.scores, torch.tensor([inverse[int(c)] for c in p.labels.tolist()], dtype=torch.int64))
                for p in raw
            ]
            for g, ds in data.items():
                r = detection_map(preds, ds.boxes, ds.class_names)
                r["n_boxes"] = sum(len(b) for b in ds.boxes)
                res["zero_shot"][f"{sname}/{g}"] = r
                print(f"| {sname} | {g} | {r['n_boxes']} | {r['mAP50']:.4f} | {r['mAP50_95']:.4f} |", flush=True)
            atomic_write_text(a.out, json.dumps(res, indent=1))
    if a.skip_finetune:
        return
    data = load_detection_set(sets[a.finetune_on], gts["union"][0], merge_iou=a.merge_iou)
    idx = list(range(len(data)))
    random.Random(0).shuffle(idx)
    k = int(len(idx) * a.train_frac)
    train, held = data.subset(sorted(idx[:k])), data.subset(sorted(idx[k:]))
    before = evaluate_detector(det, held, progress=False)
    t0 = time.time()
    hist = finetune_detector(
        det,
        train,
        epochs=a.epochs,
        batch_size=4,
        lr=0.002,
        progress=False,
        log=lambda d: print(f"  epoch {d['epoch']}: loss {d['loss']:.4f}", flush=True),
    )
    dt = time.time() - t0
    after = evaluate_detector(det, held, progress=False)
    res["finetune"] = {
        "images": a.finetune_on,
        "gt": "union",
        "train": len(train),
        "held_out": len(held),
        "epochs": a.epochs,
        "seconds": dt,
        "loss": hist,
        "before": before,
        "after": after,
    }
    print(
        f"fine-tune on {len(train)} {a.finetune_on} images, {a.epochs} epochs "
        f"({dt:.0f} s, {dt / a.epochs:.0f} s/epoch): "
        f"held-out ({len(held)}) mAP50 {before['mAP50']:.4f} -> {after['mAP50']:.4f}, "
        f"mAP50:95 {before['mAP50_95']:.4f} -> {after['mAP50_95']:.4f}"
    )
    atomic_write_text(a.out, json.dumps(res, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

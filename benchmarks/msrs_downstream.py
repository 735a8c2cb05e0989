"""Downstream protocol on the shared MSRS dev set: zero-shot YOLOv5n mAP of IR, visible and fused images, and a
short CPU fine-tuning run on part of the set evaluated on the rest.

    python benchmarks/msrs_downstream.py [--methods laplacian,gff] [--epochs 5] [--out results/msrs_downstream.json]

Ground truths: the ``infrared`` label set, and the union of ``infrared`` + ``visible`` boxes.
Fine-tuning: on the images whose names sort into the first ``--train-frac`` of a seeded shuffle; the rest is held out.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import ivfuse
from ivfuse.tasks import create_detector
from ivfuse.tasks.downstream import evaluate_detector, finetune_detector, load_detection_set
from ivfuse.utils import atomic_write_text, shared_root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="laplacian,gff")
    ap.add_argument("--work", default="runs/msrs_downstream")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--train-frac", type=float, default=0.5)
    ap.add_argument("--finetune-on", default="gff", help="image set used for the fine-tuning experiment")
    ap.add_argument("--out", default="runs/msrs_downstream/results.json")
    ap.add_argument("--skip-zero-shot", action="store_true")
    a = ap.parse_args()
    msrs = shared_root() / "data" / "MSRS"
    work = Path(a.work)
    sets = {"ir": msrs / "ir", "vis": msrs / "vi"}
    for m in a.methods.split(","):
        out = work / f"fused_{m}"
        if not out.exists():
            ivfuse.fuse_folder(msrs / "ir", msrs / "vi", out, method=m, progress=False)
        sets[m] = out
    gts = {"infrared": [msrs / "labels_det" / "infrared"],
           "union": [msrs / "labels_det" / "infrared", msrs / "labels_det" / "visible"]}  # fmt: skip
    det = create_detector("yolov5n")
    res: dict = {"zero_shot": {}, "finetune": {}}
    if not a.skip_zero_shot:
        print("| images | GT | mAP50 | mAP50:95 |\n|---|---|---:|---:|")
        for sname, d in sets.items():
            for gname, labels in gts.items():
                r = evaluate_detector(det, load_detection_set(d, labels), progress=False)
                res["zero_shot"][f"{sname}/{gname}"] = r
                print(f"| {sname} | {gname} | {r['mAP50']:.4f} | {r['mAP50_95']:.4f} |", flush=True)
    data = load_detection_set(sets[a.finetune_on], gts["union"])
    idx = list(range(len(data)))
    random.Random(0).shuffle(idx)
    k = int(len(idx) * a.train_frac)
    train, held = data.subset(sorted(idx[:k])), data.subset(sorted(idx[k:]))
    before = evaluate_detector(det, held, progress=False)
    t0 = time.time()
    hist = finetune_detector(det, train, epochs=a.epochs, batch_size=4, lr=0.002, progress=False,
                             log=lambda d: print(f"  epoch {d['epoch']}: loss {d['loss']:.4f}", flush=True))  # fmt: skip
    dt = time.time() - t0
    after = evaluate_detector(det, held, progress=False)
    res["finetune"] = {"images": a.finetune_on, "gt": "union", "train": len(train), "held_out": len(held), "epochs": a.epochs,
                       "seconds": dt, "loss": hist, "before": before, "after": after}  # fmt: skip
    print(f"fine-tune on {len(train)} {a.finetune_on} images, {a.epochs} epochs ({dt:.0f} s, {dt / a.epochs:.0f} s/epoch): "
          f"held-out ({len(held)}) mAP50 {before['mAP50']:.4f} -> {after['mAP50']:.4f}, "
          f"mAP50:95 {before['mAP50_95']:.4f} -> {after['mAP50_95']:.4f}")  # fmt: skip
    atomic_write_text(a.out, json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""What fusion does to the labelled targets (issue 20, item 1): contrast and zero-shot recall per class and scene.

For every method (bench method specs: registered names, ``name@FILE``, the references ``ir`` / ``vis``) the script
fuses the judged split (8-bit PNGs, exactly as the bench stores them) and measures, for every ground-truth box:

* **target contrast**: mean fused luminance (BT.601) inside the box minus the mean over a ring around it (the box grown
  by half its size on each side, the box itself excluded), in grey levels; positive = the target is brighter than its
  surroundings. Reported as the median over the boxes of each class and scene, with the infrared image's own
  contrast as the reference of what a warm target looks like;
* **recall of the frozen COCO YOLOv5n** at its detection settings (conf 0.25, NMS IoU 0.45): the fraction of boxes
  that a detection of the same class overlaps with IoU >= 0.5 (greedy, by score).

With ``--crops N`` it also writes ``missed_persons.png``: up to N persons (night first) that the frozen judge finds in
the infrared image but misses in the first fused method's image (``--missed-in``, default ``average``), cropped from
every method side by side (columns in ``--methods`` order).

    OMP_NUM_THREADS=1 python benchmarks/diagnose_targets.py --methods ir,vis,average,thermal_chroma,warm_average \\
        --data msrs:dev-val --labels infrared --crops 8 --out diag/

Prints a Markdown table (one row per method, class and scene) and writes it to ``OUT/targets.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou


def luma(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), np.float64)  # PIL "L" = ITU-R 601-2 luma


def contrast(y: np.ndarray, box) -> float:
    h, w = y.shape
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if x2 <= x1 or y2 <= y1:
        return float("nan")
    gx, gy = max(1, (x2 - x1) // 2), max(1, (y2 - y1) // 2)
    X1, Y1, X2, Y2 = max(0, x1 - gx), max(0, y1 - gy), min(w, x2 + gx), min(h, y2 + gy)
    outer = y[Y1:Y2, X1:X2].sum() - y[y1:y2, x1:x2].sum()
    n_ring = (Y2 - Y1) * (X2 - X1) - (y2 - y1) * (x2 - x1)
    if n_ring <= 0:
        return float("nan")
    return float(y[y1:y2, x1:x2].mean() - outer / n_ring)


def matched(dets, gt_xyxy: torch.Tensor, gt_lab: torch.Tensor) -> np.ndarray:
    """Which ground-truth boxes a same-class detection overlaps with IoU >= 0.5 (greedy by score, one each)."""
    hit = np.zeros(len(gt_lab), bool)
    if len(gt_lab) == 0 or len(dets.scores) == 0:
        return hit
    iou = box_iou(dets.xyxy, gt_xyxy).numpy()
    for d in np.argsort(-dets.scores.numpy()):
        cand = [(iou[d, g], g) for g in range(len(gt_lab)) if not hit[g] and int(gt_lab[g]) == int(dets.labels[d])]
        if cand:
            best, g = max(cand)
            if best >= 0.5:
                hit[g] = True
    return hit


def crop(path: Path, box, size: int = 96) -> Image.Image:
    x1, y1, x2, y2 = box
    cx, cy, s = (x1 + x2) / 2, (y1 + y2) / 2, max(48.0, 2 * max(x2 - x1, y2 - y1))
    with Image.open(path) as im:
        return (
            im.convert("RGB")
            .crop((int(cx - s / 2), int(cy - s / 2), int(cx + s / 2), int(cy + s / 2)))
            .resize((size, size))
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--methods",
        required=True,
        help="comma-separated bench method specs (ir, vis, average, name@FILE, LABEL=name@FILE, ...)",
    )
    ap.add_argument("--data", default="msrs:dev-val")
    ap.add_argument("--labels", default="infrared", choices=["infrared", "visible", "union"])
    ap.add_argument("--crops", type=int, default=0, help="write missed_persons.png with up to N persons")
    ap.add_argument("--missed-in", default="average", help="method whose misses (found in ir) are cropped")
    ap.add_argument("--out", default="diag")
    a = ap.parse_args(argv)

    from ivfuse.bench.protocols import build_method, detection_set, fuse_split, open_dataset, parse_data
    from ivfuse.bench.stats import scene_masks
    from ivfuse.tasks import create_detector
    from ivfuse.tasks.downstream import class_mapping

    spec = parse_data(a.data)
    ds = open_dataset(spec, spec.split, a.labels, None)
    scenes = scene_masks(ds.names) or {"all": np.ones(len(ds.names), bool)}
    scene_of = {n: next(s for s, m in scenes.items() if m[i]) for i, n in enumerate(ds.names)}
    det = create_detector("yolov5n").eval()
    mapping = class_mapping(tuple(ds.class_names), det.class_names)
    inverse = {v: k for k, v in mapping.items()}
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ivfuse_diag_"))
    per: dict[str, dict] = {}  # method -> {"paths", "contrast": [(class, scene, value)], "hit": {name: bool array}}
    for text in methods:
        label, _, spec_text = text.partition("=") if "=" in text.split("@", 1)[0] else ("", "", text)
        name, model, _, _ = build_method(spec_text)
        label = label or name
        paths = fuse_split(model.eval(), ds, tmp / label.replace("/", "_"), progress=False)
        data = detection_set(ds, paths)
        rows, hits = [], {}
        for n, p, b in zip(data.names, data.paths, data.boxes):
            y = luma(p)
            for xy, c in zip(b.xyxy.tolist(), b.labels.tolist()):
                rows.append((ds.class_names[c], scene_of[n], contrast(y, xy)))
            with Image.open(p) as im:
                img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 255
            d = det.predict([img], mode="detect", classes=sorted(inverse))[0]
            d = type(d)(d.xyxy, d.scores, torch.tensor([inverse[int(c)] for c in d.labels.tolist()], dtype=torch.int64))
            hits[n] = matched(d, b.xyxy, b.labels)
        per[label] = {
            "paths": paths,
            "contrast": rows,
            "hit": hits,
            "boxes": {n: b for n, b in zip(data.names, data.boxes)},
        }
        print(f"{label}: fused and judged {len(paths)} pairs", file=sys.stderr)

    lines = [
        f"{a.data}, {a.labels} labels; contrast = median over boxes of mean luminance inside − ring around (grey "
        "levels); recall = frozen YOLOv5n at conf 0.25, IoU ≥ 0.5",
        "",
        "| method | class | scene | boxes | contrast (median) | recall |",
        "|---|---|---|---:|---:|---:|",
    ]
    for label, r in per.items():
        for c in ds.class_names:
            for s in scenes:
                vals = [v for cc, ss, v in r["contrast"] if cc == c and ss == s and np.isfinite(v)]
                hit = [
                    bool(h)
                    for n, hs in r["hit"].items()
                    if scene_of[n] == s
                    for h, lab in zip(hs, r["boxes"][n].labels.tolist())
                    if ds.class_names[lab] == c
                ]
                if not vals:
                    continue
                lines.append(
                    f"| {label} | {c} | {s} | {len(vals)} | {statistics.median(vals):+.1f} | "
                    f"{(sum(hit) / len(hit)) if hit else float('nan'):.3f} |"
                )
    table = "\n".join(lines) + "\n"
    print(table)
    (out / "targets.md").write_text(table)

    if a.crops and "ir" in per and a.missed_in in per:
        person = list(ds.class_names).index("person")
        cands = []
        for n in ds.names:
            b = per["ir"]["boxes"][n]
            for g, lab in enumerate(b.labels.tolist()):
                if lab == person and per["ir"]["hit"][n][g] and not per[a.missed_in]["hit"][n][g]:
                    cands.append((scene_of[n] != "night", n, b.xyxy[g].tolist()))
        cands.sort(key=lambda t: (t[0], t[1]))
        cands = cands[: a.crops]
        if cands:
            size = 96
            grid = Image.new("RGB", (size * len(per), size * len(cands)), "white")
            for i, (_, n, xy) in enumerate(cands):
                for j, label in enumerate(per):
                    grid.paste(crop(per[label]["paths"][n], xy, size), (j * size, i * size))
            grid.save(out / "missed_persons.png")
            print(
                f"missed_persons.png: {len(cands)} persons (rows: "
                + ", ".join(n for _, n, _ in cands)
                + "; columns: "
                + ", ".join(per)
                + ")",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Downstream judges' metrics: COCO-style detection mAP (pycocotools) and segmentation IoU.

* :func:`detection_map` builds COCO ground truth and detections from :class:`~ivfuse.data.labels.Boxes` and
  :class:`~ivfuse.tasks.yolov5.Detections`, and runs ``pycocotools.COCOeval`` (101-point interpolated AP,
  IoU 0.50:0.05:0.95, area "all", up to ``max_det`` detections per image, 300 as YOLOv5's val.py).
* :func:`confusion_matrix` / :func:`segmentation_iou`: per-class IoU = TP / (TP + FP + FN) accumulated over a
  dataset; mIoU averages the classes that occur in ground truth or prediction.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["detection_map", "confusion_matrix", "segmentation_iou"]


def detection_map(
    predictions: Sequence,
    ground_truth: Sequence,
    class_names: Sequence[str],
    max_det: int = 300,
) -> dict:
    """COCO-style mAP of ``predictions[i]`` (xyxy, scores, labels) against ``ground_truth[i]`` (Boxes).

    Returns ``{"mAP50", "mAP50_95", "per_class": {name: {"AP50", "AP50_95", "n_gt"}}, "n_images"}``; classes
    without ground truth have ``None`` APs and do not enter the means.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truth)} images")
    images, anns, dets = [], [], []
    for i, (p, g) in enumerate(zip(predictions, ground_truth)):
        images.append({"id": i + 1})
        xyxy = g.xyxy.double()
        for j in range(len(g)):
            x1, y1, x2, y2 = xyxy[j].tolist()
            crowd = int(bool(g.difficult[j])) if g.difficult is not None else 0
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(g.labels[j]) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": crowd})  # fmt: skip
        pxy = p.xyxy.double()
        for j in range(len(p)):
            x1, y1, x2, y2 = pxy[j].tolist()
            dets.append({"image_id": i + 1, "category_id": int(p.labels[j]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": float(p.scores[j])})  # fmt: skip
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": cats}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    n_gt = np.bincount([a["category_id"] - 1 for a in anns if not a["iscrowd"]], minlength=len(class_names))
    per_class = {n: {"AP50": None, "AP50_95": None, "n_gt": int(n_gt[k])} for k, n in enumerate(class_names)}
    if not dets or not anns:
        return {"mAP50": 0.0, "mAP50_95": 0.0, "per_class": per_class, "n_images": len(images)}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, max_det]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # T×R×K, area all, max_det

    def ap(x: np.ndarray) -> float | None:
        v = x[x > -1]
        return float(v.mean()) if v.size else None

    for k, n in enumerate(class_names):
        if n_gt[k] > 0:
            per_class[n]["AP50"] = ap(prec[0, :, k])
            per_class[n]["AP50_95"] = ap(prec[:, :, k])
    valid = [k for k in range(len(class_names)) if n_gt[k] > 0]
    m50 = ap(prec[0][:, valid])
    m = ap(prec[:, :, valid])
    return {"mAP50": m50 or 0.0, "mAP50_95": m or 0.0, "per_class": per_class, "n_images": len(images)}


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """``K×K`` int64 counts (rows: ground truth, columns: prediction), ignoring ``ignore_index`` pixels."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    idx = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def segmentation_iou(conf: torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """Per-class IoU and mIoU from a confusion matrix (classes absent from both GT and prediction skipped)."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    names = list(class_names) if class_names else [str(i) for i in range(conf.shape[0])]
    per = {n: (float(tp[k] / union[k]) if union[k] > 0 else None) for k, n in enumerate(names)}
    vals = [v for v in per.values() if v is not None]
    total = conf.sum()
    return {
        "mIoU": float(np.mean(vals)) if vals else math.nan,
        "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
        "per_class": per,
    }

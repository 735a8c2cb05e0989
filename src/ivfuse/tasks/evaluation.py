"""Downstream judges' metrics: COCO-style detection mAP (pycocotools) and segmentation IoU.

* :func:`detection_map` builds COCO ground truth and detections from :class:`~ivfuse.data.labels.Boxes` and
  :class:`~ivfuse.tasks.yolov5.Detections`, and runs ``pycocotools.COCOeval`` (101-point interpolated AP,
  IoU 0.50:0.05:0.95, area "all", up to ``max_det`` detections per image, 300 as YOLOv5's val.py).
* :func:`map_from_matches` recomputes the same APs from the per-image matches that ``COCOeval.evaluate`` made
  (``detection_map(..., matches=True)``), for any weighting of the images: a bootstrap resample (an image drawn
  twice has weight 2) or one image alone, without running the matcher again (``ivfuse.bench.stats``).
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

__all__ = [
    "detection_map",
    "map_from_matches",
    "PreparedMatches",
    "encode_matches",
    "decode_matches",
    "confusion_matrix",
    "segmentation_iou",
]

#: COCO's IoU thresholds (0.50:0.05:0.95) and 101 recall points, as ``COCOeval.Params``
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.00, 101)


def detection_map(
    predictions: Sequence,
    ground_truth: Sequence,
    class_names: Sequence[str],
    max_det: int = 300,
    matches: bool = False,
) -> dict:
    """COCO-style mAP of ``predictions[i]`` (xyxy, scores, labels) against ``ground_truth[i]`` (Boxes).

    Returns ``{"mAP50", "mAP50_95", "per_class": {name: {"AP50", "AP50_95", "n_gt"}}, "n_images"}``; classes
    without ground truth have ``None`` APs and do not enter the means. ``matches=True`` adds ``"matches"``: what
    ``COCOeval.evaluate`` decided for every detection (image, class, score, matched/ignored at each IoU threshold)
    and the non-ignored ground-truth count of every image and class, as numpy arrays (:func:`map_from_matches`).
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
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(g.labels[j]) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": crowd,
                }
            )
        pxy = p.xyxy.double()
        for j in range(len(p)):
            x1, y1, x2, y2 = pxy[j].tolist()
            dets.append(
                {
                    "image_id": i + 1,
                    "category_id": int(p.labels[j]) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(p.scores[j]),
                }
            )
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": cats}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    n_gt = np.bincount([a["category_id"] - 1 for a in anns if not a["iscrowd"]], minlength=len(class_names))
    per_class = {n: {"AP50": None, "AP50_95": None, "n_gt": int(n_gt[k])} for k, n in enumerate(class_names)}
    if not dets or not anns:
        out = {"mAP50": 0.0, "mAP50_95": 0.0, "per_class": per_class, "n_images": len(images)}
        if matches:
            n_gt_img = np.zeros((len(images), len(class_names)), np.int32)
            for a in anns:
                n_gt_img[a["image_id"] - 1, a["category_id"] - 1] += 0 if a["iscrowd"] else 1
            e = np.zeros(0)
            out["matches"] = {
                "img": e.astype(np.int32),
                "cls": e.astype(np.int32),
                "score": e,
                "tp": e.astype(np.uint16),
                "ig": e.astype(np.uint16),
                "n_gt": n_gt_img,
            }
        return out
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
    out = {"mAP50": m50 or 0.0, "mAP50_95": m or 0.0, "per_class": per_class, "n_images": len(images)}
    if matches:
        out["matches"] = _collect_matches(ev, len(images), len(class_names))
    return out


def _collect_matches(ev, n_images: int, n_classes: int) -> dict:
    """The per-image decisions of ``ev.evaluate()`` (area "all", every category, images in order), in the order
    ``COCOeval.accumulate`` concatenates them: by class, then image, then the image's score order."""
    img, cls, score, tp, ig = [], [], [], [], []
    n_gt = np.zeros((n_images, n_classes), np.int32)
    n_area, bits = len(ev.params.areaRng), (1 << np.arange(len(ev.params.iouThrs))).astype(np.uint16)
    for k in range(n_classes):
        for i in range(n_images):
            e = ev.evalImgs[k * n_area * n_images + i]  # area index 0 = "all"
            if e is None:
                continue
            n_gt[i, k] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            d = len(e["dtScores"])
            if d == 0:
                continue
            m = np.asarray(e["dtMatches"])[:, :d] > 0
            g = np.asarray(e["dtIgnore"])[:, :d].astype(bool)
            img.append(np.full(d, i, np.int32))
            cls.append(np.full(d, k, np.int32))
            score.append(np.asarray(e["dtScores"], np.float64))
            tp.append(((m & ~g) * bits[:, None]).sum(0).astype(np.uint16))
            ig.append((g * bits[:, None]).sum(0).astype(np.uint16))
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return {
        "img": cat(img, np.int32),
        "cls": cat(cls, np.int32),
        "score": cat(score, np.float64),
        "tp": cat(tp, np.uint16),
        "ig": cat(ig, np.uint16),
        "n_gt": n_gt,
    }


def map_from_matches(m: dict, weights: np.ndarray | None = None, class_names: Sequence[str] | None = None) -> dict:
    """mAP50 / mAP50:95 (and per-class AP50) from :func:`detection_map`'s ``matches``, each image counted
    ``weights[i]`` times (``None``: once each, which reproduces ``detection_map``'s values).

    The accumulation is ``COCOeval.accumulate``'s (stable sort by score, cumulative TP/FP, precision made
    monotone, read at 101 recall points; a class without ground truth in the weighted set is left out), with an
    image's detections and ground truth counted ``weights[i]`` times. An image drawn twice adds its detections as
    one block of doubled weight where a copy of the image would add them as two copies: the precision envelope is
    the same except among detections of *equal* score from different images (ties), where any order is arbitrary.
    For many weightings of one set, build :class:`PreparedMatches` once and call :meth:`PreparedMatches.map`.
    """
    return PreparedMatches(m, class_names).map(weights)


class PreparedMatches:
    """:func:`detection_map`'s ``matches`` sorted once per class for repeated :meth:`map` calls (bootstrap)."""

    def __init__(self, m: dict, class_names: Sequence[str] | None = None) -> None:
        self.n_gt = np.asarray(m["n_gt"], np.float64)
        n_classes = self.n_gt.shape[1]
        self.names = list(class_names) if class_names else [str(k) for k in range(n_classes)]
        bits = (1 << np.arange(len(IOU_THRESHOLDS))).astype(np.uint16)
        # per class and IoU threshold: the image of each detection in score order and its TP / FP flags, cut after
        # the last TP (the FPs behind it add only points of lower precision at the same recall: no AP changes)
        self.classes: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
        for k in range(n_classes):
            sel = np.flatnonzero(m["cls"] == k)
            order = sel[np.argsort(-m["score"][sel], kind="mergesort")]
            per_t = []
            for b in bits:
                tp = (m["tp"][order] & b) > 0
                fp = ~tp & ((m["ig"][order] & b) == 0)
                end = int(np.flatnonzero(tp)[-1]) + 1 if tp.any() else 0
                per_t.append((m["img"][order][:end], tp[:end].astype(np.int32), fp[:end].astype(np.int32)))
            self.classes.append(per_t)

    def ap(self, weights: np.ndarray | None = None) -> np.ndarray:
        """``T×K`` AP (IoU threshold × class; NaN for a class without ground truth in the weighted set)."""
        w = np.ones(self.n_gt.shape[0]) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (self.n_gt.shape[0],):
            raise ValueError(f"weights must have shape ({self.n_gt.shape[0]},), got {w.shape}")
        return self.ap_batch(w[None])[0]

    def ap_batch(self, weights: np.ndarray, chunk: int = 64) -> np.ndarray:
        """``B×T×K`` AP for ``B`` weightings at once (``weights``: ``B×N`` image counts)."""
        W = np.asarray(weights, np.float64)
        if W.ndim != 2 or W.shape[1] != self.n_gt.shape[0]:
            raise ValueError(f"weights must have shape (B, {self.n_gt.shape[0]}), got {W.shape}")
        if W.shape[0] > chunk:
            return np.concatenate([self.ap_batch(W[i : i + chunk], chunk) for i in range(0, W.shape[0], chunk)])
        B, T = W.shape[0], len(IOU_THRESHOLDS)
        npig = W @ self.n_gt  # B×K
        out = np.full((B, T, len(self.classes)), np.nan)
        Wi = W.astype(np.int64)
        if not np.array_equal(Wi, W):
            raise ValueError("weights must be whole image counts")
        for k, per_t in enumerate(self.classes):
            rows = np.flatnonzero(npig[:, k] > 0)
            if rows.size == 0:
                continue
            out[rows, :, k] = 0.0  # no TP at a threshold (or no detection at all): AP 0
            n = npig[rows, k][:, None]
            # the first recall >= each recall point, found on integer TP counts: rc = tps / n >= R exactly when
            # tps >= c, c the least count with c / n >= R (the same float comparisons as COCOeval's searchsorted)
            c = np.ceil(RECALL_POINTS[None, :] * n)
            c = np.where((c - 1) / n >= RECALL_POINTS, c - 1, c)
            c = np.where(c / n < RECALL_POINTS, c + 1, c).astype(np.int64)  # b×R
            big = int(npig.max()) + 2
            off = big * np.arange(rows.size, dtype=np.int64)[:, None]
            for t, (img, tp, fp) in enumerate(per_t):
                if img.size == 0:
                    continue
                wd = Wi[rows][:, img]  # b×D, exact integer counts
                tpc, fpc = np.cumsum(wd * tp, axis=1), np.cumsum(wd * fp, axis=1)
                tps = tpc.astype(np.float64)
                pr = np.maximum.accumulate((tps / (fpc + tps + np.spacing(1)))[:, ::-1], axis=1)[:, ::-1]
                idx = np.searchsorted((tpc + off).ravel(), (c + off).ravel(), side="left").reshape(c.shape)
                idx -= img.size * np.arange(rows.size)[:, None]
                inside = idx < img.size
                q = np.where(inside, np.take_along_axis(pr, np.minimum(idx, img.size - 1), axis=1), 0.0)
                out[rows, t, k] = q.mean(1)
        return out

    def map(self, weights: np.ndarray | None = None) -> dict:
        ap = self.ap(weights)
        valid = ~np.isnan(ap[0])
        return {
            "mAP50": float(ap[0, valid].mean()) if valid.any() else 0.0,
            "mAP50_95": float(ap[:, valid].mean()) if valid.any() else 0.0,
            "per_class": {n: (float(ap[0, k]) if valid[k] else None) for k, n in enumerate(self.names)},
        }


_MATCH_DTYPES = {
    "img": np.int32,
    "cls": np.int32,
    "score": np.float64,
    "tp": np.uint16,
    "ig": np.uint16,
    "n_gt": np.int32,
}


def encode_matches(m: dict) -> dict:
    """``matches`` as JSON: each array little-endian, base64, with its shape (exact, unlike decimal floats)."""
    import base64

    return {
        k: {
            "shape": list(np.shape(m[k])),
            "b64": base64.b64encode(np.ascontiguousarray(m[k], dtype=np.dtype(t).newbyteorder("<")).tobytes()).decode(),
        }
        for k, t in _MATCH_DTYPES.items()
    }


def decode_matches(d: dict) -> dict:
    """Inverse of :func:`encode_matches`."""
    import base64

    return {
        k: np.frombuffer(base64.b64decode(d[k]["b64"]), dtype=np.dtype(t).newbyteorder("<"))
        .astype(t)
        .reshape(d[k]["shape"])
        for k, t in _MATCH_DTYPES.items()
    }


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
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

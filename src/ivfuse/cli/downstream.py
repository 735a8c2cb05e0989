"""``ivfuse downstream``: judge images with a detector (mAP) or a segmenter (mIoU), optionally fine-tuning first."""

from __future__ import annotations

import argparse

from ..errors import IvfuseError
from . import add_device, api_default
from ._tasknets import add_segmenter_options, load_detector, load_segmenter, split_names

HELP = "evaluate images with a detector (mAP) or segmenter (mIoU), optionally fine-tuning first"
TASKS = ("detect", "segment")


def default_model(task: str) -> str:
    """The API's default detector (``detect``) or segmenter (``segment``)."""
    if task == "detect":
        from ..tasks.detectors import DEFAULT_DETECTOR

        return DEFAULT_DETECTOR
    from ..tasks.segmenters import DEFAULT_SEGMENTER

    return DEFAULT_SEGMENTER


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..engine.finetune import finetune_detector
    from ..tasks.downstream import load_detection_set

    p.add_argument("task", choices=TASKS, help="detect: mAP of a detector; segment: mIoU of a segmenter")
    p.add_argument("--images", required=True, help="folder of images to judge (IR, visible or fused)")
    p.add_argument("--labels", action="append", help="YOLO/VOC label folder or COCO json; repeat to join sets (union)")
    p.add_argument("--masks", help="folder of class-id mask PNGs (segment)")
    p.add_argument(
        "--merge-iou",
        type=float,
        default=api_default(load_detection_set, "merge_iou"),
        help="with several --labels: a later box with the class of an earlier one and IoU above this is "
        "the same object and is dropped, the earlier kept (1 keeps every box)",
    )
    p.add_argument("--names", help="comma-separated dataset class names (default: classes.txt beside the labels)")
    p.add_argument(
        "--model",
        help=f"detector (ivfuse list detectors) or segmenter (ivfuse list segmenters); "
        f"default: {default_model('detect')} for detect, {default_model('segment')} for segment",
    )
    p.add_argument("--weights", help="weights file (default: the model's pretrained weights)")
    add_segmenter_options(p)
    p.add_argument("--reset-head", action="store_true", help="new detection head with the dataset's classes")
    p.add_argument("--train-images", help="fine-tune on these images first")
    p.add_argument("--train-labels", action="append", help="labels of the training images (default: --labels)")
    p.add_argument("--train-masks", help="masks of the training images (default: --masks)")
    for opt, key, kind, what in (
        ("--epochs", "epochs", int, "fine-tuning epochs"),
        ("--batch", "batch_size", int, "fine-tuning batch size"),
        ("--lr", "lr", float, "fine-tuning learning rate"),
        ("--imgsz", "imgsz", int, "detect: fine-tuning image size"),
    ):
        p.add_argument(opt, type=kind, default=api_default(finetune_detector, key), help=what)
    p.add_argument("--save", help="save the fine-tuned weights here")
    p.add_argument("--out", help="write the results JSON here")
    add_device(p)


def _weights_used(a: argparse.Namespace) -> str | None:
    """The weights file a downstream model was built from: ``--weights``, else the default file actually loaded
    (the registries' ``PRETRAINED``: YOLOv5n COCO, ESPNetv2 Cityscapes); ``None`` for a model trained from scratch
    (none of its own, or a segmenter asked for ``--num-classes``)."""
    from ..tasks import detectors, segmenters
    from ..weights import weights_path

    if a.weights:
        return str(a.weights)
    if a.task == "detect":
        default = detectors.PRETRAINED.get(a.model)
    else:
        default = None if getattr(a, "num_classes", None) else segmenters.PRETRAINED.get(a.model)
    return None if default is None else str(weights_path(default).resolve())


def _detect(a: argparse.Namespace) -> dict:
    from ..engine.finetune import finetune_detector
    from ..tasks.downstream import class_mapping, evaluate_detector, load_detection_set

    if not a.labels:
        raise IvfuseError("downstream detect needs --labels")
    if not 0 <= a.merge_iou <= 1:
        raise IvfuseError(f"--merge-iou {a.merge_iou}: must lie in [0, 1] (1 keeps every box of every --labels)")
    merge = a.merge_iou if a.merge_iou < 1 else None
    data = load_detection_set(a.images, a.labels, split_names(a.names), merge_iou=merge)
    det = load_detector(a, data.class_names)
    mapping = class_mapping(data.class_names, det.class_names)
    result: dict = {
        "model": a.model,
        "weights": _weights_used(a),
        "images": str(a.images),
        "labels": [str(x) for x in a.labels],
    }
    if len(a.labels) > 1:
        result["merge_iou"] = merge
    if a.train_images:
        train = load_detection_set(a.train_images, a.train_labels or a.labels, data.class_names, merge_iou=merge)
        hist = finetune_detector(det, train, mapping, a.epochs, a.batch, a.lr, a.imgsz, progress=not a.quiet)
        result["finetune"] = {"images": len(train), "epochs": a.epochs, "loss_per_epoch": hist}
        if a.save:
            det.save(a.save)
            result["finetune"]["saved"] = str(a.save)
    result.update(evaluate_detector(det, data, mapping, progress=not a.quiet))
    print(f"{a.model}: mAP50 {result['mAP50']:.4f}  mAP50:95 {result['mAP50_95']:.4f}  ({result['n_images']} images)")
    for n, v in result["per_class"].items():
        if v["AP50"] is not None:
            print(f"  {n:>12s}: AP50 {v['AP50']:.4f}  AP50:95 {v['AP50_95']:.4f}  ({v['n_gt']} boxes)")
    return result


def _segment(a: argparse.Namespace) -> dict:
    from ..engine.finetune import finetune_segmenter
    from ..tasks.downstream import evaluate_segmenter, load_segmentation_set

    if not a.masks:
        raise IvfuseError("downstream segment needs --masks")
    data = load_segmentation_set(a.images, a.masks)
    seg = load_segmenter(a).to(a.device)
    result = {"model": a.model, "weights": _weights_used(a), "images": str(a.images)}
    if a.train_images:
        train = load_segmentation_set(a.train_images, a.train_masks or a.masks)
        hist = finetune_segmenter(seg, train, a.epochs, a.batch, a.lr, progress=not a.quiet)
        result["finetune"] = {"images": len(train), "epochs": a.epochs, "loss_per_epoch": hist}
    result.update(evaluate_segmenter(seg, data, seg.num_classes, seg.class_names, progress=not a.quiet))
    print(f"{a.model}: mIoU {result['mIoU']:.4f}  pixel acc {result['pixel_acc']:.4f}  ({result['n_images']} images)")
    return result


def run(a: argparse.Namespace) -> int:
    import json

    from ..utils import atomic_write_text

    a.model = a.model or default_model(a.task)
    result = _detect(a) if a.task == "detect" else _segment(a)
    if a.out:
        atomic_write_text(a.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0

"""Detectors behind one interface, as fusion guides (losses and features on fused batches) and judges.

``create_detector(name, weights=None, ...)`` returns an ``nn.Module`` with:

* ``class_names`` — tuple of class names;
* ``predict(images, mode="detect"|"val")`` — list of :class:`~ivfuse.tasks.yolov5.Detections` in original pixels
  (``images``: list of ``C×H×W`` float tensors in [0, 1]);
* ``loss(images, boxes)`` — training loss on a ``B×C×H×W`` batch with a list of :class:`Boxes` (pixel xyxy),
  returning ``(total, parts dict)``; gradients flow into ``images``.

Registered: ``yolov5n/s/m/l/x`` (ivfuse's YOLOv5; default weights for ``yolov5n``: the COCO checkpoint from the
shared weights folder), ``fasterrcnn_resnet50_fpn`` and ``fasterrcnn_mobilenet_v3_large_fpn`` (torchvision;
``weights="coco"`` downloads torchvision's COCO checkpoint, a path loads a local state dict, ``None`` starts
from scratch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..data.labels import Boxes
from ..checkpoint import save_checkpoint
from ..errors import InputError
from ..registry import Registry
from ..weights import weights_path
from .yolov5 import COCO_NAMES, Detections, YOLOv5, YOLOv5Loss, yolov5_config

__all__ = [
    "DETECTORS",
    "DEFAULT_DETECTOR",
    "DETECT_CONF",
    "PRETRAINED",
    "create_detector",
    "list_detectors",
    "detector_optimizer",
    "DETECTOR_SGD",
    "DETECTOR_CLIP",
    "YOLOv5Detector",
    "FasterRCNNDetector",
]

DETECTORS: Registry = Registry("detector")
#: detector used when none is named (``ivfuse detect``, ``downstream detect``, the bench's judge, ``masks`` prompts)
DEFAULT_DETECTOR = "yolov5n"
#: confidence threshold of ``predict(mode="detect")`` (YOLOv5's detect.py), also the ``masks`` prompt threshold
DETECT_CONF = 0.25
#: detector name -> its default weights (:func:`ivfuse.weights.weights_path` name) where it has some
PRETRAINED = {"yolov5n": "yolov5n_coco"}


def transfer_matching(src: nn.Module, dst: nn.Module) -> int:
    """Copy every parameter/buffer of ``src`` whose name and shape match into ``dst``; returns how many."""
    own, theirs = dst.state_dict(), src.state_dict()
    match = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape}
    own.update(match)
    dst.load_state_dict(own)
    return len(match)


class YOLOv5Detector(nn.Module):
    """:class:`YOLOv5` with the detector interface. ``mode="val"`` uses val.py's settings for mAP."""

    def __init__(self, net: YOLOv5) -> None:
        super().__init__()
        self.net = net
        self.class_names = net.names
        self._loss = YOLOv5Loss(net)

    def predict(
        self,
        images,
        mode: str = "detect",
        conf: float | None = None,
        iou: float | None = None,
        classes: Sequence[int] | None = None,
    ) -> list[Detections]:
        was = self.training
        self.eval()
        try:
            if mode == "val":
                return self.net.predict(
                    images,
                    conf=0.001 if conf is None else conf,
                    iou=0.6 if iou is None else iou,
                    multi_label=True,
                    rect_val=True,
                    classes=classes,
                )
            return self.net.predict(
                images, conf=DETECT_CONF if conf is None else conf, iou=0.45 if iou is None else iou, classes=classes
            )
        finally:
            self.train(was)

    def loss(self, images: torch.Tensor, boxes: Sequence[Boxes]) -> tuple[torch.Tensor, dict]:
        targets = YOLOv5Loss.targets_from_boxes(boxes, images.shape[-2], images.shape[-1])
        preds = self.net.head(self.net.backbone(images))
        total, parts = self._loss(preds, targets)
        return total, {"box": float(parts[0]), "obj": float(parts[1]), "cls": float(parts[2])}

    def save(self, path: str | Path) -> Path:
        """Write ``{state_dict, yaml, names}`` (the format :meth:`YOLOv5.from_checkpoint` reads), atomically."""
        return save_checkpoint(
            path, {"state_dict": self.net.state_dict(), "yaml": self.net.cfg, "names": list(self.class_names)}
        )

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Backbone stages at strides 8/16/32 (MetaFusion's DFB1-3)."""
        return self.net.backbone(images)


def _yolo_factory(variant: str):
    def make(
        weights: str | Path | None = "default", num_classes: int | None = None, class_names: Sequence[str] | None = None
    ):
        if weights == "default":
            if f"yolov5{variant}" not in PRETRAINED:
                raise InputError(
                    f"yolov5{variant}: no default weights here; pass weights=FILE or weights=None (scratch)"
                )
            weights = weights_path(PRETRAINED[f"yolov5{variant}"])
        if weights is None:
            nc = num_classes or (len(class_names) if class_names else 80)
            names = class_names or (COCO_NAMES if nc == 80 else None)
            return YOLOv5Detector(YOLOv5(yolov5_config(variant, nc), names))
        net = YOLOv5.from_checkpoint(weights, variant=variant)
        if num_classes is not None and num_classes != len(net.names):
            raise InputError(f"{weights}: checkpoint has {len(net.names)} classes, asked for {num_classes}")
        return YOLOv5Detector(net)

    make.__doc__ = f"YOLOv5{variant} (ivfuse implementation, official v6.x weights)."
    return make


for _v in "nsmlx":
    DETECTORS.add(f"yolov5{_v}", _yolo_factory(_v))


class FasterRCNNDetector(nn.Module):
    """torchvision Faster R-CNN with the detector interface and TSJNet's regression-only loss."""

    def __init__(self, model: nn.Module, class_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.class_names = tuple(class_names)

    @staticmethod
    def _targets(boxes: Sequence[Boxes], device) -> list[dict]:
        # torchvision reserves label 0 for background
        return [{"boxes": b.xyxy.to(device), "labels": (b.labels + 1).to(device)} for b in boxes]

    def predict(
        self,
        images,
        mode: str = "detect",
        conf: float | None = None,
        iou: float | None = None,
        classes: Sequence[int] | None = None,
    ) -> list[Detections]:
        was = self.training
        self.model.eval()
        thr = (0.001 if mode == "val" else DETECT_CONF) if conf is None else conf
        if iou is not None:
            self.model.roi_heads.nms_thresh = iou
        try:
            with torch.inference_mode():
                dev = next(self.parameters()).device
                outs = self.model([im.to(dev).expand(3, -1, -1) if im.shape[0] == 1 else im.to(dev) for im in images])
        finally:
            self.train(was)
        res = []
        for o in outs:
            keep = o["scores"] > thr
            lab = o["labels"][keep] - 1
            d = Detections(o["boxes"][keep].cpu(), o["scores"][keep].cpu(), lab.cpu())
            if classes is not None:
                m = torch.isin(d.labels, torch.tensor(list(classes)))
                d = Detections(d.xyxy[m], d.scores[m], d.labels[m])
            res.append(d)
        return res

    def _losses(self, images: torch.Tensor, boxes: Sequence[Boxes]) -> dict[str, torch.Tensor]:
        was = self.model.training
        self.model.train()
        try:
            imgs = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
            return self.model(list(imgs), self._targets(boxes, images.device))
        finally:
            self.model.train(was)

    def loss(self, images: torch.Tensor, boxes: Sequence[Boxes]) -> tuple[torch.Tensor, dict]:
        d = self._losses(images, boxes)
        return sum(d.values()), {k: float(v.detach()) for k, v in d.items()}

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, {"state_dict": self.model.state_dict(), "names": list(self.class_names)})

    def regression_loss(self, images: torch.Tensor, boxes: Sequence[Boxes]) -> tuple[torch.Tensor, dict]:
        """TSJNet's detection loss: RPN box + RPN objectness + ROI box regression (no classification term)."""
        d = self._losses(images, boxes)
        parts = {k: d[k] for k in ("loss_rpn_box_reg", "loss_objectness", "loss_box_reg")}
        return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


def _frcnn_factory(arch: str):
    def make(
        weights: str | Path | None = None, num_classes: int | None = None, class_names: Sequence[str] | None = None
    ):
        import torchvision.models.detection as tvd

        builder = getattr(tvd, arch)
        if weights == "coco":  # torchvision's own download (URL + hash check)
            enum = {
                "fasterrcnn_resnet50_fpn": tvd.FasterRCNN_ResNet50_FPN_Weights,
                "fasterrcnn_mobilenet_v3_large_fpn": tvd.FasterRCNN_MobileNet_V3_Large_FPN_Weights,
            }[arch]
            model = builder(weights=enum.COCO_V1)
            names = enum.COCO_V1.meta["categories"][1:]  # keep "N/A" slots: labels index this list
            return FasterRCNNDetector(model, class_names or names)
        sd = None
        names = tuple(class_names) if class_names else None
        if weights is not None:
            p = Path(weights)
            if not p.is_file():
                raise InputError(f"{p}: Faster R-CNN weights file not found")
            ck = torch.load(p, map_location="cpu", weights_only=True)
            sd = ck.get("state_dict", ck)
            names = names or (tuple(ck["names"]) if "names" in ck else None)
            key = "roi_heads.box_predictor.cls_score.weight"
            num_classes = num_classes or (sd[key].shape[0] - 1 if key in sd else None)
        nc = num_classes or (len(names) if names else 80)
        names = names or (COCO_NAMES if nc == 80 else tuple(f"class{i}" for i in range(nc)))
        model = builder(weights=None, weights_backbone=None, num_classes=nc + 1)
        if sd is not None:
            try:
                res = model.load_state_dict(sd, strict=False)
            except RuntimeError as e:
                raise InputError(
                    f"{weights}: does not fit {arch} with {nc} classes ({str(e).splitlines()[1].strip()})"
                ) from None
            if res.missing_keys:
                raise InputError(f"{weights}: {len(res.missing_keys)} keys missing (e.g. {res.missing_keys[0]})")
        return FasterRCNNDetector(model, names)

    make.__doc__ = f"torchvision {arch} (weights: None = scratch, 'coco' = torchvision download, or a file)."
    return make


for _a in ("fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn"):
    DETECTORS.add(_a, _frcnn_factory(_a))


def create_detector(name: str, **kwargs) -> nn.Module:
    """Create a registered detector (``yolov5n`` ... ``fasterrcnn_resnet50_fpn``)."""
    return DETECTORS.get(name)(**kwargs)


def list_detectors() -> list[str]:
    return DETECTORS.names()


#: YOLOv5's fine-tuning optimiser (``hyp.scratch-low.yaml``): SGD, momentum 0.937, Nesterov, weight decay 5e-4 on
#: weights only (biases and normalisation parameters are not decayed). Every detector fine-tuning uses this.
DETECTOR_SGD = {"momentum": 0.937, "nesterov": True, "weight_decay": 5e-4}
#: Max gradient norm of every detector fine-tuning step (YOLOv5's train.py clips at 10).
DETECTOR_CLIP = 10.0


def detector_optimizer(detector: nn.Module, lr: float) -> torch.optim.SGD:
    """:data:`DETECTOR_SGD` over ``detector``'s trainable parameters, split into decay (ndim > 1) / no-decay groups."""
    params = [p for p in detector.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": DETECTOR_SGD["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=DETECTOR_SGD["momentum"],
        nesterov=DETECTOR_SGD["nesterov"],
    )

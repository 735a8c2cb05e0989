"""Downstream task networks (detectors, segmenters) as fusion guides and judges, and their metrics."""

from .detectors import (
    DEFAULT_DETECTOR,
    DETECT_CONF,
    DETECTORS,
    FasterRCNNDetector,
    YOLOv5Detector,
    create_detector,
    detector_optimizer,
    list_detectors,
)
from .evaluation import confusion_matrix, detection_map, segmentation_iou
from .segmenters import (
    CITYSCAPES_CLASSES,
    DEFAULT_SEGMENTER,
    SEGMENTERS,
    DeepLabV3Plus,
    ESPNetv2Seg,
    create_segmenter,
    list_segmenters,
    segmentation_loss,
)
from .yolov5 import Detections, YOLOv5, YOLOv5Loss, letterbox, non_max_suppression, yolov5_config

__all__ = [
    "DEFAULT_DETECTOR",
    "DETECT_CONF",
    "DETECTORS",
    "FasterRCNNDetector",
    "YOLOv5Detector",
    "create_detector",
    "detector_optimizer",
    "list_detectors",
    "confusion_matrix",
    "detection_map",
    "segmentation_iou",
    "CITYSCAPES_CLASSES",
    "DEFAULT_SEGMENTER",
    "SEGMENTERS",
    "DeepLabV3Plus",
    "ESPNetv2Seg",
    "create_segmenter",
    "list_segmenters",
    "segmentation_loss",
    "Detections",
    "YOLOv5",
    "YOLOv5Loss",
    "letterbox",
    "non_max_suppression",
    "yolov5_config",
]

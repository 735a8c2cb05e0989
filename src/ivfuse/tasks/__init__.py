"""Downstream task networks (detectors, segmenters) as fusion guides and judges, and their metrics."""

from .detectors import DETECTORS, FasterRCNNDetector, YOLOv5Detector, create_detector, list_detectors
from .evaluation import confusion_matrix, detection_map, segmentation_iou
from .segmenters import CITYSCAPES_CLASSES, DeepLabV3Plus, ESPNetv2Seg, segmentation_loss
from .yolov5 import Detections, YOLOv5, YOLOv5Loss, letterbox, non_max_suppression, yolov5_config

__all__ = [
    "DETECTORS", "FasterRCNNDetector", "YOLOv5Detector", "create_detector", "list_detectors",
    "confusion_matrix", "detection_map", "segmentation_iou",
    "CITYSCAPES_CLASSES", "DeepLabV3Plus", "ESPNetv2Seg", "segmentation_loss",
    "Detections", "YOLOv5", "YOLOv5Loss", "letterbox", "non_max_suppression", "yolov5_config",
]  # fmt: skip

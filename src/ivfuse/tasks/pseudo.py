"""Pseudo-labels from frozen task networks, for datasets without labels.

* **Segmentation** (TSJNet's ``seg.pseudo: espnetv2``, ``ivfuse masks --kind seg``, the bench's ``merged`` judge):
  :func:`pseudo_mask` labels a pair with the Cityscapes ESPNetv2 — on the visible image by day, on ½(IR + visible)
  by night — and maps the classes to MSRS' nine (:data:`MSRS_SEG_CLASSES`, :data:`CITYSCAPES_TO_MSRS`,
  :func:`map_to_msrs`); :class:`MergedSegmenter` merges a Cityscapes segmenter's logits into the same nine classes.
* **Objects** (OCCO, ``ivfuse masks``): :class:`MaskGenerator` — detector boxes → SAM masks per modality → the
  region class map of :mod:`ivfuse.regions`.

Moved here from ``ivfuse.engine.tsjnet`` and ``ivfuse.masks`` (both re-export them), so that the engine, ``masks``
and ``bench`` share them without importing each other (``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_ycbcr
from torch import nn

from ..errors import InputError, suggest
from ..regions import class_map
from .detectors import DEFAULT_DETECTOR, DETECT_CONF

__all__ = [
    "CITYSCAPES_TO_MSRS",
    "DEFAULT_CLASSES",
    "MSRS_SEG_CLASSES",
    "PSEUDO_SOURCES",
    "MaskGenerator",
    "MergedSegmenter",
    "map_to_msrs",
    "pseudo_mask",
]

PSEUDO_SOURCES = ("auto", "vis", "ir", "mean")

MSRS_SEG_CLASSES = ("unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump")
"""MSRS ``Segmentation_labels`` class ids 0..8."""

CITYSCAPES_TO_MSRS = {
    "car": "car",
    "truck": "car",
    "bus": "car",
    "train": "car",
    "person": "person",
    "rider": "person",
    "bicycle": "bike",
    "motorcycle": "bike",
}
"""Cityscapes class -> MSRS class; every other Cityscapes class (road, sidewalk, building, wall, fence, pole, traffic
light/sign, vegetation, terrain, sky, background) -> ``unlabelled`` (0). MSRS' curve, car_stop, guardrail,
color_cone and bump have no Cityscapes counterpart and never occur in the pseudo-masks (Cityscapes' *fence* is not
a guardrail and its *sidewalk* not a curb, so they are not mapped)."""


def _lut(src_names, dst_names=MSRS_SEG_CLASSES, table=None) -> torch.Tensor:
    table = CITYSCAPES_TO_MSRS if table is None else table
    idx = {n: i for i, n in enumerate(dst_names)}
    return torch.tensor([idx[table[n]] if n in table else 0 for n in src_names], dtype=torch.int64)


def map_to_msrs(labels: torch.Tensor, src_names=None) -> torch.Tensor:
    """Cityscapes class ids (any shape, int) -> MSRS class ids (uint8), by :data:`CITYSCAPES_TO_MSRS`."""
    from .segmenters import CITYSCAPES_CLASSES

    lut = _lut(src_names or CITYSCAPES_CLASSES).to(labels.device)
    return lut[labels.long()].to(torch.uint8)


class MergedSegmenter(nn.Module):
    """A Cityscapes segmenter whose logits are merged into MSRS' classes: ``log Σ_{k→c} softmax(z)_k`` per MSRS
    class ``c`` (classes without a source get a large negative log-probability). The cross-entropy of these
    log-probabilities is the cross-entropy of the merged class probabilities."""

    def __init__(self, segmenter: nn.Module, src_names=None, dst_names=MSRS_SEG_CLASSES) -> None:
        super().__init__()
        from .segmenters import CITYSCAPES_CLASSES

        self.segmenter = segmenter
        names = src_names or getattr(segmenter, "class_names", None) or CITYSCAPES_CLASSES
        lut = _lut(names, dst_names)
        onehot = F.one_hot(lut, len(dst_names)).T.float()  # C_dst × K_src
        self.register_buffer("group", onehot, persistent=False)
        self.class_names = tuple(dst_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = self.segmenter(x).float().log_softmax(1)  # B×K×H×W
        m = logp.amax(1, keepdim=True)
        p = (logp - m).exp()
        merged = torch.einsum("ck,bkhw->bchw", self.group, p)
        return merged.clamp_min(1e-12).log() + m


@torch.no_grad()
def pseudo_mask(
    ir: torch.Tensor, vis: torch.Tensor, segmenter: nn.Module, source: str = "auto", night: float = 0.2
) -> torch.Tensor:
    """MSRS class-id mask (``H×W`` uint8) of one pair (``ir`` 1×H×W, ``vis`` 3×H×W or 1×H×W in [0, 1]) from a
    Cityscapes segmenter (``predict`` at its training resolution, argmax, :func:`map_to_msrs`).

    ``source``: ``vis`` (visible image), ``ir`` (infrared replicated to RGB), ``mean`` (½(IR + visible)), or
    ``auto``: ``vis`` when the mean visible luminance is >= ``night``, else ``mean`` (MSRS night frames are nearly
    black in the visible image; the infrared image alone looks nothing like Cityscapes).
    """
    if source not in PSEUDO_SOURCES:
        raise suggest(source, PSEUDO_SOURCES, "pseudo-mask source")
    v = vis.expand(3, -1, -1) if vis.shape[0] == 1 else vis
    i3 = ir.expand(3, -1, -1)
    if source == "auto":
        y = rgb_to_ycbcr(v[None])[0, 0]
        source = "vis" if float(y.mean()) >= night else "mean"
    x = {"vis": v, "ir": i3, "mean": (v + i3) / 2}[source]
    dev = next(segmenter.parameters()).device
    lab = segmenter.predict(x[None].to(dev))[0]
    return map_to_msrs(lab).cpu()


#: COCO classes used as prompts (the paper's prompt asks for pedestrians or cars)
DEFAULT_CLASSES = ("person", "bicycle", "car", "motorcycle", "bus", "truck")


class MaskGenerator:
    """Detector boxes → SAM masks for each modality of a pair.

    Args:
        detector: ivfuse detector name (``ivfuse.tasks.detectors``; COCO ``yolov5n`` by default).
        detector_weights: its weights file (default: the detector's default).
        sam_weights: MobileSAM (default, shared weights) or official SAM ViT-B/L/H checkpoint.
        conf: detector confidence threshold.
        classes: detector class names used as prompts (``None`` = all).
        device: torch device.
    """

    def __init__(
        self,
        detector: str = DEFAULT_DETECTOR,
        detector_weights: str | None = None,
        sam_weights: str | None = None,
        conf: float = DETECT_CONF,
        classes: Sequence[str] | None = DEFAULT_CLASSES,
        device: str = "cpu",
    ) -> None:
        from .detectors import create_detector
        from .sam import load_sam

        if not detector_weights and detector.startswith("fasterrcnn"):
            raise InputError(
                f"prompt detector '{detector}' has no default weights here; pass --detector-weights FILE (or 'coco')"
            )
        kw = {"weights": detector_weights} if detector_weights else {}
        self.detector = create_detector(detector, **kw).to(device).eval()
        self.sam = load_sam(sam_weights, device)
        self.detector_name, self.conf, self.device = detector, float(conf), device
        names = list(self.detector.class_names)
        if classes:
            unknown = [c for c in classes if c not in names]
            if unknown:
                raise InputError(f"detector '{detector}' has no class(es) {unknown}")
            self.class_ids = [names.index(c) for c in classes]
        else:
            self.class_ids = None
        self.sam_name = Path(str(sam_weights)).name if sam_weights else "mobile_sam.pt"

    def boxes(self, image: torch.Tensor):
        """Detections (pixel xyxy, scores, labels) of one ``C×H×W`` image, restricted to the prompt classes."""
        x = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        d = self.detector.predict([x.to(self.device)], conf=self.conf)[0]
        labels = d.labels.cpu()
        keep = (
            torch.ones(len(d), dtype=torch.bool)
            if self.class_ids is None
            else torch.isin(labels, torch.tensor(self.class_ids))
        )
        return d.xyxy.cpu()[keep], d.scores.cpu()[keep], d.labels.cpu()[keep]

    def masks_for_boxes(self, image: torch.Tensor, boxes: torch.Tensor):
        """SAM masks (``N×H×W`` bool) and predicted IoUs for given pixel xyxy boxes (e.g. Grounding-DINO's)."""
        pred = self.sam.segment(image, boxes)
        return pred.masks, pred.iou

    def objects(self, image: torch.Tensor, modality: str) -> tuple[torch.Tensor, list[dict]]:
        """Union object mask ``H×W`` bool and the instance records of one modality."""
        xyxy, scores, labels = self.boxes(image)
        union = torch.zeros(image.shape[-2:], dtype=torch.bool)
        inst = []
        if len(xyxy):
            masks, iou = self.masks_for_boxes(image, xyxy)
            union = masks.any(0)
            for b, s, c, m, q in zip(xyxy, scores, labels, masks, iou):
                inst.append(
                    {
                        "modality": modality,
                        "class": self.detector.class_names[int(c)],
                        "score": round(float(s), 4),
                        "box": [round(float(v), 1) for v in b],
                        "mask_area": int(m.sum()),
                        "sam_pred_iou": round(float(q), 4),
                    }
                )
        return union, inst

    def __call__(self, ir: torch.Tensor, vis: torch.Tensor) -> dict:
        """``ir`` ``1×H×W``, ``vis`` ``C×H×W`` in [0, 1] → ``{"m_ir", "m_vis", "class_map", "instances"}``."""
        if ir.shape[-2:] != vis.shape[-2:]:
            raise InputError(f"infrared {tuple(ir.shape[-2:])} and visible {tuple(vis.shape[-2:])} differ in size")
        m_ir, inst_ir = self.objects(ir, "ir")
        m_vis, inst_vis = self.objects(vis, "vis")
        return {"m_ir": m_ir, "m_vis": m_vis, "class_map": class_map(m_ir, m_vis), "instances": inst_ir + inst_vis}

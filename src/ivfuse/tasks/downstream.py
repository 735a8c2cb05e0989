"""The downstream-evaluation protocol: judge (fused) images by what a detector or segmenter makes of them.

Detection: images of a folder are matched by file stem to YOLO txt / VOC xml label files (or one COCO json);
several label folders are joined (e.g. MSRS infrared + visible = the "union" ground truth). Dataset classes are
mapped to the detector's classes by name (MSRS person/bicycle/car -> COCO ids 0/1/2); predictions of other
classes are discarded. Optionally the detector is first fine-tuned on training images, as the papers do
(:func:`ivfuse.engine.finetune.finetune_detector`, :func:`~ivfuse.engine.finetune.finetune_segmenter`).

Segmentation: images matched to class-id mask PNGs; per-class IoU / mIoU from the accumulated confusion matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.images import read_vis
from ..data.labels import UNION_IOU, Boxes, merge_boxes, read_coco, read_mask, read_voc, read_yolo
from ..data.pairing import list_images
from ..errors import InputError, warn
from .evaluation import confusion_matrix, detection_map, segmentation_iou

__all__ = [
    "DetectionSet",
    "load_detection_set",
    "class_mapping",
    "evaluate_detector",
    "SegmentationSet",
    "load_segmentation_set",
    "evaluate_segmenter",
    "letterbox_batch",
]


class DetectionSet:
    """Image paths with their ground-truth boxes (pixel xyxy, dataset class ids) and class names."""

    def __init__(self, names: list[str], paths: list[Path], boxes: list[Boxes], class_names: tuple[str, ...]):
        self.names, self.paths, self.boxes, self.class_names = names, paths, boxes, class_names

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int]) -> DetectionSet:
        return DetectionSet(
            [self.names[i] for i in idx], [self.paths[i] for i in idx], [self.boxes[i] for i in idx], self.class_names
        )


def _read_class_names(labels: Path) -> tuple[str, ...] | None:
    for cand in (labels / "classes.txt", labels.parent / "classes.txt"):
        if cand.is_file():
            rows = [ln.split() for ln in cand.read_text().splitlines() if ln.strip()]
            # "0 person" or "person" per line
            return tuple(" ".join(r[1:]) if len(r) > 1 and r[0].isdigit() else " ".join(r) for r in rows)
    return None


def _names(keys: Sequence[str], limit: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _label_stems(source: Path, coco: dict | None) -> set[str]:
    """Stems of the per-image label files of a YOLO/VOC folder (``classes.txt`` excluded), or of a COCO file's
    images."""
    if coco is not None:
        return set(coco)
    return {
        f.stem
        for f in source.iterdir()
        if f.is_file()
        and f.suffix.lower() in (".txt", ".xml")
        and f.name != "classes.txt"
        and not f.name.startswith(".")
    }


def _check_label_match(images: str | Path, source: Path, n_images: int, stems: set[str], keys: set[str]) -> None:
    """Error when no label file of ``source`` names an image; warn about images without labels and vice versa."""
    if not stems & keys:
        if not stems:
            subs = sorted(d.name for d in source.iterdir() if d.is_dir()) if source.is_dir() else []
            hint = f" (it has the sub-folders {', '.join(subs)}: pass one of them)" if subs else ""
            raise InputError(f"{source}: no label files (.txt/.xml) found{hint}")
        raise InputError(
            f"{source}: none of its {len(stems)} label files matches an image in {images} (matched by file stem; "
            f"labels e.g. {_names(stems, 3)}, images e.g. {_names(keys, 3)})"
        )
    no_label, no_image = keys - stems, stems - keys
    if no_label:
        warn(
            f"{source}: {len(no_label)} of {n_images} images have no label file and count as images without "
            f"objects: {_names(no_label)}"
        )
    if no_image:
        warn(f"{source}: {len(no_image)} of {len(stems)} label files have no image in {images}: {_names(no_image)}")


def load_detection_set(
    images: str | Path,
    labels: str | Path | Sequence[str | Path],
    class_names: Sequence[str] | None = None,
    *,
    merge_iou: float | None = UNION_IOU,
) -> DetectionSet:
    """Read a folder of images and one or more label sources (YOLO dirs, VOC dirs, or COCO json files).

    Images and label files are matched by file stem. A label source none of whose files names an image is an
    :class:`InputError` (a wrong folder would otherwise score mAP 0); images without a label file (counted as
    images without objects) and label files without an image are reported as :class:`IvfuseWarning`.

    Several sources are joined in order: a box of a later source with the class of a box already present and an
    IoU above ``merge_iou`` is the same object annotated twice and is dropped, the earlier box kept
    (:func:`~ivfuse.data.labels.merge_boxes`; ``None`` keeps every box).
    """
    from PIL import Image

    imgs = list_images(images)
    if not imgs:
        raise InputError(f"{images}: no images found")
    sources = [Path(labels)] if isinstance(labels, (str, Path)) else [Path(x) for x in labels]
    for s in sources:
        if not s.exists():
            raise InputError(f"{s}: label folder/file not found")
        if s.is_file() and s.suffix.lower() != ".json":
            raise InputError(f"{s}: labels must be a folder of YOLO .txt / VOC .xml files or a COCO .json file")
    names = tuple(class_names) if class_names else None
    if names is None:
        for s in sources:
            names = names or (_read_class_names(s) if s.is_dir() else None)
    coco = {}
    for s in sources:
        if s.is_file():
            boxes_by, cn = read_coco(s)
            coco[s] = boxes_by
            names = names or cn
    for s in sources:
        _check_label_match(images, s, len(imgs), _label_stems(s, coco.get(s)), set(imgs))
    if names is None:
        raise InputError(f"{sources[0]}: no classes.txt beside the labels; pass the class names (--names a,b,c)")
    keys = sorted(imgs)
    all_boxes = []
    for k in keys:
        with Image.open(imgs[k]) as im:
            w, h = im.size
        b = None
        for s in sources:
            if s in coco:
                part = coco[s].get(k, Boxes.empty(names))
                part = Boxes(part.xyxy, part.labels, names, part.difficult)
            elif (s / f"{k}.xml").is_file():
                part = read_voc(s / f"{k}.xml", names)
            else:
                part = read_yolo(s / f"{k}.txt", w, h, names)
            b = part if b is None else merge_boxes(b, part, merge_iou)
        all_boxes.append(b)
    return DetectionSet(keys, [imgs[k] for k in keys], all_boxes, names)


def class_mapping(dataset_names: Sequence[str], detector_names: Sequence[str]) -> dict[int, int]:
    """Dataset class id -> detector class id by (case-insensitive) name; unknown names are an error."""
    lower = {n.lower(): i for i, n in enumerate(detector_names)}
    aliases = {"people": "person", "bike": "bicycle", "motorbike": "motorcycle"}
    out, missing = {}, []
    for i, n in enumerate(dataset_names):
        key = n.lower()
        key = key if key in lower else aliases.get(key, key)
        if key in lower:
            out[i] = lower[key]
        else:
            missing.append(n)
    if missing:
        raise InputError(
            f"dataset classes {missing} are not detector classes; fine-tune with --reset-head or rename them"
        )
    return out


def evaluate_detector(
    detector, data: DetectionSet, mapping: dict[int, int] | None = None, progress: bool = True, matches: bool = False
) -> dict:
    """mAP of ``detector`` on ``data`` (val.py settings), in the dataset's class space (``matches``: also the
    per-image matches, :func:`~ivfuse.tasks.evaluation.detection_map`)."""
    from tqdm.auto import tqdm

    mapping = mapping if mapping is not None else class_mapping(data.class_names, detector.class_names)
    inverse = {v: k for k, v in mapping.items()}
    preds = []
    for p in tqdm(data.paths, desc="detect", unit="img", disable=not progress):
        d = detector.predict([read_vis(p)], mode="val", classes=sorted(inverse))[0]
        lab = torch.tensor([inverse[int(c)] for c in d.labels.tolist()], dtype=torch.int64)
        preds.append(type(d)(d.xyxy, d.scores, lab))
    return detection_map(preds, data.boxes, data.class_names, matches=matches)


def letterbox_batch(images: list[torch.Tensor], boxes: list[Boxes], imgsz: int = 640, stride: int = 32):
    """Resize each image so its long side is ``imgsz`` and pad (grey 114) to a common stride multiple; boxes move
    along."""
    scaled, sboxes = [], []
    for im, b in zip(images, boxes):
        h, w = im.shape[-2:]
        r = imgsz / max(h, w)
        if r != 1:
            im = F.interpolate(im[None], size=(round(h * r), round(w * r)), mode="bilinear", align_corners=False)[0]
        scaled.append(im)
        sboxes.append(Boxes(b.xyxy * r, b.labels, b.names))
    H = max(math.ceil(im.shape[-2] / stride) * stride for im in scaled)
    W = max(math.ceil(im.shape[-1] / stride) * stride for im in scaled)
    c = max(im.shape[0] for im in scaled)
    batch = torch.full((len(scaled), c, H, W), 114 / 255)
    for i, im in enumerate(scaled):
        batch[i, :, : im.shape[-2], : im.shape[-1]] = im.expand(c, -1, -1)
    return batch, sboxes


# ------------------------------------------------------------------------------------------------ segmentation
class SegmentationSet:
    def __init__(self, names: list[str], images: list[Path], masks: list[Path]):
        self.names, self.images, self.masks = names, images, masks

    def __len__(self) -> int:
        return len(self.images)


def load_segmentation_set(images: str | Path, masks: str | Path) -> SegmentationSet:
    """Images matched by file stem to class-id mask images. Every image needs a mask (an error names the ones
    without); masks without an image are reported as :class:`IvfuseWarning`; no match at all is an error."""
    imgs, ms = list_images(images), list_images(masks)
    if not imgs:
        raise InputError(f"{images}: no images found")
    if not set(imgs) & set(ms):
        raise InputError(
            f"{masks}: none of its {len(ms)} mask images matches an image in {images} (matched by file "
            f"stem; masks e.g. {_names(ms, 3) or 'none'}, images e.g. {_names(imgs, 3)})"
        )
    missing = sorted(set(imgs) - set(ms))
    if missing:
        raise InputError(f"{masks}: no mask for {len(missing)} of {len(imgs)} images in {images}: {_names(missing, 8)}")
    extra = set(ms) - set(imgs)
    if extra:
        warn(f"{masks}: {len(extra)} of {len(ms)} masks have no image in {images}: {_names(extra)}")
    keys = sorted(imgs)
    return SegmentationSet(keys, [imgs[k] for k in keys], [ms[k] for k in keys])


def evaluate_segmenter(
    segmenter,
    data: SegmentationSet,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    progress: bool = True,
) -> dict:
    from tqdm.auto import tqdm

    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    segmenter.eval()
    dev = next(segmenter.parameters()).device
    for ip, mp in tqdm(list(zip(data.images, data.masks)), desc="segment", disable=not progress):
        x, m = read_vis(ip)[None], read_mask(mp)
        if x.shape[-2:] != m.shape:
            raise InputError(f"{mp}: mask is {m.shape[1]}x{m.shape[0]} but {ip.name} is {x.shape[-1]}x{x.shape[-2]}")
        with torch.inference_mode():
            pred = segmenter(x.to(dev)).argmax(1)[0].cpu()
        conf += confusion_matrix(pred, m, num_classes, ignore_index)
    out = segmentation_iou(conf, class_names)
    out["n_images"] = len(data)
    return out

"""The downstream-evaluation protocol: judge (fused) images by what a detector or segmenter makes of them.

Detection: images of a folder are matched by file stem to YOLO txt / VOC xml label files (or one COCO json);
several label folders are joined (e.g. MSRS infrared + visible = the "union" ground truth). Dataset classes are
mapped to the detector's classes by name (MSRS person/bicycle/car -> COCO ids 0/1/2); predictions of other
classes are discarded. Optionally the detector is first fine-tuned on training images, as the papers do.

Segmentation: images matched to class-id mask PNGs; per-class IoU / mIoU from the accumulated confusion matrix.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.images import read_vis
from ..data.labels import Boxes, read_coco, read_mask, read_voc, read_yolo
from ..data.pairing import list_images
from ..errors import InputError
from .evaluation import confusion_matrix, detection_map, segmentation_iou

__all__ = [
    "DetectionSet", "load_detection_set", "class_mapping", "evaluate_detector", "finetune_detector",
    "SegmentationSet", "load_segmentation_set", "evaluate_segmenter", "finetune_segmenter", "letterbox_batch",
]  # fmt: skip


class DetectionSet:
    """Image paths with their ground-truth boxes (pixel xyxy, dataset class ids) and class names."""

    def __init__(self, names: list[str], paths: list[Path], boxes: list[Boxes], class_names: tuple[str, ...]):
        self.names, self.paths, self.boxes, self.class_names = names, paths, boxes, class_names

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int]) -> DetectionSet:
        return DetectionSet([self.names[i] for i in idx], [self.paths[i] for i in idx], [self.boxes[i] for i in idx], self.class_names)


def _read_class_names(labels: Path) -> tuple[str, ...] | None:
    for cand in (labels / "classes.txt", labels.parent / "classes.txt"):
        if cand.is_file():
            rows = [ln.split() for ln in cand.read_text().splitlines() if ln.strip()]
            # "0 person" or "person" per line
            return tuple(" ".join(r[1:]) if len(r) > 1 and r[0].isdigit() else " ".join(r) for r in rows)
    return None


def load_detection_set(
    images: str | Path, labels: str | Path | Sequence[str | Path], class_names: Sequence[str] | None = None
) -> DetectionSet:
    """Read a folder of images and one or more label sources (YOLO dirs, VOC dirs, or COCO json files)."""
    from PIL import Image

    imgs = list_images(images)
    if not imgs:
        raise InputError(f"{images}: no images found")
    sources = [Path(labels)] if isinstance(labels, (str, Path)) else [Path(x) for x in labels]
    for s in sources:
        if not s.exists():
            raise InputError(f"{s}: label folder/file not found")
    names = tuple(class_names) if class_names else None
    if names is None:
        for s in sources:
            names = names or (_read_class_names(s) if s.is_dir() else None)
    coco = {}
    for s in sources:
        if s.is_file() and s.suffix == ".json":
            boxes_by, cn = read_coco(s)
            coco[s] = boxes_by
            names = names or cn
    if names is None:
        raise InputError(f"{sources[0]}: no classes.txt beside the labels; pass the class names (--names a,b,c)")
    keys = sorted(imgs)
    all_boxes = []
    for k in keys:
        with Image.open(imgs[k]) as im:
            w, h = im.size
        b = Boxes.empty(names)
        for s in sources:
            if s in coco:
                part = coco[s].get(k, Boxes.empty(names))
                part = Boxes(part.xyxy, part.labels, names)
            elif (s / f"{k}.xml").is_file():
                part = read_voc(s / f"{k}.xml", names)
            else:
                part = read_yolo(s / f"{k}.txt", w, h, names)
            b = b.union(part)
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
        raise InputError(f"dataset classes {missing} are not detector classes; fine-tune with --reset-head or rename them")
    return out


def evaluate_detector(detector, data: DetectionSet, mapping: dict[int, int] | None = None, progress: bool = True) -> dict:
    """mAP of ``detector`` on ``data`` (val.py settings), in the dataset's class space."""
    from tqdm.auto import tqdm

    mapping = mapping if mapping is not None else class_mapping(data.class_names, detector.class_names)
    inverse = {v: k for k, v in mapping.items()}
    preds = []
    for p in tqdm(data.paths, desc="detect", unit="img", disable=not progress):
        d = detector.predict([read_vis(p)], mode="val", classes=sorted(inverse))[0]
        lab = torch.tensor([inverse[int(c)] for c in d.labels.tolist()], dtype=torch.int64)
        preds.append(type(d)(d.xyxy, d.scores, lab))
    return detection_map(preds, data.boxes, data.class_names)


def letterbox_batch(images: list[torch.Tensor], boxes: list[Boxes], imgsz: int = 640, stride: int = 32):
    """Resize each image so its long side is ``imgsz`` and pad (grey 114) to a common stride multiple; boxes move along."""
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


def finetune_detector(
    detector,
    data: DetectionSet,
    mapping: dict[int, int] | None = None,
    epochs: int = 5,
    batch_size: int = 4,
    lr: float = 0.002,
    imgsz: int = 640,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[dict], None] | None = None,
) -> list[float]:
    """Fine-tune ``detector`` on ``data`` (SGD, momentum 0.937, weight decay 5e-4, horizontal flips, linear
    warm-up over the first epoch). Returns the mean loss of each epoch."""
    from tqdm.auto import tqdm

    mapping = mapping if mapping is not None else class_mapping(data.class_names, detector.class_names)
    names = detector.class_names
    imgs = [read_vis(p) for p in data.paths]
    gts = [b.remap(mapping, names) for b in data.boxes]
    decay = [p for n, p in detector.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in detector.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=0.937, nesterov=True)  # fmt: skip
    rng = random.Random(seed)
    n_batches = math.ceil(len(imgs) / batch_size)
    history = []
    detector.train()
    dev = next(detector.parameters()).device
    step = 0
    for ep in range(epochs):
        order = list(range(len(imgs)))
        rng.shuffle(order)
        tot = 0.0
        bar = tqdm(range(n_batches), desc=f"finetune {ep + 1}/{epochs}", disable=not progress)
        for bi in bar:
            idx = order[bi * batch_size : (bi + 1) * batch_size]
            ims, bxs = [], []
            for i in idx:
                im, b = imgs[i], gts[i]
                if rng.random() < 0.5:
                    w = im.shape[-1]
                    im = im.flip(-1)
                    b = Boxes(torch.stack([w - b.xyxy[:, 2], b.xyxy[:, 1], w - b.xyxy[:, 0], b.xyxy[:, 3]], 1), b.labels, b.names)
                ims.append(im)
                bxs.append(b)
            batch, bxs = letterbox_batch(ims, bxs, imgsz)
            batch = batch.to(dev)
            warm = min(1.0, (step + 1) / max(1, n_batches))
            for g in opt.param_groups:
                g["lr"] = lr * warm
            loss, parts = detector.loss(batch, bxs)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(detector.parameters(), 10.0)
            opt.step()
            step += 1
            tot += float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        history.append(tot / n_batches)
        if log:
            log({"epoch": ep + 1, "loss": history[-1]})
    detector.eval()
    return history


# ------------------------------------------------------------------------------------------------ segmentation
class SegmentationSet:
    def __init__(self, names: list[str], images: list[Path], masks: list[Path]):
        self.names, self.images, self.masks = names, images, masks

    def __len__(self) -> int:
        return len(self.images)


def load_segmentation_set(images: str | Path, masks: str | Path) -> SegmentationSet:
    imgs, ms = list_images(images), list_images(masks)
    missing = sorted(set(imgs) - set(ms))
    if missing:
        raise InputError(f"{masks}: no mask for {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    keys = sorted(imgs)
    return SegmentationSet(keys, [imgs[k] for k in keys], [ms[k] for k in keys])


def evaluate_segmenter(segmenter, data: SegmentationSet, num_classes: int, class_names: Sequence[str] | None = None,
                       ignore_index: int = 255, progress: bool = True) -> dict:  # fmt: skip
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


def finetune_segmenter(segmenter, data: SegmentationSet, epochs: int = 5, batch_size: int = 2, lr: float = 1e-3,
                       crop: int | None = 256, ignore_index: int = 255, seed: int = 0, progress: bool = True) -> list[float]:  # fmt: skip
    """Cross-entropy training on class-id masks (Adam, random crops and flips). Returns epoch mean losses."""
    from tqdm.auto import tqdm

    from ..data.transforms import train_transform
    from .segmenters import segmentation_loss

    torch.manual_seed(seed)
    tf = train_transform(crop=crop, flip=True) if crop else train_transform(crop=None, flip=True)
    samples = [{"ir": read_vis(i)[:1], "vis": read_vis(i), "mask": read_mask(m), "boxes": None} for i, m in zip(data.images, data.masks)]
    opt = torch.optim.Adam([p for p in segmenter.parameters() if p.requires_grad], lr=lr)
    segmenter.train()
    dev = next(segmenter.parameters()).device
    hist = []
    for ep in range(epochs):
        perm = torch.randperm(len(samples)).tolist()
        tot, nb = 0.0, 0
        for b in tqdm(range(0, len(perm), batch_size), desc=f"seg {ep + 1}/{epochs}", disable=not progress):
            batch = [tf(samples[i]) for i in perm[b : b + batch_size]]
            x = torch.stack([s["vis"] for s in batch]).to(dev)
            y = torch.stack([s["mask"] for s in batch]).to(dev)
            loss = segmentation_loss(segmenter(x), y, ignore_index)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach())
            nb += 1
        hist.append(tot / max(nb, 1))
    segmenter.eval()
    return hist

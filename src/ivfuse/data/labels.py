"""Detection boxes and segmentation masks: one box structure for YOLO txt, Pascal VOC XML and COCO JSON.

:class:`Boxes` holds pixel ``xyxy`` boxes (float32 N×4), integer class ids (int64 N) and the tuple of
class names the ids index into. Readers raise :class:`~ivfuse.errors.InputError` naming the file and the
line/element that is wrong.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

__all__ = ["Boxes", "merge_boxes", "read_yolo", "read_voc", "read_coco", "write_yolo", "read_mask", "UNION_IOU"]

#: default IoU above which a same-class box of a second annotation set duplicates one of the first (see
#: :func:`merge_boxes`); the PASCAL/COCO "same object" threshold
UNION_IOU = 0.5


@dataclass
class Boxes:
    """Boxes of one image.

    Attributes:
        xyxy: ``N×4`` float32 tensor, pixel coordinates ``x1, y1, x2, y2`` (x2/y2 exclusive edges).
        labels: ``N`` int64 tensor of class ids into ``names``.
        names: class names, ``names[id]``.
        difficult: optional ``N`` bool tensor (VOC ``difficult`` / crowd flags), ignored in mAP if set.
    """

    xyxy: torch.Tensor
    labels: torch.Tensor
    names: tuple[str, ...] = ()
    difficult: torch.Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        self.xyxy = torch.as_tensor(self.xyxy, dtype=torch.float32).reshape(-1, 4)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        if self.xyxy.shape[0] != self.labels.shape[0]:
            raise ValueError(f"{self.xyxy.shape[0]} boxes but {self.labels.shape[0]} labels")
        self.names = tuple(self.names)

    @classmethod
    def empty(cls, names: Sequence[str] = ()) -> Boxes:
        return cls(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), tuple(names))

    def __len__(self) -> int:
        return int(self.labels.numel())

    def union(self, other: Boxes) -> Boxes:
        """Concatenate two box sets of the same class list (e.g. infrared + visible annotations)."""
        if self.names and other.names and self.names != other.names:
            raise ValueError("cannot join boxes with different class lists")
        difficult = None
        if self.difficult is not None or other.difficult is not None:
            difficult = torch.cat([b.difficult if b.difficult is not None else torch.zeros(len(b), dtype=torch.bool)
                                   for b in (self, other)])  # fmt: skip
        return Boxes(
            torch.cat([self.xyxy, other.xyxy]),
            torch.cat([self.labels, other.labels]),
            self.names or other.names,
            difficult,
        )

    def merge(self, other: Boxes, iou: float | None = UNION_IOU) -> Boxes:
        """Union with duplicates removed: see :func:`merge_boxes`."""
        return merge_boxes(self, other, iou)

    def remap(self, mapping: dict[int, int], names: Sequence[str]) -> Boxes:
        """Map class ids (e.g. dataset ids -> detector ids); boxes of unmapped classes are dropped."""
        keep = torch.tensor([int(c) in mapping for c in self.labels.tolist()], dtype=torch.bool)
        new = torch.tensor([mapping[int(c)] for c in self.labels[keep].tolist()], dtype=torch.int64)
        return Boxes(self.xyxy[keep], new, tuple(names))


def merge_boxes(first: Boxes, second: Boxes, iou: float | None = UNION_IOU) -> Boxes:
    """Join two annotations of the same image, dropping the boxes of ``second`` that duplicate a box of ``first``.

    A box of ``second`` is a duplicate when it has the class of a box of ``first`` and their IoU is greater than
    ``iou``; pairs are matched one-to-one, greedily by decreasing IoU, and the box of ``first`` is kept. For MSRS
    ``first`` is the infrared set: the two sets are drawn on registered images, the infrared annotation is the
    primary ground truth (people at night are only visible there), and keeping one annotator's box rather than an
    average keeps every ground-truth box one that somebody drew. ``iou=None`` (or a value >= 1) keeps every box
    (plain concatenation, :meth:`Boxes.union`).
    """
    if iou is not None and not 0 <= iou <= 1:
        raise InputError(f"merge IoU must lie in [0, 1], got {iou}")
    if iou is None or iou >= 1 or len(first) == 0 or len(second) == 0:
        return first.union(second)
    from torchvision.ops import box_iou

    m = box_iou(first.xyxy, second.xyxy)
    m[first.labels[:, None] != second.labels[None, :]] = -1.0
    drop = torch.zeros(len(second), dtype=torch.bool)
    used = torch.zeros(len(first), dtype=torch.bool)
    order = torch.argsort(m.flatten(), descending=True, stable=True)
    for k in order.tolist():
        i, j = divmod(k, m.shape[1])
        if m[i, j] <= iou:
            break
        if not used[i] and not drop[j]:
            used[i], drop[j] = True, True
    keep = ~drop
    kept = Boxes(second.xyxy[keep], second.labels[keep], second.names,
                 second.difficult[keep] if second.difficult is not None else None)  # fmt: skip
    return first.union(kept)


def read_yolo(path: str | os.PathLike, width: int, height: int, names: Sequence[str] = ()) -> Boxes:
    """Read a YOLO txt file (``cls cx cy w h`` normalised to [0, 1]) into pixel xyxy boxes.

    A missing file or an empty file means no objects. Whitespace may be any (files with double or trailing
    spaces exist); a sixth column (confidence) is ignored.
    """
    p = Path(path)
    if not p.exists():
        return Boxes.empty(names)
    rows = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 5:
            raise InputError(f"{p}: line {i} has {len(parts)} fields, expected 'cls cx cy w h'")
        try:
            c = int(float(parts[0]))
            cx, cy, w, h = (float(v) for v in parts[1:5])
        except ValueError:
            raise InputError(f"{p}: line {i} is not numeric: {line.strip()!r}") from None
        if c < 0 or (names and c >= len(names)):
            raise InputError(f"{p}: line {i} has class id {c} outside 0..{len(names) - 1}")
        rows.append((c, (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height))
    if not rows:
        return Boxes.empty(names)
    a = np.asarray(rows, dtype=np.float64)
    return Boxes(torch.from_numpy(a[:, 1:]).float(), torch.from_numpy(a[:, 0]).long(), tuple(names))


def write_yolo(path: str | os.PathLike, boxes: Boxes, width: int, height: int, scores: torch.Tensor | None = None) -> None:
    """Write boxes as YOLO txt (normalised ``cls cx cy w h`` [+ score]), atomically."""
    from ..utils import atomic_write_text

    lines = []
    for i, ((x1, y1, x2, y2), c) in enumerate(zip(boxes.xyxy.tolist(), boxes.labels.tolist())):
        vals = [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
        s = f"{c} " + " ".join(f"{v:.6f}" for v in vals)
        if scores is not None:
            s += f" {float(scores[i]):.5f}"
        lines.append(s)
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def read_voc(path: str | os.PathLike, names: Sequence[str], *, extend: bool = False) -> Boxes:
    """Read a Pascal VOC XML annotation. VOC pixel coordinates are 1-based inclusive; returned as xyxy
    with ``x1 = xmin - 1`` and ``x2 = xmax`` (the torchvision/COCO convention).

    Args:
        names: known class names; an unknown name is an error unless ``extend`` (then appended).
    """
    p = Path(path)
    if not p.exists():
        return Boxes.empty(names)
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as e:
        raise InputError(f"{p}: not valid XML ({e})") from None
    names = list(names)
    xyxy, labels, diff = [], [], []
    for k, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if name not in names:
            lower = {n.lower(): i for i, n in enumerate(names)}
            if name.lower() in lower:
                name = names[lower[name.lower()]]
            elif extend:
                names.append(name)
            else:
                raise InputError(f"{p}: object {k} has unknown class '{name}' (known: {', '.join(names)})")
        bb = obj.find("bndbox")
        if bb is None:
            raise InputError(f"{p}: object {k} has no <bndbox>")
        try:
            x1, y1, x2, y2 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise InputError(f"{p}: object {k} has a malformed <bndbox>") from None
        xyxy.append((x1 - 1, y1 - 1, x2, y2))
        labels.append(names.index(name))
        diff.append((obj.findtext("difficult") or "0").strip() == "1")
    if not xyxy:
        return Boxes.empty(names)
    return Boxes(torch.tensor(xyxy), torch.tensor(labels), tuple(names), torch.tensor(diff))


def read_coco(path: str | os.PathLike) -> tuple[dict[str, Boxes], tuple[str, ...]]:
    """Read a COCO detection JSON into ``{file stem: Boxes}`` and the class-name tuple.

    COCO category ids are mapped to contiguous ids in the order of the ``categories`` list; ``iscrowd``
    boxes are kept and flagged in ``Boxes.difficult``.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: file not found") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise InputError(f"{p}: COCO file has no '{key}' list")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    names = tuple(c["name"] for c in cats)
    by_img: dict[int, list] = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        if a["image_id"] not in by_img:
            raise InputError(f"{p}: annotation {a.get('id')} refers to missing image {a['image_id']}")
        by_img[a["image_id"]].append(a)
    out = {}
    for im in data["images"]:
        anns = by_img[im["id"]]
        stem = Path(im["file_name"]).stem
        if not anns:
            out[stem] = Boxes.empty(names)
            continue
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        out[stem] = Boxes(
            xyxy,
            torch.tensor([cat_index[a["category_id"]] for a in anns]),
            names,
            torch.tensor([bool(a.get("iscrowd", 0)) for a in anns]),
        )
    return out, names


def read_mask(path: str | os.PathLike) -> torch.Tensor:
    """Read a segmentation mask PNG of class ids (``H×W`` uint8/uint16, or palette) as an int64 tensor."""
    from .images import read_array

    p = Path(path)
    arr = _read_mask_array(p) if p.suffix.lower() == ".png" else read_array(p)
    if arr.ndim == 3:
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
        else:
            raise InputError(f"{p}: a class-id mask must have one channel (got colour-coded RGB)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{p}: a class-id mask must hold integers, got {arr.dtype}")
    return torch.from_numpy(arr.astype(np.int64))


def _read_mask_array(p: Path) -> np.ndarray:
    from PIL import Image

    from .images import read_array

    try:
        with Image.open(p) as im:
            if im.mode == "P":  # palette masks store class ids as indices
                return np.asarray(im)
    except OSError:
        pass
    return read_array(p)

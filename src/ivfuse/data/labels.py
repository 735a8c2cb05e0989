"""Detection boxes and segmentation masks: one box structure for YOLO txt, Pascal VOC XML and COCO JSON.

:class:`Boxes` holds pixel ``xyxy`` boxes (float32 N×4), integer class ids (int64 N) and the tuple of
class names the ids index into. Readers raise :class:`~ivfuse.errors.InputError` naming the file and the
line/element that is wrong.
"""

from __future__ import annotations

import json
import math
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
            difficult = torch.cat(
                [
                    b.difficult if b.difficult is not None else torch.zeros(len(b), dtype=torch.bool)
                    for b in (self, other)
                ]
            )
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
    kept = Boxes(
        second.xyxy[keep],
        second.labels[keep],
        second.names,
        second.difficult[keep] if second.difficult is not None else None,
    )
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
    for i, line in enumerate(_read_text(p).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 5:
            raise InputError(f"{p}: line {i} has {len(parts)} fields, expected 'cls cx cy w h'")
        try:
            cf = float(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:5])
        except ValueError:
            raise InputError(f"{p}: line {i} is not numeric: {line.strip()[:80]!r}") from None
        if not math.isfinite(cf) or cf != int(cf):
            raise InputError(f"{p}: line {i} has class id {parts[0][:20]!r}, expected an integer")
        c = int(cf)
        if c < 0 or (names and c >= len(names)):
            raise InputError(f"{p}: line {i} has class id {c} outside 0..{len(names) - 1}")
        _check_yolo_box(p, i, cx, cy, w, h)
        rows.append((c, (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height))
    if not rows:
        return Boxes.empty(names)
    a = np.asarray(rows, dtype=np.float64)
    return Boxes(torch.from_numpy(a[:, 1:]).float(), torch.from_numpy(a[:, 0]).long(), tuple(names))


#: how far (as a fraction of the image) a box edge may lie outside the image: annotation tools round
BOX_TOLERANCE = 0.01


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not a UTF-8 text file (byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{p}: cannot be read ({e.strerror or e})") from None


def _check_yolo_box(p: Path, i: int, cx: float, cy: float, w: float, h: float) -> None:
    """A YOLO box (normalised to the image) must be finite, of positive size and inside the image (within
    :data:`BOX_TOLERANCE`)."""
    vals = (cx, cy, w, h)
    if not all(math.isfinite(v) for v in vals):
        raise InputError(f"{p}: line {i} has a NaN or infinite value ({' '.join(f'{v:g}' for v in vals)})")
    if w <= 0 or h <= 0:
        raise InputError(f"{p}: line {i} has a box of non-positive size (w={w:g}, h={h:g})")
    t = BOX_TOLERANCE
    if cx - w / 2 < -t or cy - h / 2 < -t or cx + w / 2 > 1 + t or cy + h / 2 > 1 + t:
        raise InputError(
            f"{p}: line {i} has a box outside the image (cx={cx:g} cy={cy:g} w={w:g} h={h:g}; "
            f"YOLO coordinates are fractions of the image in [0, 1])"
        )


def _check_xyxy(
    p: Path, where: str, x1: float, y1: float, x2: float, y2: float, size: tuple[float, float] | None = None
) -> None:
    """A pixel box must be finite, of positive size, not negative and (when the image size is known) inside it."""
    vals = (x1, y1, x2, y2)
    if not all(math.isfinite(v) for v in vals):
        raise InputError(f"{p}: {where} has a NaN or infinite coordinate ({', '.join(f'{v:g}' for v in vals)})")
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"{p}: {where} has a box of non-positive size ({', '.join(f'{v:g}' for v in vals)})")
    if size is not None:
        W, H = size
        tw, th = max(1.0, BOX_TOLERANCE * W), max(1.0, BOX_TOLERANCE * H)  # VOC files mix 0- and 1-based
        if x1 < -tw or y1 < -th or x2 > W + tw or y2 > H + th:
            raise InputError(
                f"{p}: {where} has a box ({', '.join(f'{v:g}' for v in vals)}) outside the {W:g}x{H:g} image"
            )
    elif x1 < -1 or y1 < -1:
        raise InputError(f"{p}: {where} has a negative coordinate ({', '.join(f'{v:g}' for v in vals)})")


def write_yolo(
    path: str | os.PathLike, boxes: Boxes, width: int, height: int, scores: torch.Tensor | None = None
) -> None:
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
        root = ET.fromstring(p.read_bytes())
    except ET.ParseError as e:
        raise InputError(f"{p}: not valid XML ({e})") from None
    except OSError as e:
        raise InputError(f"{p}: cannot be read ({e.strerror or e})") from None
    names = list(names)
    size = None
    sz = root.find("size")
    if sz is not None:
        try:
            size = (float(sz.findtext("width")), float(sz.findtext("height")))
        except (TypeError, ValueError):
            size = None
        if size is not None and not (all(math.isfinite(v) for v in size) and min(size) > 0):
            size = None  # a <size> of 0 x 0 (some tools write it) says nothing
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
        _check_xyxy(p, f"object {k}", x1 - 1, y1 - 1, x2, y2, size)
        xyxy.append((x1 - 1, y1 - 1, x2, y2))
        labels.append(names.index(name))
        diff.append((obj.findtext("difficult") or "0").strip() == "1")
    if not xyxy:
        return Boxes.empty(names)
    return Boxes(torch.tensor(xyxy), torch.tensor(labels), tuple(names), torch.tensor(diff))


def read_coco(path: str | os.PathLike) -> tuple[dict[str, Boxes], tuple[str, ...]]:
    """Read a COCO detection JSON into ``{file stem: Boxes}`` and the class-name tuple.

    COCO category ids are mapped to contiguous ids in the order of the ``categories`` list; ``iscrowd``
    boxes are kept and flagged in ``Boxes.difficult``. Every structural fault (a missing key, a box that is not
    four finite numbers of positive size inside its image, an unknown category or image id) is an
    :class:`InputError` naming the file and the element.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{p}: file not found") from None
    except OSError as e:
        raise InputError(f"{p}: cannot be read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else f"not UTF-8 at byte {e.start}"
        raise InputError(f"{p}: not valid JSON ({msg})") from None
    except RecursionError:
        raise InputError(f"{p}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: a COCO file must hold a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{p}: COCO file has no '{key}' list")

    def field(obj, k: int, what: str, key: str, kinds: tuple[type, ...]):
        if not isinstance(obj, dict) or key not in obj:
            raise InputError(f"{p}: {what} {k} has no '{key}'")
        v = obj[key]
        if not isinstance(v, kinds) or isinstance(v, bool):
            raise InputError(f"{p}: {what} {k} has a '{key}' of type {type(v).__name__}")
        return v

    ids = (int, str)
    cats = data["categories"]
    for k, c in enumerate(cats):
        field(c, k, "category", "id", ids)
        field(c, k, "category", "name", (str,))
    try:
        cats = sorted(cats, key=lambda c: c["id"])
    except TypeError:  # int and str ids mixed
        raise InputError(f"{p}: category ids mix numbers and strings") from None
    cat_index: dict = {}
    for i, c in enumerate(cats):
        if c["id"] in cat_index:
            raise InputError(f"{p}: category id {c['id']!r} appears twice")
        cat_index[c["id"]] = i
    names = tuple(c["name"] for c in cats)
    by_img: dict = {}
    sizes: dict = {}
    for k, im in enumerate(data["images"]):
        iid = field(im, k, "image", "id", ids)
        field(im, k, "image", "file_name", (str,))
        if iid in by_img:
            raise InputError(f"{p}: image id {iid!r} appears twice")
        by_img[iid] = []
        w, h = im.get("width"), im.get("height")
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in (w, h))
        sizes[iid] = (float(w), float(h)) if ok else None
    for k, a in enumerate(data["annotations"]):
        iid = field(a, k, "annotation", "image_id", ids)
        if iid not in by_img:
            raise InputError(f"{p}: annotation {a.get('id', k)} refers to missing image {iid!r}")
        cid = field(a, k, "annotation", "category_id", ids)
        if cid not in cat_index:
            raise InputError(f"{p}: annotation {a.get('id', k)} has unknown category_id {cid!r}")
        bb = field(a, k, "annotation", "bbox", (list,))
        if len(bb) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bb):
            raise InputError(f"{p}: annotation {a.get('id', k)} has a bbox that is not four numbers [x, y, w, h]")
        x, y, w, h = (float(v) for v in bb)
        _check_xyxy(p, f"annotation {a.get('id', k)}", x, y, x + w, y + h, sizes[iid])
        by_img[iid].append(a)
    out = {}
    for im in data["images"]:
        anns = by_img[im["id"]]
        stem = Path(im["file_name"]).stem
        if not anns:
            out[stem] = Boxes.empty(names)
            continue
        xywh = torch.tensor([[float(v) for v in a["bbox"]] for a in anns], dtype=torch.float32)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        out[stem] = Boxes(
            xyxy,
            torch.tensor([cat_index[a["category_id"]] for a in anns], dtype=torch.int64),
            names,
            torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool),
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

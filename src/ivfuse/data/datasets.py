"""Paired infrared-visible datasets with labels, read from their official layouts.

>>> ds = ivfuse.load_dataset("msrs", split="test")          # root defaults to ../shared/data/MSRS
>>> s = ds[0]; s["ir"].shape, s["vis"].shape, s["boxes"].xyxy.shape

Each sample is a dict: ``name`` (pair key), ``ir`` (1×H×W float in [0, 1]), ``vis`` (3×H×W or 1×H×W),
``boxes`` (:class:`~ivfuse.data.labels.Boxes` or ``None``), ``mask`` (H×W int64 class ids or ``None``),
``ir_path``/``vis_path``. A ``transform`` (see :mod:`ivfuse.data.transforms`) is applied to the whole dict
so that IR, visible, boxes and mask move together.

Supported layouts (the first existing candidate folder is used; ``{split}`` is the split name):

============  ==============================================  ==========================================
dataset       images                                          labels / split
============  ==============================================  ==========================================
tno           ``ir/``, ``vi/`` (Tang's 42-pair release)         none; splits ``all``
roadscene     ``cropinfrared/`` + ``crop_LR_visible/`` or       none; ``test`` = CDDFuse's 50
              ``ir/`` + ``vi/``                                 (``meta/test50_cddfuse.txt``), ``train`` = rest
msrs          ``{split}/ir``, ``{split}/vi`` (official) or      ``{split}/Segmentation_labels`` (9 classes);
              flat ``ir/``, ``vi/`` + ``manifest.tsv``          ``labels_det/{infrared,visible,fusion}`` YOLO
m3fd          ``Ir/``, ``Vis/``                                 ``Annotation/*.xml`` (VOC, 6 classes);
                                                              split lists ``{split}.txt`` if present
llvip         ``infrared/{split}``, ``visible/{split}``         ``Annotations/*.xml`` (VOC, person)
fmb           ``{split}/Infrared``, ``{split}/Visible``         ``{split}/Label`` (15 classes)
kaist         ``images/setXX/VYYY/{lwir,visible}``              ``annotations-xml-new``/``annotations`` VOC
                                                              XML; ``imageSets/{split}.txt``
folder        ``ir/``, ``vi/`` under any root                   optional ``labels/`` (YOLO) and ``masks/``
============  ==============================================  ==========================================
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import InputError
from ..registry import Registry
from ..utils import shared_root
from .images import read_ir, read_vis
from .labels import UNION_IOU, Boxes, read_mask, read_voc, read_yolo
from .pairing import pair_by_stem
from .splits import DEV_SPLITS, read_split_file

__all__ = ["DatasetSpec", "DATASETS", "FusionDataset", "load_dataset", "list_datasets"]


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is laid out on disk."""

    name: str
    shared_dir: str  # folder name under ../shared/data (or the official archive's usual name)
    ir_dirs: tuple[str, ...]
    vis_dirs: tuple[str, ...]
    splits: tuple[str, ...] = ("all",)
    det_dirs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # label set -> candidate dirs
    det_format: str = "none"  # yolo | voc | none
    det_names: tuple[str, ...] = ()
    seg_dirs: tuple[str, ...] = ()
    seg_names: tuple[str, ...] = ()
    pair_fn: Callable[[Path], list[tuple[str, Path, Path]]] | None = None  # layouts not of the ir/vis-folder kind
    split_fn: Callable[[Path, str, list[str]], list[str]] | None = None
    note: str = ""


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _first_dir(root: Path, candidates: Sequence[str], split: str) -> Path | None:
    for c in candidates:
        d = root / c.format(split=split)
        if d.is_dir():
            return d
    return None


def _split_from_list(root: Path, files: Sequence[str], split: str, keys: list[str]) -> list[str]:
    """Keys listed in the first existing split file (lines are names or relative paths, extension optional)."""
    for f in files:
        p = root / f.format(split=split)
        if p.is_file():
            wanted = {
                Path(line.strip()).with_suffix("").as_posix() for line in p.read_text().splitlines() if line.strip()
            }
            return [k for k in keys if k in wanted or Path(k).name in wanted]
    raise InputError(f"{root}: no split file for split '{split}' (looked for {', '.join(files)})")


def _roadscene_split(root: Path, split: str, keys: list[str]) -> list[str]:
    if split == "all":
        return keys
    test = set(_split_from_list(root, ["meta/test50_cddfuse.txt", "test.txt"], "test", keys))
    return [k for k in keys if (k in test) == (split == "test")]


def _manifest_split(root: Path, split: str, keys: list[str]) -> list[str]:
    """MSRS flat release: ``manifest.tsv`` has an ``msrs_split`` column; official layout: split folders.
    ``dev-train``/``dev-val``: ivfuse's fixed development split of the labelled pairs (:mod:`ivfuse.data.splits`)."""
    if split == "all":
        return keys
    if split in DEV_SPLITS:
        listed = read_split_file("msrs_dev.tsv")
        return [k for k in keys if listed.get(k) == split]
    man = root / "manifest.tsv"
    if man.is_file():
        with open(man, newline="") as f:
            rows = {r["name"]: r["msrs_split"] for r in csv.DictReader(f, delimiter="\t")}
        return [k for k in keys if rows.get(k) == split]
    return keys  # official layout: the split folder already selected the files


def _list_split(files: Sequence[str]) -> Callable[[Path, str, list[str]], list[str]]:
    def fn(root: Path, split: str, keys: list[str]) -> list[str]:
        if split == "all":
            return keys
        return _split_from_list(root, files, split, keys)

    return fn


for _spec in [
    DatasetSpec(
        "tno",
        "TNO",
        ("ir", "IR", "infrared"),
        ("vi", "VIS", "visible"),
        note="42 classic pairs (Tang's release); no labels",
    ),
    DatasetSpec(
        "roadscene",
        "RoadScene",
        ("cropinfrared", "ir"),
        ("crop_LR_visible", "vi"),
        splits=("all", "train", "test"),
        split_fn=_roadscene_split,
        note="221 FLIR pairs; test = CDDFuse's 50-pair list",
    ),
    DatasetSpec(
        "msrs",
        "MSRS",
        ("{split}/ir", "ir"),
        ("{split}/vi", "vi"),
        splits=("all", "train", "test", *DEV_SPLITS),
        det_dirs={
            "infrared": ("labels_det/infrared", "{split}/labels_det/infrared"),
            "visible": ("labels_det/visible", "{split}/labels_det/visible"),
            "fusion": ("labels_det/fusion", "{split}/labels_det/fusion"),
        },
        det_format="yolo",
        det_names=("person", "bicycle", "car"),
        seg_dirs=("{split}/Segmentation_labels", "Segmentation_labels"),
        seg_names=("unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump"),
        split_fn=_manifest_split,
        note="road scenes 640x480; detection boxes from Lele-3/MSRS-detection-label; "
        "dev-train/dev-val: ivfuse's fixed split of the labelled pairs",
    ),
    DatasetSpec(
        "m3fd",
        "M3FD",
        ("Ir", "ir"),
        ("Vis", "vis", "vi"),
        splits=("all", "train", "val", "test"),
        det_dirs={"default": ("Annotation", "Annotations")},
        det_format="voc",
        det_names=("People", "Car", "Bus", "Motorcycle", "Lamp", "Truck"),
        split_fn=_list_split(["{split}.txt", "meta/{split}.txt", "ImageSets/Main/{split}.txt"]),
        note="4200 detection pairs; no official split (give {split}.txt lists)",
    ),
    DatasetSpec(
        "llvip",
        "LLVIP",
        ("infrared/{split}", "ir"),
        ("visible/{split}", "vi"),
        splits=("all", "train", "test"),
        det_dirs={"default": ("Annotations",)},
        det_format="voc",
        det_names=("person",),
        note="low-light pedestrian pairs 1280x1024",
    ),
    DatasetSpec(
        "fmb",
        "FMB",
        ("{split}/Infrared", "Infrared"),
        ("{split}/Visible", "Visible"),
        splits=("train", "test"),
        seg_dirs=("{split}/Label", "Label"),
        seg_names=(
            "unlabeled",
            "Road",
            "Sidewalk",
            "Building",
            "Lamp",
            "Sign",
            "Vegetation",
            "Sky",
            "Person",
            "Car",
            "Truck",
            "Bus",
            "Motorcycle",
            "Bicycle",
            "Pole",
        ),
        note="1500 pairs with 14-class segmentation labels",
    ),
    DatasetSpec(
        "kaist",
        "KAIST",
        ("images",),
        ("images",),
        splits=("all", "train", "test"),
        det_dirs={"default": ("annotations-xml-new", "annotations-xml", "annotations")},
        det_format="voc",
        det_names=("person", "people", "cyclist", "person?"),
        pair_fn=lambda root: _kaist_pairs(root),
        split_fn=_list_split(["imageSets/{split}.txt", "imageSets/{split}-all-02.txt", "imageSets/{split}-all-20.txt"]),
        note="multispectral pedestrian sequences; keys are setXX/VYYY/IZZZZZ",
    ),
    DatasetSpec(
        "folder",
        "",
        ("ir", "IR", "infrared"),
        ("vi", "vis", "VIS", "visible"),
        det_dirs={"default": ("labels", "labels_det")},
        det_format="yolo",
        seg_dirs=("masks", "labels_seg"),
        note="any root with ir/ and vi/ folders",
    ),
]:
    DATASETS.add(_spec.name, _spec)


def list_datasets() -> list[str]:
    return DATASETS.names()


def _kaist_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    base = root / "images"
    if not base.is_dir():
        raise InputError(f"{root}: KAIST layout expects images/setXX/VYYY/{{lwir,visible}}/")
    pairs = []
    for lw in sorted(base.glob("set*/V*/lwir")):
        vis_dir = lw.parent / "visible"
        for k, ip, vp in pair_by_stem(lw, vis_dir):
            pairs.append((f"{lw.parent.relative_to(base).as_posix()}/{k}", ip, vp))
    if not pairs:
        raise InputError(f"{base}: no setXX/VYYY/lwir folders with images")
    return pairs


class FusionDataset(Dataset):
    """Paired IR/visible images of one split of a dataset, with boxes and masks where available.

    Args:
        spec: layout description (see :data:`DATASETS`).
        root: dataset folder.
        split: one of ``spec.splits``.
        det_labels: which detection label set to load (``"infrared"``, ``"visible"``, ``"fusion"``,
            ``"union"`` = infrared + visible for MSRS; ``"default"`` elsewhere; ``None`` for none).
        union_iou: for ``"union"``, a visible box whose IoU with a same-class infrared box exceeds this is the
            same object annotated twice and is dropped (the infrared box is kept; see
            :func:`~ivfuse.data.labels.merge_boxes`). Default 0.5; ``None`` keeps both copies (plain concatenation;
            on the 241 MSRS test pairs 465 of its 1833 boxes are such duplicates).
        transform: callable applied to each sample dict (joint transforms).
        ir_norm: normalisation of 16-bit/float infrared data (see :func:`~ivfuse.data.images.read_ir`).
        seg_dir: folder of class-id masks named by pair (``<stem>.png``) that replaces the layout's own masks, e.g.
            pseudo-masks written by ``ivfuse masks --kind seg`` for a dataset without segmentation labels.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        root: str | os.PathLike,
        split: str = "all",
        det_labels: str | None = "auto",
        transform: Callable[[dict], dict] | None = None,
        ir_norm: str = "minmax",
        union_iou: float | None = UNION_IOU,
        seg_dir: str | os.PathLike | None = None,
    ) -> None:
        self.spec, self.root, self.split = spec, Path(root), split
        if union_iou is not None and not 0 <= union_iou <= 1:
            raise InputError(f"union_iou must lie in [0, 1] (or be None), got {union_iou}")
        self.union_iou = union_iou
        if not self.root.is_dir():
            raise InputError(f"{self.root}: {spec.name} dataset folder not found (pass root=... or set IVFUSE_SHARED)")
        if split not in spec.splits:
            raise InputError(f"{spec.name}: unknown split '{split}' (available: {', '.join(spec.splits)})")
        self.transform, self.ir_norm = transform, ir_norm
        self.pairs = self._find_pairs()
        if not self.pairs:
            raise InputError(f"{self.root}: split '{split}' of {spec.name} is empty")
        auto = det_labels == "auto"
        if auto:
            det_labels = ("infrared" if "infrared" in spec.det_dirs else "default") if spec.det_dirs else None
            if det_labels is not None and _first_dir(self.root, spec.det_dirs[det_labels], split) is None:
                det_labels = None  # this copy ships no labels
        if det_labels is not None and det_labels != "union" and det_labels not in spec.det_dirs:
            opts = ", ".join([*spec.det_dirs, *(["union"] if "infrared" in spec.det_dirs else [])]) or "none"
            raise InputError(f"{spec.name}: unknown label set '{det_labels}' (available: {opts})")
        self.det_labels = det_labels
        self._det_dirs = self._resolve_det_dirs()
        if seg_dir is not None and not Path(seg_dir).is_dir():
            raise InputError(f"{seg_dir}: segmentation mask folder not found")
        self.seg_dir = (
            Path(seg_dir)
            if seg_dir is not None
            else _first_dir(self.root, spec.seg_dirs, split)
            if spec.seg_dirs
            else None
        )
        self.class_names = spec.det_names

    def _find_pairs(self) -> list[tuple[str, Path, Path]]:
        spec, root, split = self.spec, self.root, self.split
        if spec.pair_fn is not None:
            pairs = spec.pair_fn(root)
        else:
            per_split = split != "all"
            every = [s for s in spec.splits if s != "all" and s not in DEV_SPLITS]
            wanted = every if split == "all" or split in DEV_SPLITS else [split]  # dev splits span split folders
            split_ir = [c for c in spec.ir_dirs if "{split}" in c]
            split_vis = [c for c in spec.vis_dirs if "{split}" in c]
            pairs = []
            for s in wanted:  # official layout: one folder per split
                ir, vis = _first_dir(root, split_ir, s), _first_dir(root, split_vis, s)
                if ir is not None and vis is not None:
                    pairs += pair_by_stem(ir, vis)
            if pairs:
                return pairs
            ir = _first_dir(root, [c for c in spec.ir_dirs if "{split}" not in c], split)
            vis = _first_dir(root, [c for c in spec.vis_dirs if "{split}" not in c], split)
            if ir is None or vis is None:
                raise InputError(
                    f"{root}: not a {spec.name} layout (expected folders {' or '.join(spec.ir_dirs)} and "
                    f"{' or '.join(spec.vis_dirs)})"
                )
            pairs = pair_by_stem(ir, vis)
            if per_split and spec.split_fn is None:
                raise InputError(f"{root}: flat {spec.name} layout has no '{split}' split information; use split='all'")
        if spec.split_fn is not None:
            keep = set(spec.split_fn(root, split, [k for k, _, _ in pairs]))
            pairs = [p for p in pairs if p[0] in keep]
        return pairs

    def _resolve_det_dirs(self) -> list[Path]:
        if self.det_labels is None:
            return []
        sets = ["infrared", "visible"] if self.det_labels == "union" else [self.det_labels]
        dirs = []
        for s in sets:
            d = _first_dir(self.root, self.spec.det_dirs[s], self.split)
            if d is None:
                raise InputError(f"{self.root}: no '{s}' label folder ({', '.join(self.spec.det_dirs[s])})")
            dirs.append(d)
        return dirs

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def names(self) -> list[str]:
        return [k for k, _, _ in self.pairs]

    def read_boxes(self, key: str, width: int, height: int) -> Boxes | None:
        if not self._det_dirs:
            return None
        out = None
        for d in self._det_dirs:
            if self.spec.det_format == "yolo":
                b = read_yolo(d / f"{key}.txt", width, height, self.class_names)
            else:
                b = read_voc(d / f"{key}.xml", self.class_names)
            out = b if out is None else out.merge(b, self.union_iou)
        return out

    def __getitem__(self, i: int) -> dict:
        key, ip, vp = self.pairs[i]
        ir, vis = read_ir(ip, self.ir_norm), read_vis(vp)
        if ir.shape[-2:] != vis.shape[-2:]:
            raise InputError(
                f"{vp}: visible image is {vis.shape[-1]}x{vis.shape[-2]} but {ip.name} is {ir.shape[-1]}x{ir.shape[-2]}"
            )
        h, w = ir.shape[-2:]
        mask = None
        if self.seg_dir is not None:
            mp = next(
                (self.seg_dir / f"{key}{e}" for e in (".png", ".bmp", ".tif") if (self.seg_dir / f"{key}{e}").exists()),
                None,
            )
            mask = read_mask(mp) if mp is not None else None
        sample = {
            "name": key,
            "ir": ir,
            "vis": vis,
            "boxes": self.read_boxes(key, w, h),
            "mask": mask,
            "ir_path": str(ip),
            "vis_path": str(vp),
        }
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        return (
            f"FusionDataset({self.spec.name}, root={self.root}, split={self.split}, n={len(self)}, "
            f"labels={self.det_labels})"
        )


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "all",
    **kwargs,
) -> FusionDataset:
    """Open a registered dataset (``ivfuse list datasets``). ``root`` defaults to ``$IVFUSE_SHARED/data/<Name>``
    (``../shared/data/<Name>``); see :class:`FusionDataset` for the keyword arguments."""
    spec = DATASETS.get(name)
    if root is None:
        if not spec.shared_dir:
            raise InputError(f"dataset '{name}' needs root=...")
        base = shared_root() / "data"
        root = base / spec.shared_dir
        if not Path(root).exists() and spec.name == "llvip":
            root = base / "LLVIP_sample"
    return FusionDataset(spec, root, split, **kwargs)


def collate(batch: list[dict]) -> dict:
    """Collate samples of equal size: stacks images/masks, keeps boxes as a list."""
    out: dict = {}
    for k in batch[0]:
        vals = [b[k] for b in batch]
        if isinstance(vals[0], torch.Tensor) and all(v.shape == vals[0].shape for v in vals):
            out[k] = torch.stack(vals)
        else:
            out[k] = vals
    return out

"""The bench protocols: ``fusion`` (metrics), ``zero`` (frozen judge), ``retrain`` (judge fine-tuned on each
method's own fused training images), ``seg`` (mIoU where masks exist) and the speed of each method.

Every protocol works on the cached fused images of one dataset split (:mod:`ivfuse.bench.cache`); the
training split of ``retrain``/``seg`` is never the judged split (checked by name).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.datasets import DATASETS, FusionDataset, load_dataset
from ..data.images import write_image
from ..errors import InputError, IvfuseError
from ..models import FusionModel, create_model, list_models
from .recipes import LABEL_SETS, PRESETS, PROTOCOLS, SEG_JUDGES, Recipe  # noqa: F401  (re-exported)
from .references import REFERENCES, SourceImage  # noqa: F401  (re-exported: the reference rows ir / vis)

__all__ = [
    "Recipe",
    "PRESETS",
    "DataSpec",
    "parse_data",
    "SourceImage",
    "REFERENCES",
    "build_method",
    "fuse_split",
    "detection_set",
    "run_fusion",
    "run_zero",
    "run_retrain",
    "run_seg",
    "run_speed",
    "SEG_JUDGES",
    "check_seg_judge",
    "held_out_dev_train",
    "TRAIN_SPLIT_OF",
    "PROTOCOLS",
]


#: the split a judge is fine-tuned on when a split is judged (never the judged split itself)
TRAIN_SPLIT_OF = {"dev-val": "dev-train", "test": "train", "val": "train"}

#: short aliases accepted in ``--data name:split``
SPLIT_ALIASES = {"val": "dev-val", "train": "dev-train"}


@dataclass
class DataSpec:
    """``name[:split][@ROOT]`` of a registered dataset; ``split`` defaults to ``dev-val``/``test``/``all``."""

    name: str
    split: str
    root: str | None = None
    text: str = ""
    train_split: str | None = field(default=None)

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.split}"


def parse_data(text: str, root: str | None = None) -> DataSpec:
    """``name[:split][@ROOT]`` -> :class:`DataSpec` (root defaults to the shared data folder)."""
    spec_text, _, at_root = text.strip().partition("@")
    root = at_root.strip() or root
    name, _, split = spec_text.partition(":")
    spec = DATASETS.get(name.strip().lower())
    split = split.strip()
    if not split:
        split = next(s for s in ("dev-val", "test", "all", *spec.splits) if s in spec.splits)
    if split not in spec.splits and SPLIT_ALIASES.get(split) in spec.splits:
        split = SPLIT_ALIASES[split]
    if split not in spec.splits:
        raise InputError(f"--data {text}: {spec.name} has no split '{split}' (available: {', '.join(spec.splits)})")
    train = TRAIN_SPLIT_OF.get(split)
    return DataSpec(spec.name, split, root, text, train if train in spec.splits else None)


# ------------------------------------------------------------------------------------------------ methods


def build_method(text: str, device: str = "cpu") -> tuple[str, FusionModel, dict, bool]:
    """``name``, ``name@WEIGHTS``, either with method options ``?key=value&key=value`` (``laplacian?levels=5``,
    ``tim@FILE?preset=official&stage2=F2``; the same options as ``ivfuse fuse --opt``), or a reference (``ir``/``vis``)
    -> (name, eval model, options, is_reference). The options are part of the method's cache key."""
    from ..config import parse_items

    spec, _, query = text.strip().partition("?")
    name, _, weights = spec.partition("@")
    name = name.strip()
    if name in REFERENCES and name not in list_models():
        if query:
            raise InputError(f"--methods {text}: the reference row '{name}' takes no options")
        return name, SourceImage(name).to(device).eval(), {}, True
    opts = parse_items([q for q in query.split("&") if q.strip()], f"method option of '{name}'") if query else {}
    if weights:
        opts["weights"] = weights.strip()
    return name, create_model(name, **opts).to(device).eval(), opts, False


# ------------------------------------------------------------------------------------------------ fusing
def fuse_split(
    model: FusionModel, ds: FusionDataset, out_dir: Path, device: str = "cpu", progress: bool = True, desc: str = "fuse"
) -> dict[str, Path]:
    """Fuse every pair of ``ds`` into ``out_dir/<name>.png`` (8-bit, atomic), skipping files that exist."""
    from tqdm.auto import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {n: out_dir / f"{n}.png" for n in ds.names}
    todo = [i for i, n in enumerate(ds.names) if not paths[n].is_file()]
    dev = torch.device(device)
    for i in tqdm(todo, desc=desc, unit="pair", disable=not progress or not todo):
        s = ds[i]
        try:
            with torch.inference_mode():
                f = model(s["ir"][None].to(dev), s["vis"][None].to(dev))[0].cpu()
        except IvfuseError as e:
            raise type(e)(f"{s['ir_path']}: {e}") from None
        write_image(paths[s["name"]], f)
    return paths


def open_dataset(
    spec: DataSpec,
    split: str,
    det_labels: str | None,
    limit: int | None = None,
    spaced: int | None = None,
    seg_dir: str | Path | None = None,
) -> FusionDataset:
    """One split of a dataset; ``limit``: its first N pairs; ``spaced``: N pairs evenly spaced over the sorted names;
    ``seg_dir``: mask folder replacing the dataset's own (pseudo-masks)."""
    ds = load_dataset(spec.name, root=spec.root, split=split, det_labels=det_labels, seg_dir=seg_dir)
    ds.pairs = sorted(ds.pairs)
    if limit:
        ds.pairs = ds.pairs[:limit]
    elif spaced and spaced < len(ds.pairs):
        n = len(ds.pairs)
        idx = sorted({round(i * (n - 1) / (spaced - 1)) for i in range(spaced)}) if spaced > 1 else [0]
        ds.pairs = [ds.pairs[i] for i in idx]
    return ds


def held_out_dev_train(
    n_train: int,
    det_labels: str | None,
    seg_dir: str | Path | None = None,
) -> tuple[FusionDataset, FusionDataset]:
    """MSRS dev-train split for choosing a bench recipe without dev-val: the ``n_train`` evenly spaced pairs a preset
    fine-tunes on, and the *other* dev-train pairs to score on (``benchmarks/select_*_recipe.py``)."""
    spec = DataSpec("msrs", "dev-train")
    train_ds = open_dataset(spec, "dev-train", det_labels, spaced=n_train, seg_dir=seg_dir)
    held_ds = open_dataset(spec, "dev-train", det_labels, seg_dir=seg_dir)
    picked = {n for n, _, _ in train_ds.pairs}
    held_ds.pairs = [p for p in held_ds.pairs if p[0] not in picked]
    return train_ds, held_ds


def detection_set(ds: FusionDataset, paths: dict[str, Path]):
    """A :class:`~ivfuse.tasks.downstream.DetectionSet` of fused images with the dataset's boxes."""
    from PIL import Image

    from ..tasks.downstream import DetectionSet

    names, files, boxes = [], [], []
    for n, ip, _ in ds.pairs:
        with Image.open(ip) as im:
            w, h = im.size
        names.append(n)
        files.append(paths[n])
        boxes.append(ds.read_boxes(n, w, h))
    return DetectionSet(names, files, boxes, tuple(ds.class_names))


# ------------------------------------------------------------------------------------------------ protocols
def _score(args):
    from ..evaluate import score_triple

    return score_triple(*args)


def run_fusion(
    ds: FusionDataset,
    paths: dict[str, Path],
    metrics: Sequence[str],
    workers: int = 1,
    progress: bool = True,
    desc: str = "metrics",
) -> dict:
    """Default metrics of every fused image and their mean (non-finite values left out of the mean)."""
    from tqdm.auto import tqdm

    jobs = [(str(paths[n]), str(ip), str(vp), list(metrics)) for n, ip, vp in ds.pairs]
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress)
    results = []
    try:
        if workers <= 1:
            for j in jobs:
                results.append(_score(j))
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as ex:
                for r in ex.map(_score, jobs, chunksize=4):
                    results.append(r)
                    bar.update()
    finally:
        bar.close()
    per_image = {n: r for (n, _, _), r in zip(ds.pairs, results)}
    mean = {}
    for m in metrics:
        vals = [r[m] for r in results if math.isfinite(r[m])]
        mean[m] = sum(vals) / len(vals) if vals else math.nan
    return {"per_image": per_image, "mean": mean, "n_images": len(results)}


def _det_summary(r: dict) -> dict:
    from ..tasks.evaluation import encode_matches

    return {
        "mAP50": r["mAP50"],
        "mAP50_95": r["mAP50_95"],
        "per_class": r["per_class"],
        "n_images": r["n_images"],
        "matches": encode_matches(r["matches"]),
    }


#: version of the zero/retrain result format in the cache key (2: with the per-image matches of the bootstrap)
DET_RESULT_VERSION = "v2"


def run_zero(judge, data, progress: bool = True) -> dict:
    """mAP of the frozen judge on the fused test images (val.py settings), with the per-image matches
    (``"matches"``, :func:`~ivfuse.tasks.evaluation.encode_matches`) for the paired bootstrap."""
    from ..tasks.downstream import evaluate_detector

    t = time.perf_counter()
    out = _det_summary(evaluate_detector(judge, data, progress=progress, matches=True))
    out["seconds"] = time.perf_counter() - t
    return out


class _ValAtSize:
    """A YOLOv5 judge seen by ``evaluate_detector`` with val.py settings at ``imgsz`` instead of 640."""

    def __init__(self, det, imgsz: int) -> None:
        self.det, self.imgsz, self.class_names = det, imgsz, det.class_names

    def predict(self, images, mode: str = "val", conf: float | None = None, iou: float | None = None, classes=None):
        self.det.eval()
        return self.det.net.predict(
            images,
            conf=0.001 if conf is None else conf,
            iou=0.6 if iou is None else iou,
            multi_label=True,
            rect_val=True,
            classes=classes,
            imgsz=self.imgsz,
        )


def run_retrain(make_judge, train, test, recipe: Recipe, seed: int, progress: bool = True) -> dict:
    """Fine-tune a fresh pretrained judge on ``train`` (the method's fused training images) and score ``test``."""
    from ..engine.finetune import finetune_detector
    from ..tasks.downstream import evaluate_detector

    overlap = set(train.names) & set(test.names)
    if overlap:
        raise IvfuseError(f"retrain: {len(overlap)} training images are also test images (e.g. {sorted(overlap)[0]})")
    torch.manual_seed(seed)
    det = make_judge()
    t = time.perf_counter()
    hist = finetune_detector(
        det,
        train,
        None,
        recipe.epochs,
        recipe.batch_size,
        recipe.lr,
        recipe.imgsz,
        seed,
        progress,
        lr_final=recipe.lr_final,
        ema=recipe.ema,
    )
    train_s = time.perf_counter() - t
    from ..tasks.detectors import YOLOv5Detector

    judge = _ValAtSize(det, recipe.imgsz) if isinstance(det, YOLOv5Detector) and recipe.imgsz != 640 else det
    out = _det_summary(evaluate_detector(judge, test, progress=progress, matches=True))
    out.update(
        seed=seed,
        loss_per_epoch=hist,
        train_seconds=train_s,
        n_train=len(train),
        eval_imgsz=recipe.imgsz if judge is not det else 640,
    )
    return out


def check_seg_judge(judge: str) -> str:
    """``judge`` if it is one of :data:`SEG_JUDGES`, else an :class:`InputError` listing them."""
    if judge not in SEG_JUDGES:
        raise InputError(f"unknown seg judge '{judge}' (available: {', '.join(SEG_JUDGES)})")
    return judge


def run_seg(
    ds_train: FusionDataset,
    train_paths: dict[str, Path],
    ds_test: FusionDataset,
    test_paths: dict[str, Path],
    recipe: Recipe,
    seed: int,
    device: str = "cpu",
    progress: bool = True,
    judge: str = "head",
) -> dict:
    """mIoU of ESPNetv2 fine-tuned on the fused training images with masks.

    ``judge``: ``head`` — Cityscapes weights with a new head for the dataset's classes (its bottom-up decoder is sized
    by the class count, so it starts from scratch); ``merged`` — the whole Cityscapes network kept, its 20 classes
    merged into MSRS' nine (:class:`ivfuse.tasks.pseudo.MergedSegmenter`, the guide of TSJNet's L_Seg), for masks in
    MSRS' classes such as the pseudo-masks of ``ivfuse masks --kind seg``; ``recipe.seg_epochs = 0`` judges it frozen.
    """
    from ..tasks import ESPNetv2Seg
    from ..tasks.detectors import transfer_matching
    from ..engine.finetune import finetune_segmenter
    from ..tasks.downstream import SegmentationSet, evaluate_segmenter
    from ..weights import weights_path

    def seg_set(ds, paths):
        names, ims, masks = [], [], []
        for n, _, _ in ds.pairs:
            mp = next(
                (ds.seg_dir / f"{n}{e}" for e in (".png", ".bmp", ".tif") if (ds.seg_dir / f"{n}{e}").exists()), None
            )
            if mp is None:
                raise InputError(f"{ds.seg_dir}: no mask for {n}")
            names.append(n)
            ims.append(paths[n])
            masks.append(mp)
        return SegmentationSet(names, ims, masks)

    train, test = seg_set(ds_train, train_paths), seg_set(ds_test, test_paths)
    if set(train.names) & set(test.names):
        raise IvfuseError("seg: training images are also test images")
    names = ds_test.spec.seg_names
    torch.manual_seed(seed)
    city = ESPNetv2Seg.from_checkpoint(weights_path("espnetv2_city"))
    if check_seg_judge(judge) == "merged":
        from ..tasks.pseudo import MSRS_SEG_CLASSES, MergedSegmenter

        if tuple(names) != MSRS_SEG_CLASSES:
            raise InputError(
                f"seg judge 'merged' maps Cityscapes to MSRS' classes; {ds_test.spec.name} has {', '.join(names)}"
            )
        seg = MergedSegmenter(city)
    else:
        seg = ESPNetv2Seg(len(names), class_names=names)
        transfer_matching(city, seg)  # all but the class head (and the class-sized decoder)
    seg = seg.to(device)
    hist = []
    if recipe.seg_epochs > 0:
        hist = finetune_segmenter(
            seg,
            train,
            recipe.seg_epochs,
            recipe.seg_batch,
            recipe.seg_lr,
            recipe.seg_crop,
            seed=seed,
            progress=progress,
        )
    out = evaluate_segmenter(seg, test, len(names), names, progress=progress)
    out.update(seed=seed, loss_per_epoch=hist)
    return out


def run_speed(
    model: FusionModel, ds: FusionDataset, device: str = "cpu", min_time: float = 1.0, max_calls: int = 10
) -> dict:
    """Warm wall time per image of ``model`` on the first pair of ``ds`` at its own size (median of repeated calls
    after one warm-up call, at least 3 calls or ``min_time`` seconds)."""
    s = ds[0]
    dev = torch.device(device)
    ir, vis = s["ir"][None].to(dev), s["vis"][None].to(dev)

    def call():
        with torch.inference_mode():
            model(ir, vis)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    call()
    ts, total = [], 0.0
    while len(ts) < 3 or (total < min_time and len(ts) < max_calls):
        t = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t)
        total += ts[-1]
    return {
        "s_per_image": statistics.median(ts),
        "calls": len(ts),
        "size": f"{ir.shape[-1]}x{ir.shape[-2]}",
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "image": s["name"],
        "cpu_count": os.cpu_count(),
    }

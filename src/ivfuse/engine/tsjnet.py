"""TSJNet training (Jie et al., arXiv 2402.01212, §5.1.1) as a registered recipe of :func:`ivfuse.engine.train`.

One stage ``train``: every batch, ``L = L_MFF + λ_det·L_Det + λ_seg·L_Seg`` (:class:`ivfuse.losses.tsjnet.TSJNetLoss`)
on :meth:`TSJNet.outputs`; the detector and the segmenter are frozen guides whose losses are computed on the
**fused** image (gradients reach the fusion network). Adam, learning rate ×``optim.factor`` when the epoch's mean
loss has not improved for ``optim.patience`` epochs (``ReduceLROnPlateau``, saved with the run so resume is exact),
AMP (engine key ``amp: fp16`` on CUDA, the paper's setting; :class:`~ivfuse.engine.step.OptimStep` unscales before
clipping — the official script clips the *scaled* gradients).

Ablation switch ``guidance`` (the paper's Table 4): ``both`` | ``det`` | ``seg`` | ``none`` — a guide that is
switched off is not even built, so its term cannot reach the loss.

**Segmentation pseudo-masks.** MSRS' segmentation labels are not in ``../shared``; ``seg.pseudo: espnetv2`` labels
every training pair once, offline (:meth:`~ivfuse.engine.data.BatchSource.prepare`, cached on disk in
``seg.cache``), with the Cityscapes ESPNetv2 (:func:`pseudo_mask`): on the visible image by day, and on the mean of
the infrared image and the visible image by night (``seg.source: auto``; a pair is "night" when the mean visible
luminance is below ``seg.night``). Cityscapes classes are mapped to MSRS' 9 classes (:data:`CITYSCAPES_TO_MSRS`);
the frozen segmenter's 20 Cityscapes logits are merged into the same 9 classes for ``L_Seg``
(:class:`MergedSegmenter`: ``log Σ_k∈c softmax_k``); these three live in :mod:`ivfuse.tasks.pseudo`.
``seg.pseudo: labels`` uses the dataset's own masks (MSRS ``Segmentation_labels`` / FMB when the user has them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, suggest
from ..losses.tsjnet import DetectionLoss, MFFLoss, SegmentationLoss, TSJNetLoss
from ..models.tsjnet import TSJNet
from ..tasks.pseudo import (  # moved to tasks/ (#21); re-exported: public here before
    CITYSCAPES_TO_MSRS,
    MSRS_SEG_CLASSES,
    PSEUDO_SOURCES,
    MergedSegmenter,
    map_to_msrs,
    pseudo_mask,
)
from .config import Limit
from .data import BatchSource, RandomCrop, RandomFlip, load_samples
from .recipe import Recipe, register_recipe, strict_json, train
from .step import OptimStep, autocast
from .trainer import Stage

__all__ = [
    "CITYSCAPES_TO_MSRS",
    "GUIDANCE",
    "MSRS_SEG_CLASSES",
    "PSEUDO_SOURCES",
    "MergedSegmenter",
    "TSJNetRecipe",
    "map_to_msrs",
    "pseudo_mask",
    "train_tsjnet",
]

GUIDANCE = ("both", "det", "seg", "none")


@register_recipe("tsjnet")
class TSJNetRecipe(Recipe):
    """TSJNet, its frozen guides, Adam + plateau schedule and the data from a config (configs/tsjnet.yaml)."""

    limits = {"epochs": Limit(min=0), "data.crop": Limit(items=("height", "width"), null=True, why="full size")}

    @classmethod
    def check(cls, cfg: dict) -> list[str]:
        if cfg["guidance"] not in GUIDANCE:
            raise suggest(cfg["guidance"], GUIDANCE, "TSJNet guidance")
        if cfg["seg"]["pseudo"] not in ("espnetv2", "labels"):
            raise suggest(cfg["seg"]["pseudo"], ("espnetv2", "labels"), "seg.pseudo")
        if cfg["seg"]["source"] not in PSEUDO_SOURCES:
            raise suggest(cfg["seg"]["source"], PSEUDO_SOURCES, "seg.source")
        crop = cfg["data"]["crop"]
        if (
            crop is not None
            and cfg["guidance"] in ("both", "det")
            and str(cfg["detector"]["name"]).startswith("yolo")
            and any(int(c) % 32 for c in crop)
        ):
            raise InputError(
                f"data.crop={crop}: the YOLOv5 guide needs crop sides that are multiples of 32 (e.g. [128, 128])"
            )
        return []

    @property
    def uses_det(self) -> bool:
        return self.cfg["guidance"] in ("both", "det") and self.cfg["loss"]["det"] != 0

    @property
    def uses_seg(self) -> bool:
        return self.cfg["guidance"] in ("both", "seg") and self.cfg["loss"]["seg"] != 0

    def build(self) -> None:
        cfg, dev = self.cfg, self.device
        self.net = TSJNet(cfg["variant"], **(cfg.get("model") or {})).to(dev)
        lc = cfg["loss"]
        mff = MFFLoss(
            alpha=tuple(lc["alpha"]),
            ssim=lc["ssim"],
            intensity=lc["intensity"],
            gradient=lc["gradient"],
            div_on=lc["div_on"],
        )
        det = seg = None
        if self.uses_det:
            from ..tasks.detectors import create_detector
            from ..tasks.downstream import class_mapping

            d = cfg["detector"]
            self.detector = create_detector(d["name"], **({} if d["weights"] is None else {"weights": d["weights"]}))
            det = DetectionLoss(self.detector.to(dev).eval(), terms=d["terms"])
        if self.uses_seg:
            self.segmenter = self._segmenter().to(dev)
            seg = SegmentationLoss(
                MergedSegmenter(self.segmenter) if cfg["seg"]["pseudo"] == "espnetv2" else self.segmenter
            )
        self.loss = TSJNetLoss(mff, det, seg, det_weight=lc["det"], seg_weight=lc["seg"])
        o = cfg["optim"]
        self.opt = torch.optim.Adam(self.net.parameters(), lr=o["lr"])
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=o["factor"], patience=o["patience"]
        )
        self.step = OptimStep(self.opt, clip=o["clip"])  # follows the run's ``amp`` (GradScaler for fp16 on CUDA)
        self.modules = {"net": self.net}
        self.optimizers = {"net": self.opt, "plateau": self.sched}
        d = cfg["data"]
        with_masks = self.uses_seg and cfg["seg"]["pseudo"] == "labels"
        self.samples = load_samples(d["train"], with_boxes=self.uses_det, with_masks=with_masks, max_side=d["max_side"])
        if d["max_pairs"]:
            self.samples = self.samples[: d["max_pairs"]]
        tf = ([RandomCrop(d["crop"])] if d["crop"] else []) + [RandomFlip()]
        self.data = BatchSource(self.samples, d["batch"], tf, d["max_batches"], cfg["seed"])
        self.mapping = None
        if self.uses_det:
            names = next((s["boxes"].names for s in self.samples if s.get("boxes") is not None), None)
            if names is None:
                raise InputError(f"guidance={cfg['guidance']} needs detection boxes, but data.train has none")
            self.mapping = class_mapping(names, self.detector.class_names)
        if self.uses_seg and cfg["seg"]["pseudo"] == "espnetv2":
            self.prepare_pseudo_masks()
        if with_masks and any(s.get("mask") is None for s in self.samples):
            raise InputError(
                "seg.pseudo=labels: some training pairs have no segmentation mask; use seg.pseudo=espnetv2"
            )

    def _segmenter(self) -> nn.Module:
        from ..tasks.segmenters import create_segmenter

        s = self.cfg["segmenter"]
        return create_segmenter(s["name"], **({} if s["weights"] is None else {"weights": s["weights"]})).eval()

    def prepare_pseudo_masks(self) -> None:
        """Offline cache step: ``sample["mask"]`` = :func:`pseudo_mask` for every training pair (read from / written
        to ``seg.cache/<source>/`` as safetensors, one file per pair)."""
        s = self.cfg["seg"]
        cache = None
        if s["cache"]:
            tag = f"{self.cfg['segmenter']['name']}_{s['source']}" + (f"_{s['night']}" if s["source"] == "auto" else "")
            cache = Path(s["cache"]).expanduser() / tag
        seg = self.segmenter
        t0 = time.perf_counter()
        self.data.prepare(
            "mask",
            lambda smp: pseudo_mask(smp["ir"], smp["vis"], seg, s["source"], s["night"]),
            cache=cache,
            progress=self.progress,
        )
        self.pseudo_seconds = time.perf_counter() - t0

    # -- one step ----------------------------------------------------------------------------------------------
    def losses(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """``(L, parts)`` of one batch (with the guides the config switches on)."""
        dev = self.device
        ir, vis = self.on_device(batch)
        boxes = masks = None
        if self.uses_det:
            from ..data.labels import Boxes

            boxes = []
            for b in batch["boxes"]:
                lab = torch.tensor([self.mapping[int(c)] for c in b.labels.tolist()], dtype=torch.int64)
                boxes.append(Boxes(b.xyxy.to(dev), lab.to(dev), tuple(self.detector.class_names)))
        if self.uses_seg:
            masks = batch["mask"].to(dev).long()
        with autocast():  # the run's precision (config key ``amp``; none outside train())
            out = self.net.outputs(ir, vis)
            return self.loss(out, boxes=boxes, masks=masks)

    def train_step(self, batch: dict, ctx) -> dict:
        self.net.train()
        loss, parts = self.losses(batch)
        self.step(loss, inputs=self.net.parameters())
        return parts

    def on_epoch_end(self, epoch: int, ctx) -> dict:
        self.sched.step(ctx["epoch_metrics"].get("total", 0.0))
        return {"lr": self.opt.param_groups[0]["lr"]}

    def stages(self) -> list[Stage]:
        return [Stage("train", self.cfg["epochs"], self.data, self.train_step, on_epoch_end=self.on_epoch_end)]

    # -- end of training ----------------------------------------------------------------------------------------
    def export(self, path: str | Path) -> Path:
        cfg, tr = self.cfg, self.trainer
        own = ("variant", "guidance", "loss", "detector", "segmenter", "seg", "optim", "amp")
        meta = self.export_metadata(None, **{k: cfg[k] for k in own})  # the network config: TSJNet.save writes it
        meta["time_s"] = json.dumps(strict_json(tr.timings if tr else {}))
        if str(path).endswith("_fp16.safetensors") or cfg["export_fp16"]:
            net = TSJNet(variant=None, config=self.net.config)
            net.load_state_dict(self.net.state_dict())
            return net.half().save(path, meta)
        return self.net.save(path, meta)


def train_tsjnet(
    cfg: dict, out: str | Path, export: str | Path | None = None, progress: bool = True, resume: str = "auto"
) -> dict:
    """``ivfuse.engine.train("tsjnet", ...)``."""
    return train("tsjnet", cfg, out, export, progress, resume)

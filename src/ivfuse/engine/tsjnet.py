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
(:class:`MergedSegmenter`: ``log Σ_k∈c softmax_k``). ``seg.pseudo: labels`` uses the dataset's own masks (MSRS
``Segmentation_labels`` / FMB when the user has them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_ycbcr
from torch import nn

from ..errors import InputError, suggest
from ..losses.tsjnet import DetectionLoss, MFFLoss, SegmentationLoss, TSJNetLoss
from ..models.tsjnet import TSJNet
from .data import BatchSource, RandomCrop, RandomFlip, load_samples
from .recipe import Recipe, register_recipe, strict_json, train, validate_fusion
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
]  # fmt: skip

GUIDANCE = ("both", "det", "seg", "none")
PSEUDO_SOURCES = ("auto", "vis", "ir", "mean")

MSRS_SEG_CLASSES = ("unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump")
"""MSRS ``Segmentation_labels`` class ids 0..8."""

CITYSCAPES_TO_MSRS = {
    "car": "car", "truck": "car", "bus": "car", "train": "car",
    "person": "person", "rider": "person",
    "bicycle": "bike", "motorcycle": "bike",
}  # fmt: skip
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
    from ..tasks.segmenters import CITYSCAPES_CLASSES

    lut = _lut(src_names or CITYSCAPES_CLASSES).to(labels.device)
    return lut[labels.long()].to(torch.uint8)


class MergedSegmenter(nn.Module):
    """A Cityscapes segmenter whose logits are merged into MSRS' classes: ``log Σ_{k→c} softmax(z)_k`` per MSRS
    class ``c`` (classes without a source get a large negative log-probability). The cross-entropy of these
    log-probabilities is the cross-entropy of the merged class probabilities."""

    def __init__(self, segmenter: nn.Module, src_names=None, dst_names=MSRS_SEG_CLASSES) -> None:
        super().__init__()
        from ..tasks.segmenters import CITYSCAPES_CLASSES

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
def pseudo_mask(ir: torch.Tensor, vis: torch.Tensor, segmenter: nn.Module, source: str = "auto",
                night: float = 0.2) -> torch.Tensor:  # fmt: skip
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


@register_recipe("tsjnet")
class TSJNetRecipe(Recipe):
    """TSJNet, its frozen guides, Adam + plateau schedule and the data from a config (configs/tsjnet.yaml)."""

    @classmethod
    def check(cls, cfg: dict) -> list[str]:
        if cfg["guidance"] not in GUIDANCE:
            raise suggest(cfg["guidance"], GUIDANCE, "TSJNet guidance")
        if cfg["seg"]["pseudo"] not in ("espnetv2", "labels"):
            raise suggest(cfg["seg"]["pseudo"], ("espnetv2", "labels"), "seg.pseudo")
        if cfg["seg"]["source"] not in PSEUDO_SOURCES:
            raise suggest(cfg["seg"]["source"], PSEUDO_SOURCES, "seg.source")
        if cfg["epochs"] < 0:
            raise InputError(f"config key 'epochs' must be >= 0, got {cfg['epochs']}")
        crop = cfg["data"]["crop"]
        if crop is not None and (not isinstance(crop, list) or len(crop) != 2):
            raise InputError(f"config key 'data.crop' must be [height, width] or null (full size), got {crop}")
        if (crop is not None and cfg["guidance"] in ("both", "det") and str(cfg["detector"]["name"]).startswith("yolo")
                and any(int(c) % 32 for c in crop)):  # fmt: skip
            raise InputError(f"data.crop={crop}: the YOLOv5 guide needs crop sides that are multiples of 32 (e.g. [128, 128])")
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
        mff = MFFLoss(alpha=tuple(lc["alpha"]), ssim=lc["ssim"], intensity=lc["intensity"], gradient=lc["gradient"],
                      div_on=lc["div_on"])  # fmt: skip
        det = seg = None
        if self.uses_det:
            from ..tasks.detectors import create_detector
            from ..tasks.downstream import class_mapping

            d = cfg["detector"]
            self.detector = create_detector(d["name"], **({} if d["weights"] is None else {"weights": d["weights"]}))
            det = DetectionLoss(self.detector.to(dev).eval(), terms=d["terms"])
        if self.uses_seg:
            self.segmenter = self._segmenter().to(dev)
            seg = SegmentationLoss(MergedSegmenter(self.segmenter) if cfg["seg"]["pseudo"] == "espnetv2" else self.segmenter)
        self.loss = TSJNetLoss(mff, det, seg, det_weight=lc["det"], seg_weight=lc["seg"])
        o = cfg["optim"]
        self.opt = torch.optim.Adam(self.net.parameters(), lr=o["lr"])
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode="min", factor=o["factor"],
                                                                patience=o["patience"])  # fmt: skip
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
            raise InputError("seg.pseudo=labels: some training pairs have no segmentation mask; use seg.pseudo=espnetv2")

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
        self.data.prepare("mask", lambda smp: pseudo_mask(smp["ir"], smp["vis"], seg, s["source"], s["night"]),
                          cache=cache, progress=self.progress)  # fmt: skip
        self.pseudo_seconds = time.perf_counter() - t0

    # -- one step ----------------------------------------------------------------------------------------------
    def losses(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """``(L, parts)`` of one batch (with the guides the config switches on)."""
        dev = self.device
        ir, vis = batch["ir"].to(dev), batch["vis"].to(dev)
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
    def validate(self) -> dict:
        return validate_fusion(self.net, self.cfg.get("val") or {}, self.device)

    def export(self, path: str | Path) -> Path:
        cfg = self.cfg
        tr = self.trainer
        meta = {
            "training": json.dumps({k: cfg[k] for k in ("variant", "guidance", "loss", "detector", "segmenter", "seg",
                                                          "data", "optim", "epochs", "seed", "amp")}),
            "metrics": json.dumps(strict_json(tr.metrics.get("val", {}) if tr else {})),
            "time_s": json.dumps(strict_json(tr.timings if tr else {})),
        }  # fmt: skip
        if str(path).endswith("_fp16.safetensors") or cfg["export_fp16"]:
            net = TSJNet(variant=None, config=self.net.config)
            net.load_state_dict(self.net.state_dict())
            return net.half().save(path, meta)
        return self.net.save(path, meta)


def train_tsjnet(cfg: dict, out: str | Path, export: str | Path | None = None, progress: bool = True,
                 resume: str = "auto") -> dict:  # fmt: skip
    """``ivfuse.engine.train("tsjnet", ...)``."""
    return train("tsjnet", cfg, out, export, progress, resume)

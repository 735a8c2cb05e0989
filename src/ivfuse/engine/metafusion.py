"""MetaFusion training (Zhao et al., CVPR 2023), Algorithm 1, as a registered recipe of :func:`ivfuse.engine.train`.

Stages: ``pretrain_f`` (F with L_f), then for r = 1..R: ``det_r`` (fine-tune D on F's fused images, SGD with the
learning rate decayed ×``det_decay`` per round) and ``mfe_r`` (outer updates of F every batch, inner updates of
MFE every N epochs). Modes (the paper's ablations):

* ``metafusion``: as above, guided levels ``levels``;
* ``sofusion``: F and D trained separately (pretrain F, fine-tune D; no MFE);
* ``cofusion``: D's loss as a constraint on F: rounds of ``det_r`` then ``co_r`` (θ_F ← L_f + λ_d L_det through
  the fixed D on labelled pairs).

**Outer update (Eq. 6):** θ_F ← θ_F − β_F ∇(L_f + λ_g Σ_j L_g) with MFE and D fixed.

**Target-aware terms (ivfuse's extension for issue #9; off by default = the paper's objective):**
``target.intensity`` = λ_t adds λ_t·mean_{boxes}|Y_F − T| to L_f wherever L_f is used (pretraining, outer, inner
meta-test, CoFusion), over the pixels inside the labelled boxes of the ``data.train`` pairs (pairs without labels
contribute nothing), T = the infrared image (``source: ir``) or max(IR, Y) (``source: max``); ``target.det`` = λ_det
adds a detection loss on F's fused image to the outer update, on the labelled samples of the batch, from D (fixed
there, as in CoFusion; ``target.detector: d``) or from a frozen copy of D's initial weights (``frozen``: e.g. the
COCO YOLOv5n, the guidance TIM uses). Both need labelled pairs in ``data.train`` (e.g. ``{name: msrs, split:
dev-train, labels: infrared}``).

**Inner update (Eqs. 1-5):** on a meta-train batch, θ_F' = θ_F − β_F' ∇_θF Σ_j L_g (kept in the graph,
``create_graph=True``); L_f of F(θ_F') on a meta-test batch is back-propagated to θ_MFG and θ_FT *through*
θ_F' (second order; :func:`~ivfuse.engine.step.virtual_step` and :func:`~ivfuse.engine.step.call_with`); F
itself is not changed.

The detector features F_e are computed from F's fused image with D fixed and are not differentiated (they are the
semantic target of the embedding).

**Under torchrun** the outer updates of F and the updates of D are data-parallel (each rank a shard of the global
batch, gradients averaged by :class:`~ivfuse.engine.step.OptimStep`). The inner phase is *replicated*: every rank
draws the same whole meta-train/meta-test batches (``meta_batches`` does not shard), computes the same virtual
step θ_F' and the same second-order MFE gradient, and steps MFE without communication (``step_mfe`` has
``sync=False``). Sharding it instead would make θ_F' depend on the world size (a virtual step on B/W samples);
replicated, the result equals the single-process run for any number of processes, at the price of the inner
phase not being sped up.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import InputError, suggest
from ..losses import FusionLoss
from ..models.metafusion import MetaFeatureEmbedding, MetaFusionNet, guide_loss
from ..tasks.detectors import DETECTOR_CLIP, create_detector, detector_optimizer
from .checkpoint import export_safetensors
from .config import CROP, Limit
from .data import BatchSource, RandomCrop, load_samples
from .recipe import Recipe, refuse_held_out, register_recipe, train
from .step import OptimStep, call_with, virtual_step
from .trainer import Stage

__all__ = ["MODES", "MetaFusionRecipe", "box_mask", "train_metafusion"]

MODES = ("metafusion", "sofusion", "cofusion")


@register_recipe("metafusion")
class MetaFusionRecipe(Recipe):
    """F, MFE, D, their optimisers, data and the stage list from a config dict (see configs/metafusion.yaml)."""

    fusion_attr = "F"  # the network the default validate() scores
    limits = {
        "epochs.*": Limit(min=0),
        "rounds": Limit(min=1),
        "target.intensity": Limit(min=0),
        "target.det": Limit(min=0),
        "data.crop": CROP,
    }

    @classmethod
    def check(cls, cfg: dict) -> list[str]:
        if cfg["mode"] not in MODES:
            raise suggest(cfg["mode"], MODES, "MetaFusion mode")
        ep, inner = cfg["epochs"], cfg["inner"]
        if cfg["mode"] == "metafusion" and ep["mfe"] > 0 and inner["updates"] > 0:
            if inner["every"] < 1:
                raise InputError(f"config key 'inner.every' must be >= 1, got {inner['every']}")
            if ep["mfe"] < inner["every"]:
                raise InputError(
                    f"inner.every={inner['every']} > epochs.mfe={ep['mfe']}: the inner (meta) update of MFE would "
                    f"never run; lower inner.every, raise epochs.mfe, or set inner.updates=0 to train without it"
                )
        t = cfg["target"]
        if t["source"] not in ("ir", "max"):
            raise suggest(t["source"], ("ir", "max"), "target.source")
        if t["detector"] not in ("d", "frozen"):
            raise suggest(t["detector"], ("d", "frozen"), "target.detector")
        for key in ("train", "detection"):
            refuse_held_out(cfg["data"][key], f"data.{key}")
        return []

    def build(self) -> None:
        cfg, dev = self.cfg, self.device
        self.F = MetaFusionNet(width=cfg["fusion"]["width"], colour=cfg["fusion"]["colour"]).to(dev)
        dcfg = cfg["detector"]
        w = dcfg.get("weights")
        kw = {} if w is None else {"weights": None if w == "scratch" else w}
        self.D = create_detector(dcfg["name"], **kw).to(dev)
        self.D_task = None  # target.detector=frozen: D's initial weights, never trained (not checkpointed)
        if cfg["target"]["det"] and cfg["target"]["detector"] == "frozen":
            self.D_task = create_detector(dcfg["name"], **kw).to(dev).eval().requires_grad_(False)
        with torch.no_grad():  # channels of the detector stages (DFB1-3), whatever the YOLOv5 size
            det_ch = [f.shape[1] for f in self.D.eval().features(torch.zeros(1, 3, 64, 64, device=dev))]
        self.levels = list(cfg["levels"])
        self.MFE = MetaFeatureEmbedding(self.F.feature_channels, det_ch, self.levels, cfg["mfe"]["mid"]).to(dev)
        self.loss_f = FusionLoss(cfg["loss"])
        o = cfg["optim"]
        self.opt_f = torch.optim.Adam(self.F.parameters(), lr=o["lr_f"])
        self.opt_mfe = torch.optim.Adam(self.MFE.parameters(), lr=o["lr_mfe"])
        self.opt_d = detector_optimizer(self.D, o["lr_det"])
        # the inner phase runs identically on every rank of a torchrun job (whole meta batches, no all-reduce)
        self.step_f, self.step_mfe = OptimStep(self.opt_f), OptimStep(self.opt_mfe, sync=False)
        self.step_d = OptimStep(self.opt_d, clip=DETECTOR_CLIP)
        self.modules = {"F": self.F, "MFE": self.MFE, "D": self.D}
        self.optimizers = {"F": self.opt_f, "MFE": self.opt_mfe, "D": self.opt_d}
        self.load_data()

    def load_data(self) -> None:
        cfg, d = self.cfg, self.cfg["data"]
        seed = cfg.get("seed", 0)
        t = cfg["target"]
        self.pairs = load_samples(d["train"], with_boxes=bool(t["intensity"] or t["det"]))
        if (t["intensity"] or t["det"]) and not any(
            s["boxes"] is not None and len(s["boxes"].xyxy) for s in self.pairs
        ):
            raise InputError(
                "target.intensity/target.det > 0 need labelled pairs in data.train "
                "(e.g. {name: msrs, split: dev-train, labels: infrared}); none of them has boxes"
            )
        crop = [RandomCrop(d["crop"])]
        self.batches = BatchSource(self.pairs, d["batch"], crop, d.get("max_batches"), seed)
        self.meta_batches = BatchSource(self.pairs, d["batch"], crop, None, seed, shard=False)
        needs_det = cfg["epochs"]["det"] > 0 or cfg["mode"] == "cofusion"  # CoFusion trains F on labelled pairs
        self.det_pairs = load_samples(d["detection"], with_boxes=True) if needs_det else []
        self.det_batches = (
            BatchSource(self.det_pairs, d["det_batch"], [RandomCrop(d["det_crop"])], d.get("max_batches"), seed)
            if self.det_pairs
            else None
        )

    # -- pieces -------------------------------------------------------------------------------------------------
    def _lum(self, vis: torch.Tensor) -> torch.Tensor:
        return self.F.split(vis)[1]

    def fusion_loss(self, y: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, boxes) -> tuple[torch.Tensor, dict]:
        """L_f (``loss``) plus the target term λ_t·mean_{box pixels}|Y_F − T| when ``target.intensity`` > 0."""
        lum = self._lum(vis)
        loss, parts = self.loss_f(y, ir, lum)
        lam = self.cfg["target"]["intensity"]
        if lam and boxes is not None:
            m = box_mask(boxes, y.shape, y.device)
            if m.sum() > 0:
                t = ir if self.cfg["target"]["source"] == "ir" else torch.maximum(ir, lum)
                lt = ((y - t).abs() * m).sum() / m.sum()
                loss = loss + lam * lt
                parts = {**parts, "target": float(lt.detach())}
        return loss, parts

    def det_features(self, fused: torch.Tensor) -> list[torch.Tensor]:
        self.D.eval()
        with torch.no_grad():
            return self.D.features(fused)

    # -- stage steps --------------------------------------------------------------------------------------------
    def step_pretrain(self, batch: dict, ctx) -> dict:
        ir, vis = self.on_device(batch)
        y, _, _ = self.F(ir, vis, with_features=True)
        loss, parts = self.fusion_loss(y, ir, vis, batch.get("boxes"))
        self.step_f(loss)
        return {"L_f": float(loss.detach()), **parts}

    def step_det(self, batch: dict, ctx) -> dict:
        ir, vis = self.on_device(batch)
        with torch.no_grad():
            fused = self.F(ir, vis)
        self.D.train()
        loss, parts = self.D.loss(fused, batch["boxes"])
        self.step_d(loss)
        return {"L_det": float(loss.detach()), **parts}

    def step_outer(self, batch: dict, ctx) -> dict:
        ir, vis = self.on_device(batch)
        y, fused, feats = self.F(ir, vis, with_features=True)
        lf, _ = self.fusion_loss(y, ir, vis, batch.get("boxes"))
        fm, ft = self.MFE(feats, self.det_features(fused.detach()))
        lg = guide_loss(fm, ft)
        total, out = lf + self.cfg["lambda_g"] * lg, {"L_f": float(lf.detach()), "L_g": float(lg.detach())}
        lam_d = self.cfg["target"]["det"]
        idx = [i for i, b in enumerate(batch.get("boxes") or []) if b is not None] if lam_d else []
        if idx:  # the detector is fixed (eval mode, not stepped here); its loss reaches F through the fused image
            det = self.D_task if self.D_task is not None else self.D.eval()
            ld, _ = det.loss(fused[idx], [batch["boxes"][i] for i in idx])
            total = total + lam_d * ld
            out["L_det"] = float(ld.detach())
        self.step_f(total, inputs=self.F.parameters())
        return out

    def step_cofusion(self, batch: dict, ctx) -> dict:
        ir, vis = self.on_device(batch)
        y, fused, _ = self.F(ir, vis, with_features=True)
        lf, _ = self.fusion_loss(y, ir, vis, batch.get("boxes"))
        self.D.eval()
        ld, _ = self.D.loss(fused, batch["boxes"])
        self.step_f(lf + self.cfg["lambda_d"] * ld, inputs=self.F.parameters())
        return {"L_f": float(lf.detach()), "L_det": float(ld.detach())}

    def inner_update(self, meta_train: dict, meta_test: dict, first_order: bool = False) -> float:
        """One inner (meta) update of MFG/FT through the virtual step θ_F' (returns L_f on the meta-test batch).

        θ_F' = θ_F − β_F' ∇_θF L_g is :func:`~ivfuse.engine.step.virtual_step` (kept in the graph); L_f of F(θ_F')
        reaches MFE only through θ_F'. ``first_order=True`` cuts that second-order path — then MFE receives no
        gradient, which the tests use to show that the update really flows through θ_F'.
        """
        ir1, vis1 = self.on_device(meta_train)
        ir2, vis2 = self.on_device(meta_test)
        _, fused1, feats1 = self.F(ir1, vis1, with_features=True)
        fm, ft = self.MFE(feats1, self.det_features(fused1.detach()))
        virtual = virtual_step(self.F, guide_loss(fm, ft), self.cfg["optim"]["lr_inner"], first_order=first_order)
        y2, _, _ = call_with(self.F, virtual, ir2, vis2, with_features=True)
        lf, _ = self.fusion_loss(y2, ir2, vis2, meta_test.get("boxes"))
        params = list(self.MFE.parameters())
        grads = torch.autograd.grad(lf, params, allow_unused=True)
        self.step_mfe.step_with_grads(dict(zip(params, grads)))
        return float(lf.detach())

    def inner_phase(self, epoch: int, ctx) -> dict:
        """n inner updates every N epochs; meta-train/meta-test batches are consecutive batches of passes over the
        pairs drawn for (stage, epoch), so they are reproducible and resume exactly."""
        inner = self.cfg["inner"]
        if inner["updates"] <= 0 or epoch % inner["every"] != 0:
            return {}
        key, k = f"{ctx.get('stage', 'mfe')}/inner/{epoch}", 0
        it = self.meta_batches.epoch(k, key)
        vals = []
        for _ in range(inner["updates"]):
            pair = []
            while len(pair) < 2:
                b = next(it, None)
                if b is None:
                    k += 1
                    it = self.meta_batches.epoch(k, key)
                    continue
                pair.append(b)
            vals.append(self.inner_update(pair[0], pair[1]))
        return {"L_f_meta": sum(vals) / len(vals)}

    # -- stage list ---------------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        c, ep = self.cfg, self.cfg["epochs"]
        st = [Stage("pretrain_f", ep["pretrain"], self.batches, self.step_pretrain)]
        mode = c["mode"]
        rounds = 1 if mode == "sofusion" else c["rounds"]
        for r in range(1, rounds + 1):
            if self.det_batches is not None and ep["det"] > 0:
                lr = c["optim"]["lr_det"] * c["optim"]["det_decay"] ** (r - 1)
                st.append(Stage(f"det_{r}", ep["det"], self.det_batches, self.step_det, on_start=self._set_det_lr(lr)))
            if mode == "metafusion":
                st.append(Stage(f"mfe_{r}", ep["mfe"], self.batches, self.step_outer, on_epoch_end=self.inner_phase))
            elif mode == "cofusion":
                st.append(Stage(f"co_{r}", ep["mfe"], self.det_batches, self.step_cofusion))
        return st

    def _set_det_lr(self, lr: float):
        def fn(ctx):
            for g in self.opt_d.param_groups:
                g["lr"] = lr

        return fn

    # -- end of training ----------------------------------------------------------------------------------------
    def export(self, path: str | Path) -> Path:
        c = self.cfg
        config = {"width": c["fusion"]["width"], "colour": c["fusion"]["colour"], "blocks": 3}
        meta = self.export_metadata(
            config,
            data=c["data"]["train"],
            detection_data=c["data"]["detection"],
            mode=c["mode"],
            levels=c["levels"],
            detector=c["detector"],
            rounds=c["rounds"],
            loss=c["loss"],
            target=c["target"],
        )
        return export_safetensors(path, self.F.state_dict(), meta)


def box_mask(boxes, shape: torch.Size, device: torch.device | str = "cpu") -> torch.Tensor:
    """``B×1×H×W`` float mask, 1 inside the boxes of each sample (``boxes``: a list of :class:`Boxes` or ``None``)."""
    b_, _, h, w = shape
    m = torch.zeros(b_, 1, h, w, device=device)
    for i, bx in enumerate(boxes):
        if bx is None:
            continue
        for x1, y1, x2, y2 in bx.xyxy.tolist():
            x1, y1 = max(0, int(x1)), max(0, int(y1))
            x2, y2 = min(w, math.ceil(x2)), min(h, math.ceil(y2))
            if x2 > x1 and y2 > y1:
                m[i, 0, y1:y2, x1:x2] = 1
    return m


def train_metafusion(
    cfg: dict, out: str | Path, export: str | Path | None = None, progress: bool = True, resume: str = "auto"
) -> dict:
    """``ivfuse.engine.train("metafusion", ...)``: Algorithm 1 (or an ablation) with ``cfg``; writes ``out/last.pt``,
    ``out/final.pt`` (F, MFE, D states, config, metrics), ``summary.json`` and optionally a safetensors export of F."""
    return train("metafusion", cfg, out, export, progress, resume)

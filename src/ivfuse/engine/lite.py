"""Training recipe of the real-time ``lite`` fusion model (:mod:`ivfuse.models.lite`).

``ivfuse train lite preset=cpu out=runs/lite export=lite.safetensors`` trains :class:`LiteFusionNet` with
MetaFusion's fusion loss (:class:`ivfuse.losses.FusionLoss`: SSIM to both sources + ``|F − max(IR, Y)|`` + ``| |∇F|
− max(|∇IR|, |∇Y|) |``) on random crops of MSRS dev-train (no labels used), Adam with a cosine learning rate,
optionally plus a **target-preserving term** (``target.weight > 0``, issue 20: the fused luminance is pulled to the
infrared image inside the labelled boxes of ``target.classes`` — persons by default — and to the pixel average
elsewhere; see :func:`box_mask` and :func:`target_loss`), optionally plus a **moving judge** (``judge.weight > 0``,
issue 20: after the crop epochs, ``judge.epochs`` more on whole training pairs, where a COCO detector is fine-tuned
on the fused images as training goes on — the bench's ``retrain`` judge, moving — and its detection loss on the fused
image reaches the net; MetaFusion's mutual promotion and TIM's task guidance with a judge that adapts to the fusion
instead of the frozen COCO one; see :meth:`LiteRecipe.judge_step`) or, with ``judge.mode=meta``, a **learnable fusion
loss** trained by that judge (TDFusion's idea, issue 20 C4: :mod:`ivfuse.losses.learned`,
:meth:`LiteRecipe.meta_step` — the detection loss reaches the net only through the loss it learns), optionally plus
**distillation** from a bigger fusion method (``teacher.method=tim``): an L1 term ``λ_t·|F − T|`` to the teacher's
fused luminance T, computed once per training pair at full resolution (cached as safetensors) and cropped/flipped with
the pair. The shipped model is
distilled from the task-guided TIM (see ``docs/deployment.md``: the fusion loss alone did not reach the pixel
average's zero-shot mAP50). The export (safetensors) carries the config, data, epochs, seed, teacher, wall time and
the validation metrics as metadata; ``create_model("lite")`` loads the shipped one.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_ycbcr, ycbcr_to_rgb

from ..config import Limit
from ..data.labels import Boxes
from ..errors import InputError, suggest
from ..losses import FusionLoss, LossGenerator, learned_fusion_loss
from ..models.lite import LiteFusionNet
from .checkpoint import export_safetensors
from .data import BatchSource, RandomCrop, RandomFlip, load_samples
from .recipe import Recipe, refuse_held_out, register_recipe
from .step import OptimStep
from .trainer import Stage

__all__ = ["LiteRecipe", "teacher_cache_dir", "box_mask", "target_loss"]


def box_mask(boxes, hw: tuple[int, int], classes, soften: float = 0.0) -> torch.Tensor:
    """``1×H×W`` float mask in [0, 1]: 1 inside the boxes whose class name is in ``classes`` (``boxes``: a
    :class:`ivfuse.data.labels.Boxes` or ``None``), edges blurred by a Gaussian of sigma ``soften`` pixels."""
    h, w = hw
    m = torch.zeros(1, h, w)
    if boxes is not None and len(boxes.labels):
        want = {i for i, n in enumerate(boxes.names) if n in set(classes)}
        for (x1, y1, x2, y2), c in zip(boxes.xyxy.tolist(), boxes.labels.tolist()):
            if c in want:
                m[:, max(0, int(y1)) : min(h, int(round(y2))), max(0, int(x1)) : min(w, int(round(x2)))] = 1.0
    if soften > 0 and m.any():
        from kornia.filters import gaussian_blur2d

        k = 2 * int(3 * soften) + 1
        m = gaussian_blur2d(m[None], (k, k), (soften, soften), border_type="replicate")[0].clamp(0, 1)
    return m


def target_loss(
    fused: torch.Tensor, ir: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, boost: float = 10.0
) -> torch.Tensor:
    """Weighted L1 to the "oracle mix" ``T = m·IR + (1 − m)·(IR + Y)/2`` (all ``B×1×H×W``, ``mask`` in [0, 1]),
    pixel weights ``1 + boost·m`` normalised to a weighted mean: the infrared image inside the target boxes (where it
    keeps the warm targets' contrast), the pixel average elsewhere (which keeps cars and bicycles, issue 20's table)."""
    t = mask * ir + (1 - mask) * (ir + y) / 2
    wgt = 1 + boost * mask
    return (wgt * (fused - t).abs()).sum() / wgt.sum()


def teacher_cache_dir(t: dict) -> Path:
    """Folder of the teacher images of a config's ``teacher`` section (keyed by method and weights file)."""
    import hashlib
    import os

    if t.get("cache"):
        return Path(t["cache"]).expanduser()
    w = t.get("weights")
    tag = hashlib.sha256(Path(w).read_bytes()).hexdigest()[:12] if w and Path(w).is_file() else "default"
    if not w:  # the shipped default: key by the installed file so a new release does not reuse stale images
        from ..models.base import DEFAULT_WEIGHTS, default_weights_path

        f = default_weights_path(t["method"]) if t["method"] in DEFAULT_WEIGHTS else None
        tag = hashlib.sha256(f.read_bytes()).hexdigest()[:12] if f is not None else "default"
    root = Path(os.environ.get("IVFUSE_CACHE", "~/.cache/ivfuse")).expanduser()
    return root / "lite_teacher" / f"{t['method']}-{tag}"


@register_recipe("lite")
class LiteRecipe(Recipe):
    """See the module docstring; config: ``configs/lite.yaml`` (``lite_cpu.yaml`` = the shipped model's)."""

    limits = {
        "width": Limit(min=1),
        "epochs": Limit(min=1),
        "crop": Limit(min=8, items=("height", "width")),
        "batch": Limit(min=1),
        "target.weight": Limit(min=0),
        "target.boost": Limit(min=0),
        "target.soften": Limit(min=0),
        "judge.weight": Limit(min=0),
        "judge.epochs": Limit(min=0),
        "judge.batch": Limit(min=1),
        "judge.imgsz": Limit(min=32),
        "judge.meta_lr": Limit(above=0),
        "judge.inner_lr": Limit(above=0),
        "judge.gen_width": Limit(min=1),
        "judge.gradient": Limit(min=0),
    }

    @classmethod
    def check(cls, cfg: dict) -> list[str]:
        refuse_held_out(cfg["data"], "data")
        t, tg, jg = cfg["teacher"], cfg["target"], cfg["judge"]
        if float(jg["weight"]) > 0:
            from ..tasks.detectors import list_detectors

            if jg["detector"] not in list_detectors():
                raise suggest(jg["detector"], list_detectors(), "judge detector")
            if jg["weights"] and not Path(jg["weights"]).is_file():
                raise InputError(f"{jg['weights']}: judge detector weights file not found")
            if int(jg["epochs"]) < 1:
                raise InputError("config key 'judge.epochs' must be >= 1 when 'judge.weight' > 0")
        if jg["mode"] not in ("loss", "meta"):
            raise suggest(jg["mode"], ["loss", "meta"], "judge mode")
        if float(tg["weight"]) > 0 or float(jg["weight"]) > 0:
            if float(tg["weight"]) > 0 and not tg["classes"]:
                raise InputError("config key 'target.classes' is empty: name the box classes that keep the IR image")
            if tg["labels"] not in ("infrared", "visible", "union"):
                raise suggest(tg["labels"], ["infrared", "visible", "union"], "target label set")
        learns = (
            t["method"] or float(tg["weight"]) or float(jg["weight"]) or any(float(v) for v in cfg["loss"].values())
        )
        if not learns:
            raise InputError(
                "lite has nothing to learn: every 'loss' weight is 0, 'target.weight' and 'judge.weight' "
                "are 0 and no 'teacher.method' is set"
            )
        if t["method"]:
            from ..models import list_models

            if t["method"] not in list_models():
                raise suggest(t["method"], list_models(), "teacher method")
            if t["weights"] and not Path(t["weights"]).is_file():
                raise InputError(f"{t['weights']}: teacher weights file not found")
        return []

    def build(self) -> None:
        c = self.cfg
        self.net = LiteFusionNet(c["width"]).to(self.device)
        self.loss = FusionLoss(c["loss"])
        self.opt = torch.optim.Adam(self.net.parameters(), lr=c["lr"])
        self.step_net = OptimStep(self.opt, clip=c["clip"])
        self.modules, self.optimizers = {"net": self.net}, {"net": self.opt}
        tg, jg = c["target"], c["judge"]
        use_target, use_judge = float(tg["weight"]) > 0, float(jg["weight"]) > 0
        what = "target.weight > 0" if use_target else "judge.weight > 0"
        labelled = use_target or use_judge
        specs = [{**d, "labels": d.get("labels", tg["labels"])} for d in c["data"]] if labelled else c["data"]
        try:
            samples = load_samples(specs, with_boxes=labelled)
        except InputError as e:
            if not labelled:
                raise
            raise InputError(f"{what} needs detection labels ({tg['labels']}) for every training set: {e}") from None
        if labelled and not any(s["boxes"] is not None for s in samples):
            raise InputError(f"{what} needs detection labels, and no training pair of {c['data']} has any")
        if use_target:
            for s in samples:
                s["target_mask"] = box_mask(s["boxes"], tuple(s["ir"].shape[-2:]), tg["classes"], tg["soften"])
        if use_judge:
            self._build_judge(samples)
        self.G = None
        if use_judge and jg["mode"] == "meta":  # the learnable fusion loss (C4): trains the net in every stage
            self.G = LossGenerator(int(jg["gen_width"])).to(self.device)
            self.opt_g = torch.optim.Adam(self.G.parameters(), lr=float(jg["meta_lr"]))
            self.step_g = OptimStep(self.opt_g, clip=c["clip"])
            self.modules["G"], self.optimizers["G"] = self.G, self.opt_g
        for s in samples:  # the crop stage uses no boxes
            s.pop("boxes", None)
        self.data = BatchSource(
            samples, c["batch"], [RandomCrop(c["crop"]), RandomFlip()], c.get("max_batches"), seed=c["seed"]
        )
        if c["teacher"]["method"]:
            self.data.prepare("teacher", self._teacher_fn(), teacher_cache_dir(c["teacher"]), progress=self.progress)
        self.total_steps = c["epochs"] * len(self.data)

    def _build_judge(self, samples: list[dict]) -> None:
        """The moving judge: the detector, its optimiser and a source of whole training pairs with its boxes."""
        from ..tasks.detectors import DETECTOR_CLIP, create_detector, detector_optimizer
        from ..tasks.downstream import class_mapping

        jg = self.cfg["judge"]
        kw = {"weights": jg["weights"]} if jg["weights"] else {}
        self.D = create_detector(jg["detector"], **kw).to(self.device)
        self.opt_d = detector_optimizer(self.D, float(jg["det_lr"]))
        self.step_d = OptimStep(self.opt_d, clip=DETECTOR_CLIP)
        names = self.D.class_names
        judged = []
        for s in samples:
            b = s["boxes"]
            if b is not None:
                b = b.remap(class_mapping(b.names, names), names)
            judged.append({**s, "boxes": b if b is not None else Boxes.empty(names)})
        self.judge_data = BatchSource(
            judged, int(jg["batch"]), [RandomFlip()], self.cfg.get("max_batches"), seed=self.cfg["seed"]
        )
        self.modules["D"], self.optimizers["D"] = self.D, self.opt_d

    def _teacher_fn(self):
        """``sample -> 1×H×W`` fused luminance of the teacher (fp32, [0, 1]) on the full pair."""
        from ..models import create_model

        t = self.cfg["teacher"]
        kw = {"weights": t["weights"]} if t["weights"] else {}
        teacher = create_model(t["method"], **kw).to(self.device).eval()

        @torch.no_grad()
        def fn(s: dict) -> torch.Tensor:
            fused = teacher(s["ir"][None].to(self.device), s["vis"][None].to(self.device))
            return (rgb_to_ycbcr(fused)[:, :1] if fused.shape[1] == 3 else fused)[0].float().cpu()

        return fn

    def _set_lr(self, epoch: int) -> None:
        """Cosine decay from ``lr`` to ``lr/20`` over the epochs (a function of the epoch: resumes exactly)."""
        import math

        lr0, n = self.cfg["lr"], self.cfg["epochs"]
        lr = lr0 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * epoch / n)))
        for g in self.opt.param_groups:
            g["lr"] = lr

    def train_step(self, batch: dict, ctx) -> dict:
        if ctx.get("batch", 0) == 0:
            self._set_lr(ctx.get("epoch", 0))
        ir, vis = self.on_device(batch)
        y = rgb_to_ycbcr(vis)[:, :1]
        out = self.net.fuse_luma(ir, y)
        if self.loss.weights:
            loss, parts = self.loss(out, ir, y)
        else:
            loss, parts = out.new_zeros(()), {}
        if "target_mask" in batch:
            lt = target_loss(out, ir, y, batch["target_mask"].to(self.device), float(self.cfg["target"]["boost"]))
            loss = loss + float(self.cfg["target"]["weight"]) * lt
            parts["target"] = float(lt.detach())
        if "teacher" in batch:
            lt = (out - batch["teacher"].to(self.device)).abs().mean()
            loss = loss + self.cfg["teacher"]["weight"] * lt
            parts["teacher"] = float(lt.detach())
        if self.G is not None:  # the learned loss at the generator's current state (its start: w_ir = w_vis = 1/2)
            with torch.no_grad():
                w = self.G(ir, y)
            ll, lparts = learned_fusion_loss(out, ir, y, w, float(self.cfg["judge"]["gradient"]))
            loss = loss + ll
            parts.update({f"learned_{k}": v for k, v in lparts.items()})
        self.step_net(loss)
        return {"loss": float(loss.detach()), **parts}

    def judge_step(self, batch: dict, ctx) -> dict:
        """One step of the judge stage on whole pairs: (1) the net's loss — the crop stage's terms plus ``λ_j`` × the
        detection loss of the current detector (eval mode: BN statistics fixed; not stepped here) on the fused RGB
        image letterboxed to ``judge.imgsz`` — steps the net; (2) the detector takes one fine-tuning step (YOLOv5's
        SGD, train mode) on the same fused images, detached: the judge follows the fusion as the bench's ``retrain``
        judge would on the final images."""

        if self.G is not None:
            return self.meta_step(batch, ctx)
        jg = self.cfg["judge"]
        self._judge_lrs(ctx)
        ir, vis = self.on_device(batch)
        ycc = rgb_to_ycbcr(vis)
        y = ycc[:, :1]
        out = self.net.fuse_luma(ir, y)
        loss, parts = self.loss(out, ir, y) if self.loss.weights else (out.new_zeros(()), {})
        if "target_mask" in batch:
            lt = target_loss(out, ir, y, batch["target_mask"].to(self.device), float(self.cfg["target"]["boost"]))
            loss = loss + float(self.cfg["target"]["weight"]) * lt
            parts["target"] = float(lt.detach())
        images, boxes = self._judge_view(out, ycc, batch["boxes"])
        self.D.eval()
        ld, _ = self.D.loss(images, boxes)
        loss = loss + float(jg["weight"]) * ld
        self.step_net(loss, inputs=list(self.net.parameters()))
        ld_train = self._judge_learns(images.detach(), boxes)
        return {"loss": float(loss.detach()), **parts, "det": float(ld.detach()), "det_train": float(ld_train.detach())}

    def _judge_view(self, out: torch.Tensor, ycc: torch.Tensor, boxes: list) -> tuple[torch.Tensor, list]:
        """The fused luminance ``out`` with the visible chroma of ``ycc`` as RGB (what ``FusionModel.forward``
        returns), letterboxed to ``judge.imgsz`` with its boxes: the images the moving judge sees."""
        from ..tasks.downstream import letterbox_batch

        rgb = ycbcr_to_rgb(torch.cat([out, ycc[:, 1:]], 1)).clamp(0, 1)
        return letterbox_batch(list(rgb), boxes, int(self.cfg["judge"]["imgsz"]))

    def _judge_learns(self, images: torch.Tensor, boxes: list) -> torch.Tensor:
        """The moving judge's fine-tuning step (train mode, YOLOv5's SGD) on detached fused images; its loss."""
        self.D.train()
        ld, _ = self.D.loss(images, boxes)
        self.step_d(ld)
        return ld

    def _judge_lrs(self, ctx) -> None:
        """The judge stage's rates: the net's constant ``judge.lr``; the detector's ``judge.det_lr`` with a linear
        warm-up over the first epoch (a function of epoch and batch: resumes exactly)."""
        jg = self.cfg["judge"]
        n = len(self.judge_data)
        t = ctx.get("epoch", 0) * n + ctx.get("batch", 0)
        for g in self.opt.param_groups:
            g["lr"] = float(jg["lr"])
        for g in self.opt_d.param_groups:
            g["lr"] = float(jg["det_lr"]) * min(1.0, (t + 1) / n)

    def meta_step(self, batch: dict, ctx) -> dict:
        """One step of the judge stage with ``judge.mode=meta`` (TDFusion's meta-learning, arXiv:2412.03240 Sec. 3):

        1. **outer update of the loss generator G**: the net takes a *virtual* SGD step (``judge.inner_lr``) on the
           learned loss of G's current weights, kept in the graph; the moving judge's detection loss (eval mode, BN
           statistics fixed) on the fused images of the virtually updated net is back-propagated through that step
           into G, and only G is stepped (Adam, ``judge.meta_lr``). The virtual and the task batch are the same
           batch (TDFusion's meta-train/meta-test split is not reproduced: with 171 pairs ivfuse keeps every pair in
           both);
        2. **the net's step** on the learned loss with the updated G (no detection loss reaches the net directly);
        3. **the judge's step**: one fine-tuning step of the detector (train mode) on the net's fused images, as in
           :meth:`judge_step`.

        Logged: the learned loss's terms, ``w_ir`` (mean infrared weight) and ``w_ir_person`` (the mean inside the
        labelled persons), the task loss after the virtual step (``det``) and the judge's training loss."""
        from torch.func import functional_call

        from ..tasks.downstream import letterbox_batch

        jg = self.cfg["judge"]
        self._judge_lrs(ctx)
        lam, grad_w, imgsz = float(jg["weight"]), float(jg["gradient"]), int(jg["imgsz"])
        ir, vis = self.on_device(batch)
        ycc = rgb_to_ycbcr(vis)
        y = ycc[:, :1]
        # the virtual step and the task loss at the judge's resolution (the detector sees the pair letterboxed to
        # imgsz anyway; the double backward through the net costs (640/416)^2 ≈ 2.4x more at full size)
        r = min(1.0, imgsz / max(ir.shape[-2:]))
        small = [
            F.interpolate(t, scale_factor=r, mode="bilinear", align_corners=False, recompute_scale_factor=False)
            if r < 1
            else t
            for t in (ir, vis)
        ]
        sy = rgb_to_ycbcr(small[1])[:, :1]
        params = dict(self.net.named_parameters())
        w = self.G(small[0], sy)
        lf, _ = learned_fusion_loss(self.net.fuse_luma(small[0], sy), small[0], sy, w, grad_w)
        grads = torch.autograd.grad(lf, list(params.values()), create_graph=True)
        virtual = {k: p - float(jg["inner_lr"]) * g for (k, p), g in zip(params.items(), grads)}
        sboxes = [Boxes(b.xyxy * r, b.labels, b.names) for b in batch["boxes"]]
        images, boxes = letterbox_batch(list(functional_call(self.net, virtual, tuple(small))), sboxes, imgsz)
        self.D.eval()
        lt, _ = self.D.loss(images, boxes)
        self.step_g(lam * lt, inputs=list(self.G.parameters()))
        with torch.no_grad():
            w = self.G(ir, y)
            person = torch.stack([box_mask(b, tuple(ir.shape[-2:]), ["person"]) for b in batch["boxes"]]).to(w)
        out = self.net.fuse_luma(ir, y)
        loss, parts = learned_fusion_loss(out, ir, y, w, grad_w)
        self.step_net(loss)
        ld_train = self._judge_learns(*self._judge_view(out.detach(), ycc, batch["boxes"]))
        if person.sum() > 0:
            parts["w_ir_person"] = float((w[:, :1] * person).sum() / person.sum())
        return {"loss": float(loss.detach()), **parts, "det": float(lt.detach()), "det_train": float(ld_train.detach())}

    def stages(self) -> list[Stage]:
        st = [Stage("train", self.cfg["epochs"], self.data, self.train_step)]
        if float(self.cfg["judge"]["weight"]) > 0:
            st.append(Stage("judge", int(self.cfg["judge"]["epochs"]), self.judge_data, self.judge_step))
        return st

    def export(self, path: str | Path) -> Path:
        c = self.cfg
        meta = self.export_metadata(
            {"width": c["width"]},
            batch=c["batch"],
            crop=c["crop"],
            lr=c["lr"],
            loss=c["loss"],
            teacher=c["teacher"],
            target=c["target"],
            judge=c["judge"],
        )
        return export_safetensors(path, self.net.state_dict(), meta)

"""Training recipe of the real-time ``lite`` fusion model (:mod:`ivfuse.models.lite`).

``ivfuse train lite preset=cpu out=runs/lite export=lite.safetensors`` trains :class:`LiteFusionNet` with
MetaFusion's fusion loss (:class:`ivfuse.losses.FusionLoss`: SSIM to both sources + ``|F − max(IR, Y)|`` +
``| |∇F| − max(|∇IR|, |∇Y|) |``) on random crops of MSRS dev-train (no labels used), Adam with a cosine learning
rate. The loss is the teacher: no distillation from a bigger net is needed because the lite net is trained
directly on the objective the MetaFusion F of ivfuse is pre-trained with (choice documented in
``docs/deployment.md``). The export (safetensors) carries the config, data, epochs, seed, wall time and the
validation metrics as metadata; ``create_model("lite")`` loads the shipped one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from kornia.color import rgb_to_ycbcr

from ..errors import InputError
from ..losses import FusionLoss
from ..models.lite import LiteFusionNet
from .checkpoint import export_safetensors
from .data import BatchSource, RandomCrop, RandomFlip, load_samples
from .recipe import Recipe, register_recipe, strict_json, validate_fusion
from .step import OptimStep
from .trainer import Stage

__all__ = ["LiteRecipe"]


@register_recipe("lite")
class LiteRecipe(Recipe):
    """See the module docstring; config: ``configs/lite.yaml`` (``lite_cpu.yaml`` = the shipped model's)."""

    @classmethod
    def check(cls, cfg: dict) -> list[str]:
        if cfg["width"] < 1:
            raise InputError(f"config key 'width' must be >= 1, got {cfg['width']}")
        if cfg["epochs"] < 1:
            raise InputError(f"config key 'epochs' must be >= 1, got {cfg['epochs']}")
        for spec in cfg["data"]:
            if isinstance(spec, dict) and spec.get("name") == "msrs" and spec.get("split") in ("dev-val", "test"):
                raise InputError(f"config key 'data' lists msrs:{spec['split']}, a held-out split; train on dev-train")
        return []

    def build(self) -> None:
        c = self.cfg
        self.t0 = time.time()
        self.net = LiteFusionNet(c["width"]).to(self.device)
        self.loss = FusionLoss(c["loss"])
        self.opt = torch.optim.Adam(self.net.parameters(), lr=c["lr"])
        self.step_net = OptimStep(self.opt, clip=c["clip"])
        self.modules, self.optimizers = {"net": self.net}, {"net": self.opt}
        samples = load_samples(c["data"])
        self.data = BatchSource(samples, c["batch"], [RandomCrop(c["crop"]), RandomFlip()], c.get("max_batches"),
                                seed=c["seed"])  # fmt: skip
        self.total_steps = c["epochs"] * len(self.data)

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
        ir, vis = batch["ir"].to(self.device), batch["vis"].to(self.device)
        y = rgb_to_ycbcr(vis)[:, :1]
        loss, parts = self.loss(self.net.fuse_luma(ir, y), ir, y)
        self.step_net(loss)
        return {"loss": float(loss.detach()), **parts}

    def stages(self) -> list[Stage]:
        return [Stage("train", self.cfg["epochs"], self.data, self.train_step)]

    def validate(self) -> dict:
        return validate_fusion(self.net, self.cfg.get("val") or {}, self.device)

    def export(self, path: str | Path) -> Path:
        c = self.cfg
        meta = {"config": json.dumps({"width": c["width"]}),
                "training": json.dumps({"recipe": "lite", "data": c["data"], "epochs": c["epochs"], "batch": c["batch"],
                                        "crop": c["crop"], "lr": c["lr"], "loss": c["loss"], "seed": c["seed"],
                                        "device": str(self.device), "threads": torch.get_num_threads(),
                                        "wall_s": round(time.time() - self.t0, 1)}),
                "metrics": json.dumps(strict_json(self.trainer.metrics.get("val", {}) if self.trainer else {}))}  # fmt: skip
        return export_safetensors(path, self.net.state_dict(), meta)

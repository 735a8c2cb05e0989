"""The toy method's recipe file (#21 item 2): MetaFusion's fusion loss on random crops, Adam, one stage."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from kornia.color import rgb_to_ycbcr

from ivfuse.engine import (
    BatchSource,
    OptimStep,
    RandomCrop,
    Recipe,
    Stage,
    export_safetensors,
    load_samples,
    register_recipe,
)
from ivfuse.losses import FusionLoss

from toy_model import ToyMix


@register_recipe("toy_mix", config=Path(__file__).with_name("toy_mix.yaml"))
class ToyMixRecipe(Recipe):
    def build(self) -> None:
        c = self.cfg
        self.net = ToyMix().to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=c["lr"])
        self.step = OptimStep(self.opt)
        self.loss = FusionLoss(c["loss"])
        self.modules, self.optimizers = {"net": self.net}, {"net": self.opt}
        self.data = BatchSource(
            load_samples(c["data"]), c["batch"], [RandomCrop(c["crop"])], c["max_batches"], c["seed"]
        )

    def train_step(self, batch: dict, ctx) -> dict:
        ir, y = batch["ir"].to(self.device), rgb_to_ycbcr(batch["vis"].to(self.device))[:, :1]
        loss, _ = self.loss(self.net.fuse_luma(ir, y), ir, y)
        self.step(loss)
        return {"loss": float(loss.detach())}

    def stages(self) -> list[Stage]:
        return [Stage("train", self.cfg["epochs"], self.data, self.train_step)]

    def export(self, path: str | Path) -> Path:
        return export_safetensors(path, self.net.state_dict(), {"training": json.dumps({"recipe": "toy_mix"})})

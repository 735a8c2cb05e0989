"""Fine-tuning presets and protocol names of the bench (no torch import: the CLI parser reads them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Recipe", "PRESETS", "PROTOCOLS", "LABEL_SETS", "SEG_JUDGES"]

PROTOCOLS = ("fusion", "zero", "retrain", "seg")
SEG_JUDGES = ("head", "merged")  # seg: ESPNetv2 with a new class head | the Cityscapes network, classes merged to MSRS
LABEL_SETS = ("infrared", "union", "visible")


@dataclass(frozen=True)
class Recipe:
    """One fixed fine-tuning recipe of the ``retrain`` protocol (and of ``seg``).

    ``finetune_detector``: SGD (momentum 0.937, Nesterov, weight decay 5e-4 on weights), linear warm-up over
    the first epoch, random horizontal flips (p = 0.5), images letterboxed to ``imgsz`` (long side), gradient
    norm clipped at 10, batch order from ``random.Random(seed)``. Evaluation: val.py settings at ``imgsz`` (the
    training size, as YOLOv5's train.py validates; YOLOv5 judges — other judges use their own test size).
    ``train_pairs``: fine-tune on that many training pairs, evenly spaced over the sorted names (``None``: all).
    ``lr_final``: the learning rate falls linearly to ``lr * lr_final`` over the run (1.0: constant); ``ema``: decay of
    the moving average of the weights that is judged (0: the last weights).
    """

    epochs: int
    batch_size: int
    lr: float
    imgsz: int
    flips: bool = True
    train_pairs: int | None = None
    lr_final: float = 1.0
    ema: float = 0.0
    seg_epochs: int = 3
    seg_batch: int = 2
    seg_lr: float = 1e-3
    seg_crop: int = 256

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Recipe] = {
    # 2 CPU cores: ~0.08 s per training image at 416 when the machine is idle (x3-5 when shared); fusing the
    # training images with the learned methods costs 1-5 s per pair, hence 64 of the 171 MSRS dev-train pairs.
    # lr/batch chosen on held-out dev-train pairs, never dev-val (benchmarks/select_retrain_recipe.py, docs/bench.md)
    "cpu": Recipe(epochs=3, batch_size=4, lr=0.001, imgsz=416, train_pairs=64),
    # issue 19: the judge for method selection on a CPU. All 171 dev-train pairs, 10 epochs, lr 0.002 falling linearly
    # to 5 %, the judged weights an EMA (decay 0.99) of the last ~100 steps. Chosen on held-out dev-train pairs by a
    # rule written before the runs (benchmarks/select_retrain_recipe.py --set cpu-full, docs/bench.md); never on
    # dev-val.
    "cpu-full": Recipe(epochs=10, batch_size=4, lr=0.002, imgsz=416, train_pairs=None, lr_final=0.05, ema=0.99),
    # issue 9's GPU recipe
    "gpu": Recipe(epochs=8, batch_size=8, lr=0.005, imgsz=640, seg_epochs=20),
}

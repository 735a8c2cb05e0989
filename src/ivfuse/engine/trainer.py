"""One training loop for every method: stages of epochs, each epoch a run over a data source calling the
method's step hook; progress bars, CSV logs, resumable checkpoints.

A method describes its training as a list of :class:`Stage` objects (Algorithm 1 of MetaFusion is
``pretrain_f, det_ft_1, mfe_1, det_ft_2, mfe_2, ...``). :class:`Trainer` runs them in order, saving
``last.pt`` after every epoch (all module and optimizer states, RNG state, progress, config), so a killed run
restarted with the same ``out`` folder continues at the next epoch of the stage it was in.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["Stage", "Trainer"]


@dataclass
class Stage:
    """``epochs`` passes of ``batches()`` (an iterable factory), calling ``step(batch, ctx) -> {metric: float}``.

    ``on_start(ctx)`` runs when the stage begins (also after a resume), ``on_epoch_end(epoch, ctx)`` after each
    epoch (e.g. MetaFusion's inner updates every N epochs).
    """

    name: str
    epochs: int
    batches: Callable[[], Iterable[Any]]
    step: Callable[[Any, dict], dict[str, float]]
    on_start: Callable[[dict], None] | None = None
    on_epoch_end: Callable[[int, dict], dict[str, float] | None] | None = None
    extra: dict = field(default_factory=dict)


class Trainer:
    """Runs stages with checkpoints in ``out``.

    Args:
        out: run folder (``last.pt``, ``log.csv``, ``config.json``).
        modules: named modules whose states are checkpointed.
        optimizers: named optimizers whose states are checkpointed.
        config: JSON-able run configuration (embedded in every checkpoint).
        progress: show tqdm progress bars.
    """

    def __init__(self, out: str | Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                 config: dict, progress: bool = True, seed: int = 0) -> None:  # fmt: skip
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.modules, self.optimizers, self.config, self.progress = modules, optimizers, config, progress
        self.done: dict[str, int] = {}  # stage name -> completed epochs
        self.metrics: dict[str, dict[str, float]] = {}
        self.timings: dict[str, float] = {}
        self.ctx: dict[str, Any] = {"trainer": self}
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        (self.out / "config.json").write_text(json.dumps(config, indent=2))
        if (self.out / "last.pt").is_file():
            self._resume(self.out / "last.pt")

    # -- checkpointing -------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "config": self.config,
            "progress": {"done": dict(self.done)},
            "metrics": self.metrics,
            "timings": self.timings,
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]},
        }

    def save(self, name: str = "last.pt") -> Path:
        return save_checkpoint(self.out / name, self.state())

    def _resume(self, path: Path) -> None:
        ck = load_checkpoint(path)
        for k, m in self.modules.items():
            if k in ck["modules"]:
                m.load_state_dict(ck["modules"][k])
        for k, o in self.optimizers.items():
            if k in ck["optimizers"]:
                o.load_state_dict(ck["optimizers"][k])
        self.done = dict(ck["progress"]["done"])
        self.metrics = dict(ck.get("metrics", {}))
        self.timings = dict(ck.get("timings", {}))
        torch.set_rng_state(ck["rng"]["torch"])
        random.setstate((3, tuple(ck["rng"]["python"]), ck["rng"]["python_pos"]))
        self.resumed_from = dict(self.done)

    # -- logging -------------------------------------------------------------------------------------------------
    def log(self, row: dict) -> None:
        f = self.out / "log.csv"
        new = not f.exists()
        stamp = f"{time.time():.1f}"
        with f.open("a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["time", "stage", "epoch", "key", "value"])
            for k in sorted(set(row) - {"stage", "epoch"}):
                w.writerow([stamp, row["stage"], row["epoch"], k, row[k]])

    # -- running -------------------------------------------------------------------------------------------------
    def run(self, stages: list[Stage]) -> dict:
        from tqdm.auto import tqdm

        for st in stages:
            start = self.done.get(st.name, 0)
            if start >= st.epochs:
                continue
            if st.on_start:
                st.on_start(self.ctx)
            for ep in range(start, st.epochs):
                t0 = time.time()
                sums: dict[str, float] = {}
                n = 0
                bar = tqdm(st.batches(), desc=f"{st.name} {ep + 1}/{st.epochs}", disable=not self.progress, leave=False)
                for batch in bar:
                    vals = st.step(batch, self.ctx)
                    for k, v in vals.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    n += 1
                    if vals:
                        bar.set_postfix({k: f"{v:.3f}" for k, v in list(vals.items())[:3]})
                epoch_metrics = {k: v / max(n, 1) for k, v in sums.items()}
                if st.on_epoch_end:
                    epoch_metrics.update(st.on_epoch_end(ep + 1, self.ctx) or {})
                dt = time.time() - t0
                epoch_metrics["seconds"] = dt
                self.timings[st.name] = self.timings.get(st.name, 0.0) + dt
                self.metrics[st.name] = epoch_metrics
                self.done[st.name] = ep + 1
                self.log({"stage": st.name, "epoch": ep + 1, **epoch_metrics})
                self.save()
                if ep + 1 == st.epochs:  # a snapshot per finished stage (ablations can branch from it)
                    self.save(f"after_{st.name}.pt")
                if self.progress:
                    desc = " ".join(f"{k}={v:.4g}" for k, v in epoch_metrics.items() if not math.isnan(v))
                    tqdm.write(f"[{st.name}] epoch {ep + 1}/{st.epochs}: {desc}")
        return self.metrics

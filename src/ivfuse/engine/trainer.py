"""One training loop for every method: stages of epochs over a batch source, calling the method's step.

A method describes its training as a list of :class:`Stage` objects (MetaFusion's Algorithm 1 is
``pretrain_f, det_1, mfe_1, det_2, mfe_2``; TIM's is ``search, derive, retrain``). :class:`Trainer` runs them in
order and, when it has a run folder, saves ``last.pt`` after every epoch and after every stage's
``on_stage_end`` (all module and optimiser states, the global RNG states, progress, per-epoch history, config).
Each save keeps the checkpoint it replaces as ``last.prev.pt`` (a fresh run first writes its starting state there):
a ``last.pt`` found damaged on resume (its SHA-256 seal, :mod:`ivfuse.checkpoint`) falls back to it with a warning.
A run restarted on the same folder (:meth:`Trainer.resume`) continues at the start of the epoch that was
interrupted and — because the data of an epoch depends only on ``(seed, stage, epoch)``
(:class:`~ivfuse.engine.data.BatchSource`) — computes exactly what the uninterrupted run would have.

Modules can be added between stages (:meth:`Trainer.add`, e.g. from ``on_stage_end``: TIM derives the
architecture after its search); on resume the hooks of finished stages are replayed without consuming the
restored RNG state and the added modules get their saved states back.

Under ``torchrun`` (:mod:`ivfuse.engine.distributed`) only rank 0 writes files and shows progress; epoch metrics
are averaged over the ranks (the loss of the global batch), and every step runs under the run's autocast
(``amp``) with 4-D batch tensors in channels-last layout when the config asks for ``channels_last``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..utils import atomic_write_text, write_error
from . import distributed as dist
from ..checkpoint import previous_of
from .checkpoint import load_checkpoint, save_checkpoint
from .step import autocast

log = logging.getLogger("ivfuse")

__all__ = ["Stage", "Trainer"]


@dataclass
class Stage:
    """``epochs`` passes over ``data`` calling ``step(batch, ctx) -> {metric: float}`` for each batch.

    ``data`` is a :class:`~ivfuse.engine.data.BatchSource` (anything with ``epoch(epoch, key)`` and ``len``) or a
    callable ``(epoch) -> iterable``. Hooks (all optional, ``ctx`` is the trainer's context dict with
    ``trainer``, ``stage``, ``epoch`` (0-based), ``batch`` (index within the epoch) and, in ``on_epoch_end``,
    ``epoch_metrics`` (the epoch's mean step values)):

    * ``on_start(ctx)`` when the stage begins or resumes (e.g. set a learning rate);
    * ``on_epoch_end(epoch, ctx) -> metrics | None`` after each epoch (1-based ``epoch``; e.g. MetaFusion's inner
      updates every N epochs, validation);
    * ``on_stage_end(ctx) -> metrics | None`` once after the last epoch (e.g. derive a network and
      :meth:`Trainer.add` it); replayed on resume, so it must depend only on saved state.
    """

    name: str
    epochs: int
    data: Any
    step: Callable[[Any, dict], dict[str, float]]
    on_start: Callable[[dict], None] | None = None
    on_epoch_end: Callable[[int, dict], dict[str, float] | None] | None = None
    on_stage_end: Callable[[dict], dict[str, float] | None] | None = None
    extra: dict = field(default_factory=dict)

    def batches(self, epoch: int) -> Iterable[Any]:
        if hasattr(self.data, "epoch"):
            return self.data.epoch(epoch, self.name)
        return self.data(epoch)

    def __len__(self) -> int:
        try:
            return len(self.data)
        except TypeError:
            return 0


def _rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": list(py[1]),
        "python_pos": py[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate((3, tuple(st["python"]), st["python_pos"]))
    if "numpy" in st:
        np.random.set_state(("MT19937", st["numpy"].numpy().astype(np.uint32), st["numpy_pos"], 0, 0.0))


def _channels_last(batch: Any) -> Any:
    if torch.is_tensor(batch):
        return batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch
    if isinstance(batch, dict):
        return {k: _channels_last(v) for k, v in batch.items()}
    return batch


class Trainer:
    """Runs stages over ``modules`` / ``optimizers``, with checkpoints in ``out`` (``None``: in memory only).

    Args:
        out: run folder (``last.pt``, ``after_<stage>.pt``, ``log.csv``, ``config.json``) or ``None``.
        modules: named modules whose states are checkpointed.
        optimizers: named optimisers (or anything with ``state_dict``/``load_state_dict``) checkpointed too.
        config: JSON-able run configuration (embedded in every checkpoint).
        progress: show tqdm progress bars (with totals) and one line per epoch.
    """

    def __init__(
        self,
        out: str | Path | None,
        modules: dict[str, nn.Module],
        optimizers: dict[str, Any],
        config: dict,
        progress: bool = True,
    ) -> None:
        self.out = Path(out) if out is not None else None
        self.modules, self.optimizers = dict(modules), dict(optimizers)
        self.config, self.progress = config, progress and dist.is_main()
        self.channels_last = bool(config.get("channels_last", False)) if isinstance(config, dict) else False
        self.done: dict[str, int] = {}  # stage name -> completed epochs
        self.ended: list[str] = []  # stages whose on_stage_end has run
        self.metrics: dict[str, dict[str, float]] = {}  # stage -> metrics of its last epoch
        self.history: dict[str, list[dict[str, float]]] = {}  # stage -> metrics of every epoch
        self.timings: dict[str, float] = {}
        self.ctx: dict[str, Any] = {"trainer": self}
        self._saved: dict | None = None  # checkpoint being resumed (states of modules not added yet)
        self._replaying = False
        if self.out is not None and dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", json.dumps(config, indent=2))

    # -- modules added between stages ----------------------------------------------------------------------------
    def add(self, name: str, module: nn.Module | None = None, optimizer: Any = None) -> None:
        """Register a module and/or optimiser created between stages; a resumed run restores its saved state."""
        saved = self._saved or {}
        if module is not None:
            self.modules[name] = module
            if name in saved.get("modules", {}):
                module.load_state_dict(saved["modules"][name])
            dist.broadcast_modules([module])  # replicas start equal even if the hook drew random numbers
        if optimizer is not None:
            self.optimizers[name] = optimizer
            if name in saved.get("optimizers", {}):
                optimizer.load_state_dict(saved["optimizers"][name])

    # -- checkpointing -------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "config": self.config,
            "progress": {"done": dict(self.done), "ended": list(self.ended)},
            "metrics": self.metrics,
            "history": self.history,
            "timings": self.timings,
            "rng": _rng_state(),
            # log.csv's size at this checkpoint (its rows are written just before): a resume cuts the rows that the
            # redone work would write a second time (a kill between an epoch's log row and its checkpoint)
            "log_bytes": self._log_bytes(),
        }

    def _log_bytes(self) -> int:
        f = self.out / "log.csv" if self.out is not None else None
        return f.stat().st_size if f is not None and f.exists() else 0

    def save(self, name: str = "last.pt") -> Path | None:
        """Write a checkpoint (rank 0 only under torchrun; the replicas are identical)."""
        if self.out is None or not dist.is_main():
            return None
        # last.pt keeps the checkpoint it replaces (last.prev.pt): the fallback when it is found damaged on resume
        return save_checkpoint(self.out / name, self.state(), keep_previous=name == "last.pt")

    def resume(self, ck: dict | str | Path) -> None:
        """Restore states, progress and RNG from a checkpoint (dict or file)."""
        if not isinstance(ck, dict):
            ck = load_checkpoint(ck)
        self._saved = ck
        for k, m in self.modules.items():
            if k in ck["modules"]:
                m.load_state_dict(ck["modules"][k])
        for k, o in self.optimizers.items():
            if k in ck["optimizers"]:
                o.load_state_dict(ck["optimizers"][k])
        self.done = dict(ck["progress"]["done"])
        self.ended = list(ck["progress"].get("ended", []))
        self.metrics = dict(ck.get("metrics", {}))
        self.history = {k: list(v) for k, v in ck.get("history", {}).items()}
        self.timings = dict(ck.get("timings", {}))
        _set_rng_state(ck["rng"])
        keep = ck.get("log_bytes")
        if keep is not None and dist.is_main() and self._log_bytes() > keep:
            os.truncate(self.out / "log.csv", keep)

    def position(self) -> str:
        """Where a run stands: ``"stage mfe_1 epoch 3"`` (the last completed epoch)."""
        if not self.done:
            return "the start"
        last = list(self.done)[-1]
        return f"stage {last} epoch {self.done[last]}"

    # -- logging -------------------------------------------------------------------------------------------------
    def log(self, row: dict) -> None:
        if self.out is None or not dist.is_main():
            return
        f = self.out / "log.csv"
        size = self._log_bytes()
        new = size == 0  # no file yet, or one a resume to the run's start cut to nothing
        stamp = f"{time.time():.1f}"
        buf = io.StringIO()
        w = csv.writer(buf)
        if new:
            w.writerow(["time", "stage", "epoch", "key", "value"])
        for k in sorted(set(row) - {"stage", "epoch"}):
            w.writerow([stamp, row["stage"], row["epoch"], k, row[k]])
        try:
            with f.open("a", newline="") as fh:
                fh.write(buf.getvalue())
        except OSError as e:  # a full disk: cut the half-written rows off again, one line naming the file
            with contextlib.suppress(OSError):
                os.truncate(f, size)
            raise write_error(f, e) from None

    def _end_stage(self, st: Stage) -> None:
        if st.name in self.ended:
            if st.on_stage_end:  # replay (resume): rebuild what the hook built, leave the restored RNG alone
                with torch.random.fork_rng(devices=[]):
                    st.on_stage_end(self.ctx)
            return
        vals = st.on_stage_end(self.ctx) if st.on_stage_end else None
        if vals:
            self.metrics[f"{st.name}/end"] = dict(vals)
            self.log({"stage": st.name, "epoch": self.done.get(st.name, 0), **vals})
        self.ended.append(st.name)
        self.save()

    # -- running -------------------------------------------------------------------------------------------------
    def run(self, stages: Iterable[Stage]) -> dict:
        from tqdm.auto import tqdm

        last = self.out / "last.pt" if self.out is not None else None
        if last is not None and dist.is_main() and not self.done and not self.ended and not last.exists():
            # a fresh run: the state it starts from is the fallback of a first last.pt found damaged on resume
            # (it also replaces a last.prev.pt left by an earlier run in this folder, e.g. after resume=new)
            save_checkpoint(previous_of(last), self.state())
        for st in stages:
            start = self.done.get(st.name, 0)
            if start < st.epochs:
                self.ctx["stage"] = st.name
                if st.on_start:
                    st.on_start(self.ctx)
            for ep in range(start, st.epochs):
                self.ctx["epoch"] = ep
                t0 = time.time()
                sums: dict[str, float] = {}
                n = 0
                bar = tqdm(
                    st.batches(ep),
                    desc=f"{st.name} {ep + 1}/{st.epochs}",
                    total=len(st) or None,
                    disable=not self.progress,
                    leave=False,
                    unit="batch",
                )
                for i, batch in enumerate(bar):
                    self.ctx["batch"] = i
                    if self.channels_last:
                        batch = _channels_last(batch)
                    with autocast():
                        vals = st.step(batch, self.ctx)
                    for k, v in vals.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    n += 1
                    if vals:
                        bar.set_postfix({k: f"{v:.3f}" for k, v in list(vals.items())[:3]})
                epoch_metrics = dist.all_reduce_mean({k: v / max(n, 1) for k, v in sums.items()})
                self.ctx["epoch_metrics"] = epoch_metrics
                if st.on_epoch_end:
                    epoch_metrics.update(st.on_epoch_end(ep + 1, self.ctx) or {})
                dt = time.time() - t0
                self.timings[st.name] = self.timings.get(st.name, 0.0) + dt
                self.metrics[st.name] = {**epoch_metrics, "seconds": dt}
                self.history.setdefault(st.name, []).append(dict(epoch_metrics))
                self.done[st.name] = ep + 1
                self.log({"stage": st.name, "epoch": ep + 1, **epoch_metrics, "seconds": dt})
                self.save()
                if ep + 1 == st.epochs and self.out is not None:  # a snapshot per finished stage (ablations branch)
                    self.save(f"after_{st.name}.pt")
                if self.progress:
                    desc = " ".join(f"{k}={v:.4g}" for k, v in epoch_metrics.items() if not math.isnan(v))
                    log.info("[%s] epoch %d/%d (%.1f s): %s", st.name, ep + 1, st.epochs, dt, desc)
            self._end_stage(st)
        self._saved = None
        return self.metrics

"""Optimisation pieces shared by every training stage: seeding, the optimisation step, the virtual step.

* :func:`seed_everything` — Python, NumPy and torch generators from one seed (call it before building modules).
* :class:`OptimStep` — ``zero_grad → backward → (unscale, clip) → step`` with gradient accumulation and an AMP
  ``GradScaler``; every stage of every recipe goes through it.
* :func:`virtual_step` / :func:`call_with` — a differentiable parameter update θ' = θ − β∇_θL kept in the autograd
  graph (``create_graph=True``) and a forward pass of a module with such parameters
  (:func:`torch.func.functional_call`). MetaFusion's inner update is built from them; so is any unrolled
  hyper-gradient (e.g. TIM's bi-level search): the outer loss on ``call_with(module, virtual_step(...), x)``
  back-propagates through θ' into whatever shaped L.
* :func:`set_precision` / :func:`autocast` — the run's mixed precision (config key ``amp: none|bf16|fp16``), set by
  :func:`~ivfuse.engine.recipe.train` for the duration of the run; an :class:`OptimStep` built with ``amp=None`` (the
  default) follows it (a ``GradScaler`` for fp16 on CUDA). It is held in a :class:`contextvars.ContextVar`, not a
  module global: a run in one thread (or asyncio task) does not change the precision another one sees, and
  :func:`reset_precision` restores what was there before (nested or failed runs leave no trace).

Under ``torchrun`` (:mod:`ivfuse.engine.distributed`) :class:`OptimStep` averages the gradients over the ranks
(one all-reduce) after back-propagation and before unscaling, clipping and stepping.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ..utils import AMP_MODES, check_amp
from . import distributed as _dist

__all__ = [
    "seed_everything",
    "OptimStep",
    "virtual_step",
    "call_with",
    "set_precision",
    "reset_precision",
    "precision",
    "autocast",
    "AMP_MODES",
]

#: ``(amp, device type)`` of the run being trained in this context (set by train(); default: fp32 on the CPU)
_PRECISION: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "ivfuse_precision", default=("none", "cpu")
)


def set_precision(amp: str = "none", device: str | torch.device = "cpu") -> contextvars.Token:
    """Set the run's mixed precision in the current context (checked with :func:`ivfuse.utils.check_amp`, the config
    key ``amp``); :func:`train` calls it before ``build()``. Returns the token :func:`reset_precision` takes to restore
    the previous setting."""
    return _PRECISION.set((check_amp(amp, device, "amp="), torch.device(device).type))


def reset_precision(token: contextvars.Token) -> None:
    """Restore the precision that was set before the :func:`set_precision` call that returned ``token``."""
    _PRECISION.reset(token)


def precision() -> tuple[str, str]:
    """``(amp, device type)`` of the run being trained."""
    return _PRECISION.get()


def autocast(amp: str | None = None, device: str | None = None):
    """``torch.autocast`` for ``amp`` (default: the run's) — bf16 or fp16 — or a no-op context for ``none``."""
    a, d = precision()
    amp, device = amp or a, device or d
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class OptimStep:
    """One optimisation step for ``optimizer``.

    Args:
        optimizer: the optimiser whose parameters the loss trains.
        clip: max gradient norm (``torch.nn.utils.clip_grad_norm_``) or ``None``.
        accumulate: micro-batches per step (the loss is divided by it; the step happens on every
            ``accumulate``-th call).
        amp: use a :class:`torch.amp.GradScaler` (CUDA mixed precision; a no-op scaler on CPU). ``None`` (default):
            follow the run's precision (:func:`set_precision`; a scaler exactly when ``amp: fp16`` on CUDA).
        device: device type of the scaler (with ``amp=None``: the run's device).
        scaler: a ready :class:`torch.amp.GradScaler` (overrides ``amp``/``device``).
        sync: average the gradients over the ranks of a ``torchrun`` job before clipping/stepping (``None``: when
            running distributed). ``False`` for an update every rank computes identically anyway (MetaFusion's
            replicated inner phase).

    ``step(loss, inputs=None)`` back-propagates ``loss`` (only into ``inputs`` when given, e.g. to leave a fixed
    guide network's ``.grad`` alone) and returns ``True`` when the optimiser stepped. Order at a step: backward
    (outside autocast) → all-reduce of the gradients (distributed) → **unscale** → clip → step → scaler update, so
    clipping always sees the true gradient norm, never the loss-scaled one.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        clip: float | None = None,
        accumulate: int = 1,
        amp: bool | None = None,
        device: str | None = None,
        scaler: torch.amp.GradScaler | None = None,
        sync: bool | None = None,
    ) -> None:
        if accumulate < 1:
            raise ValueError("accumulate must be >= 1")
        self.optimizer, self.clip, self.accumulate, self.sync = optimizer, clip, accumulate, sync
        if scaler is None:
            if amp is None:
                run_amp, run_dev = precision()
                amp, device = run_amp == "fp16", device or run_dev
            device = device or "cpu"
            scaler = torch.amp.GradScaler(device, enabled=bool(amp) and device == "cuda")
        self.scaler = scaler
        self.calls = 0

    def _sync(self, params: list[torch.Tensor]) -> None:
        if self.sync is not False:
            _dist.all_reduce_grads(params)

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, loss: torch.Tensor, inputs: Iterable[torch.Tensor] | None = None) -> bool:
        if self.calls % self.accumulate == 0:
            self.zero_grad()
        self.calls += 1
        scaled = self.scaler.scale(loss / self.accumulate if self.accumulate > 1 else loss)
        with contextlib.ExitStack() as stack:
            if torch.is_autocast_enabled(scaled.device.type):  # backward outside autocast (PyTorch's advice)
                stack.enter_context(torch.autocast(scaled.device.type, enabled=False))
            scaled.backward(inputs=list(inputs) if inputs is not None else None)
        if self.calls % self.accumulate != 0:
            return False
        self._sync(self.params)
        if self.clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return True

    def step_with_grads(self, grads: Mapping[torch.Tensor, torch.Tensor | None]) -> None:
        """Step with gradients computed elsewhere (``{param: grad}``; ``None`` = zero)."""
        self.zero_grad()
        for p, g in grads.items():
            p.grad = torch.zeros_like(p) if g is None else g
        self._sync(list(grads))
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(list(grads), self.clip)
        self.optimizer.step()


def virtual_step(
    module: nn.Module, loss: torch.Tensor, lr: float, first_order: bool = False
) -> dict[str, torch.Tensor]:
    """θ' = θ − lr · ∇_θ loss for the trainable parameters of ``module``, kept in the graph.

    With ``first_order=False`` the gradient is taken with ``create_graph=True``, so a loss computed with θ'
    (:func:`call_with`) differentiates through the update into everything ``loss`` depended on (second order).
    ``first_order=True`` detaches the gradient (θ' then depends on θ only). Parameters ``loss`` does not depend on
    are kept as they are. ``module`` itself is not changed.
    """
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order, allow_unused=True)
    out = {}
    for (n, p), g in zip(params.items(), grads):
        out[n] = p if g is None else p - lr * (g.detach() if first_order else g)
    return out


def call_with(module: nn.Module, params: Mapping[str, torch.Tensor], *args, **kwargs):
    """``module(*args, **kwargs)`` with some parameters replaced by ``params`` (:func:`torch.func.functional_call`)."""
    return functional_call(module, dict(params), args, kwargs)

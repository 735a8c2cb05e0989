"""Loading the authors' own (official) checkpoints of MetaFusion, TIM, OCCO and TSJNet into ivfuse's networks.

Each method has **one key table** (:class:`KeyTable`): an ordered list of regular-expression rewrites that turn an
official state-dict key into the ivfuse key, plus the official keys that hold fixed values (checked, not loaded)
or that ivfuse's network has no tensor for (listed with the reason). Loading is strict in both directions: every
official key must be rewritten to a key of the ivfuse model (or be one of the listed constants / dropped keys),
no two official keys may fill the same tensor, every tensor of the ivfuse model must be filled and every shape
must agree; anything else is a one-line :class:`~ivfuse.errors.InputError` naming the file.

The official presets (``preset="official"``) that reproduce the official test scripts' pre- and post-processing
live with each model; :func:`check_preset` validates the option and :func:`batch_stat_norms` runs BatchNorm
layers on batch statistics (the official scripts that forget ``model.eval()``) without touching their buffers.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InputError

__all__ = [
    "PRESETS",
    "KeyTable",
    "apply_official_preset",
    "batch_stat_norms",
    "check_preset",
    "is_state_dict",
    "not_weights_error",
    "to_u8",
]

#: the pre/post-processing presets of the authors' models
PRESETS = ("ivfuse", "official")


def check_preset(preset: str, method: str) -> str:
    """``preset`` (case and surrounding spaces ignored) if it is one of :data:`PRESETS`, else a one-line
    :class:`InputError`. Every method with an official pre/post-processing preset (the seed methods, the peers) checks
    its option here."""
    p = str(preset).strip().lower()
    if p not in PRESETS:
        raise InputError(f"{method}: unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    return p


def apply_official_preset(model: nn.Module, preset: str, method: str, script: str, example: str) -> nn.Module:
    """Switch ``model`` to ``preset="official"`` (its ``preset`` attribute), which only the authors' network can run:
    a model not loaded from an official checkpoint (``model.checkpoint_format``) is a one-line :class:`InputError`
    naming ``script`` (what the preset reproduces) and an ``example`` file name. ``"ivfuse"`` leaves it as it is."""
    if check_preset(preset, method) == "official":
        if getattr(model, "checkpoint_format", None) != "official":
            raise InputError(
                f"{method}: preset='official' reproduces {script} with the authors' network: pass their "
                f"checkpoint (weights={example})"
            )
        model.preset = "official"
    return model


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of string keys to tensors."""
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())
    )


def not_weights_error(path: str | os.PathLike, method: str, accepted: str) -> InputError:
    """The one-line error for a file that is neither an ivfuse nor an official checkpoint of ``method``."""
    return InputError(f"{path}: not a {method} checkpoint (accepted: {accepted})")


@dataclass(frozen=True)
class KeyTable:
    """Official -> ivfuse key mapping of one method.

    Attributes:
        method: name used in error messages.
        rules: ``(pattern, replacement)`` pairs applied in order with :func:`re.sub` to every official key. A result
            ``name[i]`` fills slice ``i`` (along dim 0) of the ivfuse tensor ``name``; the slices are concatenated
            (e.g. eight per-head 1×1 convs -> one grouped conv) and must be complete.
        constants: ``(pattern, expected)`` official keys holding a fixed tensor (e.g. a blur kernel registered as a
            buffer); ``expected(shape)`` gives the value the key must have. Checked, not loaded.
        dropped: ``(pattern, reason)`` official keys that ivfuse's network has no tensor for; they are accepted and
            ignored only if ``reason`` is not ``None`` (documented in the method's page).
    """

    method: str
    rules: Sequence[tuple[str, str | Callable[[re.Match], str]]]
    constants: Sequence[tuple[str, Callable[[tuple[int, ...]], torch.Tensor]]] = ()
    dropped: Sequence[tuple[str, str]] = ()
    _compiled: list = field(default_factory=list, init=False, repr=False, compare=False)

    def target(self, key: str) -> str:
        """The ivfuse key for an official key (after every rule)."""
        if not self._compiled:
            self._compiled.extend((re.compile(p), r) for p, r in self.rules)
        for pat, rep in self._compiled:
            key = pat.sub(rep, key)
        return key

    def _constant(self, key: str):
        for pat, fn in self.constants:
            if re.fullmatch(pat, key):
                return fn
        return None

    def _dropped(self, key: str) -> bool:
        return any(re.fullmatch(p, key) for p, _ in self.dropped)

    def mapping(self, keys: Sequence[str]) -> dict[str, str]:
        """``{official key: ivfuse key}`` for the keys that are loaded (constants and dropped keys left out)."""
        return {k: self.target(k) for k in keys if self._constant(k) is None and not self._dropped(k)}

    def convert(self, official: Mapping[str, torch.Tensor], model: nn.Module, path: str | os.PathLike) -> dict:
        """The ivfuse state dict of ``model`` filled from ``official`` (strict; :class:`InputError` otherwise)."""
        own = model.state_dict()
        out: dict[str, torch.Tensor] = {}
        source: dict[str, str] = {}
        stacked: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}
        for key, value in official.items():
            fn = self._constant(key)
            if fn is not None:
                want = fn(tuple(value.shape))
                if value.shape != want.shape or not torch.allclose(value.float(), want.float(), atol=1e-6):
                    raise InputError(
                        f"{path}: official {self.method} key '{key}' should hold a fixed kernel, it does not"
                    )
                continue
            if self._dropped(key):
                continue
            tgt = self.target(key)
            part = re.fullmatch(r"(.+)\[(\d+)\]", tgt)  # one slice (along dim 0) of a stacked ivfuse tensor
            if part:
                stacked.setdefault(part.group(1), {})[int(part.group(2))] = (key, value)
                continue
            if tgt not in own:
                raise InputError(
                    f"{path}: official {self.method} key '{key}' (-> '{tgt}') has no place in ivfuse's "
                    f"network ({len(official)} keys in the file, {len(own)} in the network)"
                )
            if tgt in source:
                raise InputError(f"{path}: official {self.method} keys '{source[tgt]}' and '{key}' both map to '{tgt}'")
            if tuple(value.shape) != tuple(own[tgt].shape):
                raise InputError(
                    f"{path}: official {self.method} key '{key}' has shape {tuple(value.shape)}, "
                    f"ivfuse's '{tgt}' {tuple(own[tgt].shape)}"
                )
            out[tgt], source[tgt] = value, key
        for tgt, parts in stacked.items():
            first = next(iter(parts.values()))[0]
            if tgt not in own:
                raise InputError(
                    f"{path}: official {self.method} key '{first}' (-> '{tgt}') has no place in ivfuse's network"
                )
            if sorted(parts) != list(range(len(parts))):
                raise InputError(
                    f"{path}: official {self.method} keys for '{tgt}' are incomplete (have {sorted(parts)})"
                )
            value = torch.cat([parts[i][1] for i in range(len(parts))], 0)
            if tuple(value.shape) != tuple(own[tgt].shape) or tgt in out:
                raise InputError(
                    f"{path}: official {self.method} keys like '{first}' stack to {tuple(value.shape)}, "
                    f"ivfuse's '{tgt}' is {tuple(own[tgt].shape)}"
                )
            out[tgt] = value
        missing = [k for k in own if k not in out]
        if missing:
            raise InputError(
                f"{path}: the official {self.method} file does not fill {len(missing)} tensor(s) of "
                f"ivfuse's network (first: {', '.join(missing[:3])})"
            )
        return out

    def load(self, model: nn.Module, official: Mapping[str, torch.Tensor], path: str | os.PathLike) -> nn.Module:
        """:meth:`convert` then a strict ``load_state_dict``; returns ``model`` in eval mode."""
        model.load_state_dict(self.convert(official, model, path), strict=True)
        return model.eval()


@contextlib.contextmanager
def batch_stat_norms(module: nn.Module) -> Iterator[None]:
    """Inside the block every BatchNorm of ``module`` normalises with the statistics of the current batch (what a
    network left in train mode does at test time); running statistics and counters are neither used nor changed."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved.append((m, m.training, m.running_mean, m.running_var, m.num_batches_tracked))
            m.training = True
            m.running_mean = m.running_var = m.num_batches_tracked = None
    try:
        yield
    finally:
        for m, training, mean, var, count in saved:
            m.training, m.running_mean, m.running_var, m.num_batches_tracked = training, mean, var, count


def to_u8(x: torch.Tensor) -> Any:
    """A ``C×H×W`` / ``H×W`` tensor in [0, 1] -> the uint8 numpy array ``H×W×C`` / ``H×W`` it was read from."""
    import numpy as np

    a = (x.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return np.ascontiguousarray(a.transpose(1, 2, 0)) if a.ndim == 3 else a

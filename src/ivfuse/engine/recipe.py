"""The recipe contract and :func:`train`, the one entry point that trains any registered method.

A *recipe* (a :class:`Recipe` subclass registered with :func:`register_recipe`) says what a method trains:

* ``limits`` — ranges and shapes of config keys (``{"epochs.*": Limit(min=0), "data.crop": CROP}``), checked with
  the types when the config is loaded and again by :func:`train`;
* ``check(cfg) -> [warnings]`` (classmethod) — refuse impossible configurations before anything is written (what
  ``limits`` cannot say: checks that depend on several keys, names);
* ``build()`` — create ``self.modules`` and ``self.optimizers`` (dicts) and load data; runs *after* seeding;
* ``stages() -> [Stage]`` — the schedule (:class:`~ivfuse.engine.trainer.Stage`);
* ``validate() -> {metric: float}`` — metrics at the end of training (embedded in ``summary.json``/exports); the
  default scores the network named by ``fusion_attr`` with :func:`validate_fusion` and the config's ``val`` section;
* ``export(path)`` — the deployable weights (e.g. a safetensors file the fusion model loads), with the metadata of
  :meth:`Recipe.export_metadata`.

What every recipe repeats lives on :class:`Recipe`: :meth:`~Recipe.on_device` (batch tensors to the run's device),
the default :meth:`~Recipe.validate` and :meth:`~Recipe.export_metadata`.

:func:`train` does the rest for every method: device check, resume policy, seeding *before* any module is built,
the :class:`~ivfuse.engine.trainer.Trainer`, validation, ``final.pt``, ``summary.json`` and the export.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Limit, check_limits
from ..errors import InputError
from ..models.base import to_channels_last
from ..registry import Registry
from ..utils import NOTICE, atomic_write_text
from .checkpoint import load_checkpoint, save_checkpoint
from .step import seed_everything
from .trainer import Stage, Trainer

__all__ = [
    "Recipe",
    "RECIPES",
    "register_recipe",
    "train",
    "check_device",
    "validate_fusion",
    "strict_json",
    "RESUME_MODES",
    "refuse_held_out",
]

#: every trainable method: the recipes of ``ivfuse.engine``'s modules (found by :mod:`ivfuse.engine` without a list)
#: and third-party ones through the entry-point group ``ivfuse.recipes``
RECIPES: Registry[type] = Registry("trainable method", entry_points="ivfuse.recipes")
RESUME_MODES = ("auto", "force", "new")


def register_recipe(name: str, config: str | Path | None = None):
    """Class decorator: ``@register_recipe("metafusion") class MetaFusionRecipe(Recipe): ...``. ``config``: the
    defaults YAML of a recipe that lives outside the package (its presets ``<name>_<preset>.yaml`` beside it); the
    package's own recipes keep theirs in ``ivfuse/configs/<name>.yaml``."""

    def deco(cls: type) -> type:
        cls.name = name
        if config is not None:
            cls.config_file = Path(config)
        RECIPES.add(name, cls)
        return cls

    return deco


class Recipe:
    """Base of the training recipes (see module docstring). ``cfg`` is the checked config dict."""

    name: str = "recipe"
    #: defaults YAML of a recipe outside the package (``register_recipe(name, config=FILE)``); ``None``: the package's
    config_file: Path | None = None
    #: ranges and shapes of config keys (:class:`~ivfuse.config.Limit`; ``"epochs.*"`` matches every key under
    #: ``epochs``), checked by :func:`~ivfuse.engine.config.load_config` and :func:`train` before :meth:`check`
    limits: dict[str, Limit] = {}
    #: the attribute that holds the fusion network the default :meth:`validate` scores (absent or ``None``: no metrics)
    fusion_attr: str = "net"

    def __init__(self, cfg: dict, device: torch.device | str = "cpu", progress: bool = True) -> None:
        self.cfg, self.device, self.progress = cfg, torch.device(device), progress
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, Any] = {}
        self.trainer: Trainer | None = None  # set by train() before the stages run
        self.t0 = time.time()  # the export's ``wall_s`` counts from here (train() builds the recipe right away)

    @classmethod
    def check(cls, cfg: dict) -> list[str]:
        """Raise :class:`InputError` for configurations that cannot train; return warnings (one line each)."""
        return []

    def build(self) -> None:  # pragma: no cover - contract
        raise NotImplementedError(f"recipe '{self.name}' must implement build()")

    def stages(self) -> list[Stage]:  # pragma: no cover - contract
        raise NotImplementedError(f"recipe '{self.name}' must implement stages()")

    def validate(self) -> dict[str, float]:
        """Fusion metrics of ``self.<fusion_attr>`` on the config's ``val`` section (:func:`validate_fusion`; ``{}``
        without a network or a ``val`` section)."""
        net = getattr(self, self.fusion_attr, None)
        return {} if net is None else validate_fusion(net, self.cfg.get("val") or {}, self.device)

    def export(self, path: str | Path) -> Path:
        raise InputError(f"recipe '{self.name}' has nothing to export")

    # -- what every recipe repeats ----------------------------------------------------------------------------------
    def on_device(self, batch: dict, *keys: str) -> tuple[torch.Tensor, ...]:
        """The tensors ``batch[key]`` (default ``"ir"``, ``"vis"``) on the run's device, in that order:
        ``ir, vis = self.on_device(batch)``."""
        return tuple(batch[k].to(self.device) for k in keys or ("ir", "vis"))

    def export_metadata(self, config: dict | None = None, **training: Any) -> dict[str, str]:
        """Safetensors metadata of an export (JSON strings): ``config`` (the network's, what its loader builds; left
        out when ``None``), ``training`` = ``recipe``, ``data``, ``epochs``, ``seed``, ``device``, ``threads``,
        ``wall_s`` and the recipe's own ``training`` items (which may replace the common ones, e.g. ``data``), and
        ``metrics`` (the validation metrics, strict JSON)."""
        c, tr = self.cfg, self.trainer
        run = {
            "recipe": self.name,
            "data": c.get("data"),
            "epochs": c.get("epochs"),
            "seed": c.get("seed", 0),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
        }
        run["wall_s"] = round(time.time() - self.t0, 1)
        meta = {} if config is None else {"config": json.dumps(config)}
        meta["training"] = json.dumps(strict_json({**run, **training}))
        meta["metrics"] = json.dumps(strict_json(tr.metrics.get("val", {}) if tr else {}))
        return meta


def check_device(name: str) -> torch.device:
    """The torch device of a config's ``device`` key, checked like ``--device`` (:func:`ivfuse.utils.check_device`):
    a one-line error for an unknown name or a GPU that is not there."""
    from ..utils import check_device as check

    return torch.device(check(name, "device"))


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}{k}"
            if k not in old:
                out.append(f"{key}: (absent) -> {new[k]!r}")
            elif k not in new:
                out.append(f"{key}: {old[k]!r} -> (absent)")
            else:
                out += _diff(old[k], new[k], key + ".")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


_RUN_FILES = ("last.pt", "final.pt", "log.csv", "summary.json", "config.json")


def refuse_held_out(specs, key: str) -> None:
    """One-line :class:`InputError` if the data specs under config key ``key`` list a held-out MSRS split (``dev-val``,
    ``test``): those are only ever evaluated on."""
    for spec in specs:
        if isinstance(spec, dict) and spec.get("name") == "msrs" and spec.get("split") in ("dev-val", "test"):
            raise InputError(
                f"config key '{key}' lists msrs:{spec['split']}, a held-out split; train on msrs:dev-train (or train)"
            )


def strict_json(x):
    """NaN/inf -> None (recursively), so that summaries and export metadata are strict JSON."""
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [strict_json(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def validate_fusion(model, v: dict, device=None) -> dict:
    """Mean fusion metrics of ``model`` on the first ``v["max"]`` pairs of dataset ``v["name"]`` (``v["split"]``,
    optional ``v["root"]``), metric names ``v["metrics"]`` (from the config; nothing is hard-coded here). Returns
    ``{"val_<metric>": mean}``, ``{}`` when ``v`` is empty or ``max`` is 0."""
    from ..data import load_dataset
    from ..metrics import compute_metrics

    if not v or not v.get("name") or v.get("max", 1) == 0:
        return {}
    ds = load_dataset(v["name"], root=v.get("root"), split=v.get("split", "all"))
    names = list(v.get("metrics") or [])
    if not names:
        raise InputError("config key 'val.metrics' lists no metric (e.g. [en, qabf])")
    k = min(len(ds), v.get("max") or len(ds))
    acc = {n: 0.0 for n in names}
    was = model.training
    model.eval()
    dev = device or next(model.parameters()).device
    with torch.no_grad():
        for i in range(k):
            s = ds[i]
            fused = model(s["ir"][None].to(dev), s["vis"][None].to(dev))[0].cpu()
            for n, val in compute_metrics(fused, s["ir"], s["vis"], names).items():
                acc[n] += val / k
    model.train(was)
    return {f"val_{n}": x for n, x in acc.items()}


#: the package logger: the CLI prints its records as one ``ivfuse: ...`` line each (``-q``: notices and warnings only);
#: an API user configures it like any library's (``logging.basicConfig(level=logging.INFO)`` shows the resume notices)
log = logging.getLogger("ivfuse")


def _resume_decision(out: Path, last: Path, cfg: dict, resume: str) -> tuple[dict | None, str | None]:
    """``(checkpoint to resume or None, error message or None)``; rank 0 decides (and deletes for resume=new)."""
    if not last.is_file():
        return None, None
    if resume == "new":
        for f in [*_RUN_FILES, *(p.name for p in out.glob("after_*.pt"))]:
            (out / f).unlink(missing_ok=True)
        log.log(NOTICE, "resume=new: removed the previous run's files in %s", out)
        return None, None
    ck = load_checkpoint(last)
    changes = _diff(_with_engine_defaults(ck.get("config", {})), _with_engine_defaults(cfg))
    if changes and resume != "force":
        return None, (
            f"{last}: the run there used a different config ({'; '.join(changes[:4])}"
            f"{' ...' if len(changes) > 4 else ''}); pass resume=force to continue it with the new config, "
            f"resume=new to start over, or choose another out="
        )
    if changes:
        log.warning("resume=force: continuing %s with a changed config (%s)", out, "; ".join(changes[:4]))
    return ck, None


def _with_engine_defaults(old: Any) -> Any:
    """A checkpoint's config with the engine keys it predates (``amp``, ``channels_last``) at their defaults."""
    from .config import ENGINE_KEYS

    return {**ENGINE_KEYS, **old} if isinstance(old, dict) else old


def train(
    name: str, cfg: dict, out: str | Path, export: str | Path | None = None, progress: bool = True, resume: str = "auto"
) -> dict:
    """Train the registered method ``name`` with the (checked) config ``cfg`` into the run folder ``out``.

    Args:
        export: write the recipe's deployable weights here at the end.
        resume: what to do when ``out/last.pt`` exists: ``"auto"`` continues if the config is unchanged and
            refuses otherwise; ``"force"`` continues with the new config; ``"new"`` deletes the run's files and
            starts over.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this: the process group is set up here (gloo for
    ``device=cpu``, NCCL with ``cuda:LOCAL_RANK`` for ``device=cuda``), rank 0 takes the resume decision and sends
    the checkpoint to the others, the replicas start from rank 0's weights, and rank 0 alone validates and writes
    files (see :mod:`ivfuse.engine.distributed`).

    Returns the summary (``metrics``, ``history``, ``timings_s``, ``epoch_s``, ``out``, ``export``) also written
    to ``out/summary.json``; ``world_size`` and ``amp`` say how it ran.
    """
    from . import distributed as dist
    from ..allocator import tune as tune_allocator
    from ..utils import check_amp
    from .step import reset_precision, set_precision

    tune_allocator()

    cls = RECIPES.get(name)
    if resume not in RESUME_MODES:
        raise InputError(f"resume must be one of {', '.join(RESUME_MODES)}, got '{resume}'")
    device = check_device(str(cfg.get("device", "cpu")))
    amp = str(cfg.get("amp", "none"))
    check_amp(amp, device, "amp=")  # fp16 on CPU is refused (one line, before anything is written)
    if not isinstance(cfg.get("channels_last", False), bool):
        raise InputError(f"config key 'channels_last' must be true or false, got {cfg['channels_last']!r}")
    check_limits(cfg, getattr(cls, "limits", {}))
    for w in cls.check(cfg):
        log.warning("%s", w)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: run folder is a file")
    dist_device, created = dist.setup(str(device))
    if dist_device is not None:
        device = dist_device
    token = None
    try:
        token = set_precision(amp, device)  # the run's precision, for this run only (restored in `finally`)
        last = out / "last.pt"
        decision = _resume_decision(out, last, cfg, resume) if dist.is_main() else (None, None)
        ck, err = dist.broadcast_object(decision)
        if err:
            raise InputError(err)
        seed_everything(int(cfg.get("seed", 0)))  # before any module is built: the initial weights follow the seed
        rec = cls(cfg, device, progress)
        rec.build()
        dist.broadcast_modules(rec.modules)  # replicas start from rank 0's weights (the seed makes them equal anyway)
        if cfg.get("channels_last"):
            for m in rec.modules.values():
                to_channels_last(m)
        tr = Trainer(out, rec.modules, rec.optimizers, cfg, progress)
        rec.trainer = tr
        if ck is not None:
            tr.resume(ck)
            if dist.is_main():
                log.log(NOTICE, "resuming from %s after %s", last, tr.position())
        metrics = tr.run(rec.stages())
        val = rec.validate() if dist.is_main() else {}  # the replicas are equal: rank 0 validates for all
        metrics["val"] = dist.broadcast_object(val)
        tr.metrics = metrics
        summary = {
            "metrics": metrics,
            "history": tr.history,
            "timings_s": tr.timings,
            "epoch_s": {k: tr.timings[k] / max(1, tr.done.get(k, 1)) for k in tr.timings},
            "out": str(out),
            "export": None,
            "world_size": dist.world_size(),
            "amp": amp,
        }
        if dist.is_main():
            save_checkpoint(out / "final.pt", tr.state())
            if export:
                summary["export"] = str(rec.export(export))
            atomic_write_text(out / "summary.json", json.dumps(strict_json(summary), indent=2))
        summary["export"] = dist.broadcast_object(summary["export"])
        dist.barrier()  # every rank returns after rank 0 has written the run's files
        return summary
    finally:
        if token is not None:
            reset_precision(token)
        dist.teardown(created)

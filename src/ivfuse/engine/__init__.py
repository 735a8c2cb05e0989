"""Training: registered recipes (:class:`Recipe`, :data:`RECIPES`) run by one :func:`train` on one :class:`Trainer`.

See ``docs/engine.md`` for the contract and how to add a method (one model file, one recipe file, one config).
"""

from .checkpoint import export_safetensors, load_checkpoint, save_checkpoint
from .config import apply_overrides, load_config
from .data import BatchSource, RandomCrop, RandomFlip, collate, load_samples
from .finetune import finetune_detector, finetune_segmenter
from .recipe import RECIPES, Recipe, check_device, register_recipe, train, validate_fusion
from .step import OptimStep, call_with, seed_everything, virtual_step
from .trainer import Stage, Trainer


def _register_recipes() -> None:
    """Import every module of this package once: each recipe module registers its recipes (``@register_recipe``), so a
    new method's recipe file is found without a hand-kept list."""
    import importlib
    import pkgutil

    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{m.name}")


_register_recipes()

__all__ = [
    "RECIPES",
    "Recipe",
    "register_recipe",
    "train",
    "check_device",
    "validate_fusion",
    "Stage",
    "Trainer",
    "BatchSource",
    "RandomCrop",
    "RandomFlip",
    "collate",
    "load_samples",
    "OptimStep",
    "call_with",
    "seed_everything",
    "virtual_step",
    "apply_overrides",
    "load_config",
    "export_safetensors",
    "load_checkpoint",
    "save_checkpoint",
    "finetune_detector",
    "finetune_segmenter",
]

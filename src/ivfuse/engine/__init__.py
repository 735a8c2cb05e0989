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

from . import metafusion  # noqa: E402,F401  (registers the recipes; add new recipe modules here)
from . import tim  # noqa: E402,F401
from . import tsjnet  # noqa: E402,F401
from . import lite  # noqa: E402,F401
from . import occo  # noqa: E402,F401

__all__ = [
    "RECIPES", "Recipe", "register_recipe", "train", "check_device", "validate_fusion", "Stage", "Trainer",
    "BatchSource", "RandomCrop", "RandomFlip", "collate", "load_samples",
    "OptimStep", "call_with", "seed_everything", "virtual_step",
    "apply_overrides", "load_config", "export_safetensors", "load_checkpoint", "save_checkpoint",
    "finetune_detector", "finetune_segmenter",
]  # fmt: skip

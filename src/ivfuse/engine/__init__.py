"""Training: one loop (:class:`Trainer`) with method recipes as stage lists, configs and checkpoints."""

from .checkpoint import export_safetensors, load_checkpoint, save_checkpoint
from .config import apply_overrides, load_config
from .trainer import Stage, Trainer

RECIPES = {"metafusion": "ivfuse.engine.metafusion:train_metafusion"}

__all__ = ["RECIPES", "Stage", "Trainer", "apply_overrides", "export_safetensors", "load_checkpoint", "load_config", "save_checkpoint"]

"""Training checkpoints (see :mod:`ivfuse.checkpoint`, which the task models share without importing the engine)."""

from ..checkpoint import export_safetensors, load_checkpoint, save_checkpoint

__all__ = ["save_checkpoint", "load_checkpoint", "export_safetensors"]

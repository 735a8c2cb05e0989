"""Checkpoint files (training runs and task models): model/optimizer states, config, progress and metrics in one file, written atomically and
read back with ``torch.load(weights_only=True)`` (plain tensors, numbers, strings, lists and dicts only)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from .errors import InputError
from .utils import atomic_write_bytes

__all__ = ["save_checkpoint", "load_checkpoint", "export_safetensors"]


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: checkpoint not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{p}: not a readable ivfuse checkpoint ({type(e).__name__}: {str(e)[:120]})") from None


def export_safetensors(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Weights-only export (safetensors) with string metadata (e.g. the JSON config and metrics)."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)

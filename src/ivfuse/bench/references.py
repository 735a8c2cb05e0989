"""The bench's reference rows ``ir`` and ``vis``: the source images themselves, passed through unchanged.

In a module of their own because the bench keys a method's cached results by the SHA-256 of the source file that
defines its class (:func:`ivfuse.bench.cache.code_hash`): kept apart from the protocols, an edit of the protocols no
longer recomputes every cached ``ir`` / ``vis`` result.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..models import FusionModel

__all__ = ["REFERENCES", "SourceImage"]

REFERENCES = ("ir", "vis")


class SourceImage(FusionModel):
    """Reference input of the bench: returns the infrared (``ir``) or the visible (``vis``) image unchanged.

    Not a registered method (it fuses nothing): the bench adds the rows ``ir`` and ``vis`` with it so that every
    table shows what a single modality gives."""

    min_size = 1

    def __init__(self, which: str) -> None:
        super().__init__()
        if which not in ("ir", "vis"):
            raise InputError(f"reference input must be 'ir' or 'vis', got '{which}'")
        self.which = which
        self.name = which

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        return (ir if self.which == "ir" else vis).clamp(0, 1)

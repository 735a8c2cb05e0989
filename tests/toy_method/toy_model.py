"""The toy method's model file (#21 item 2): a learned fusion method in two parameters.

``fused Y = sigmoid(a)·IR + (1 − sigmoid(a))·Y + b`` — a learned mix of the sources plus a brightness shift; colour
comes from :class:`~ivfuse.models.FusionModel` (fuse Y, keep the visible chroma). ``weights=None``: untrained (the
pixel average), ``weights=FILE``: a safetensors export of its recipe.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ivfuse.models.base import FusionModel, load_checked, read_weights, register_model, resolve_weights


class ToyMix(FusionModel):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(()))
        self.b = nn.Parameter(torch.zeros(()))

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.a)
        return (w * ir + (1 - w) * y + self.b).clamp(0, 1)


@register_model("toy_mix")
def toy_mix(weights: str | os.PathLike | None = None) -> ToyMix:
    path = resolve_weights("toy_mix", weights)
    if path is None:
        return ToyMix().eval()
    state, _ = read_weights(path, "toy_mix")
    return load_checked(ToyMix(), state, path, "toy_mix")

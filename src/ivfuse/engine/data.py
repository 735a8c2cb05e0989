"""In-memory training data for the fusion recipes: random-crop batches of pairs, and labelled detection batches."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..data import load_dataset
from ..data.labels import Boxes
from ..data.transforms import random_crop

__all__ = ["load_pairs", "PairBatches", "DetectionBatches"]


def load_pairs(specs: Sequence[dict], with_boxes: bool = False, max_side: int | None = 1024) -> list[dict]:
    """Read every pair of the listed datasets once (visible as RGB; gray visible replicated to 3 channels).

    Each spec: ``{name, split, root?, labels?}``. Images whose long side exceeds ``max_side`` are downscaled
    (LLVIP's 1280×1024 frames) — boxes are scaled along.
    """
    out = []
    for spec in specs:
        kw = {k: v for k, v in spec.items() if k in ("root",)}
        labels = spec.get("labels", "auto" if with_boxes else None)
        ds = load_dataset(spec["name"], split=spec.get("split", "all"), det_labels=labels, **kw)
        for i in range(len(ds)):
            s = ds[i]
            ir, vis, boxes = s["ir"], s["vis"], s["boxes"]
            if vis.shape[0] == 1:
                vis = vis.expand(3, -1, -1).contiguous()
            h, w = ir.shape[-2:]
            if max_side and max(h, w) > max_side:
                r = max_side / max(h, w)
                size = (round(h * r), round(w * r))
                ir = F.interpolate(ir[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
                vis = F.interpolate(vis[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
                if boxes is not None:
                    boxes = Boxes(boxes.xyxy * r, boxes.labels, boxes.names)
            out.append({"name": f"{spec['name']}/{s['name']}", "ir": ir, "vis": vis, "boxes": boxes, "mask": None})
    return out


class PairBatches:
    """Per epoch: shuffled random crops ``(ir B×1×h×w, vis B×3×h×w)``; at most ``max_batches`` batches."""

    def __init__(self, pairs: list[dict], crop: Sequence[int], batch: int, max_batches: int | None = None, seed: int = 0):
        self.pairs, self.batch, self.max_batches = pairs, batch, max_batches
        self.crop = random_crop(tuple(crop))
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        n = len(self.pairs) // self.batch
        return min(n, self.max_batches) if self.max_batches else n

    def __call__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = list(range(len(self.pairs)))
        self.rng.shuffle(order)
        for b in range(len(self)):
            items = [self.crop(self.pairs[i]) for i in order[b * self.batch : (b + 1) * self.batch]]
            yield torch.stack([s["ir"] for s in items]), torch.stack([s["vis"] for s in items])

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        return next(iter(self()))


class DetectionBatches(PairBatches):
    """Like :class:`PairBatches` with the boxes of each crop: ``(ir, vis, [Boxes])``."""

    def __call__(self):
        order = list(range(len(self.pairs)))
        self.rng.shuffle(order)
        for b in range(len(self)):
            items = [self.crop(self.pairs[i]) for i in order[b * self.batch : (b + 1) * self.batch]]
            yield (torch.stack([s["ir"] for s in items]), torch.stack([s["vis"] for s in items]), [s["boxes"] for s in items])

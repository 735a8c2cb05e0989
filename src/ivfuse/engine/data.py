"""Training data for every recipe: samples in memory, one dict-yielding batch source, offline caches.

* :func:`load_samples` reads the pairs of the listed datasets once into sample dicts
  (``name, ir, vis, boxes, mask``).
* :class:`BatchSource` yields batches as dicts ``{"ir": B×1×h×w, "vis": B×3×h×w, "boxes": [Boxes | None],
  "mask": B×h×w | None, "name": [str], <extras>}``. Its randomness (order, crops, flips) is a pure function of
  ``(seed, key, epoch)`` — a ``torch.Generator`` seeded from them, never the global generators — so a resumed
  run sees exactly the data an uninterrupted one does, and model initialisation does not shift the data.
* :meth:`BatchSource.prepare` adds a per-sample extra (e.g. precomputed SAM masks) computed once, optionally
  cached on disk (safetensors, one file per sample); spatial extras (``…×H×W``) are cropped and flipped with
  the images.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import clip_boxes_to_image

from ..data import load_dataset
from ..data.labels import Boxes
from ..errors import InputError

__all__ = ["load_samples", "BatchSource", "RandomCrop", "RandomFlip", "collate", "derive_seed"]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (stable across processes and platforms)."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def load_samples(
    specs: Sequence[dict], with_boxes: bool = False, with_masks: bool = False, max_side: int | None = 1024
) -> list[dict]:
    """Read every pair of the listed datasets once (visible as RGB; gray visible replicated to 3 channels).

    Each spec: ``{name, split, root?, labels?}``. Images whose long side exceeds ``max_side`` are downscaled
    (LLVIP's 1280×1024 frames); boxes are scaled along and masks resized with nearest neighbour.
    """
    out = []
    for spec in specs:
        if not isinstance(spec, dict) or "name" not in spec:
            raise InputError(f"data spec {spec!r} must be a mapping with a 'name' (e.g. {{name: msrs, split: train}})")
        kw = {k: v for k, v in spec.items() if k in ("root",)}
        labels = spec.get("labels", "auto" if with_boxes else None)
        ds = load_dataset(spec["name"], split=spec.get("split", "all"), det_labels=labels, **kw)
        for i in range(len(ds)):
            s = ds[i]
            ir, vis, boxes, mask = s["ir"], s["vis"], s["boxes"], s["mask"] if with_masks else None
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
                if mask is not None:
                    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].to(mask.dtype)
            out.append({"name": f"{spec['name']}/{s['name']}", "ir": ir, "vis": vis, "boxes": boxes, "mask": mask})
    return out


def _hw(sample: dict) -> tuple[int, int]:
    return tuple((sample["ir"] if "ir" in sample else sample["vis"]).shape[-2:])


def _spatial(sample: dict, hw: tuple[int, int]) -> list[str]:
    return [k for k, v in sample.items() if torch.is_tensor(v) and v.ndim >= 2 and tuple(v.shape[-2:]) == hw]


class RandomCrop:
    """Crop every spatial tensor of a sample (images, mask, extras) at one random position; boxes are shifted,
    clipped to the crop and dropped below ``min_box`` pixels. Smaller images are zero-padded (masks with
    ``ignore_index``) at the bottom/right."""

    def __init__(self, size: int | Sequence[int], min_box: float = 1.0, ignore_index: int = 255) -> None:
        self.h, self.w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.min_box, self.ignore_index = min_box, ignore_index

    def __call__(self, s: dict, g: torch.Generator) -> dict:
        H, W = _hw(s)
        keys = _spatial(s, (H, W))
        out = dict(s)
        if H < self.h or W < self.w:
            ph, pw = max(0, self.h - H), max(0, self.w - W)
            for k in keys:
                fill = self.ignore_index if k == "mask" else 0
                out[k] = F.pad(s[k], (0, pw, 0, ph), value=fill)
            H, W = H + ph, W + pw
        top = int(torch.randint(0, H - self.h + 1, (1,), generator=g))
        left = int(torch.randint(0, W - self.w + 1, (1,), generator=g))
        for k in keys:
            out[k] = out[k][..., top : top + self.h, left : left + self.w]
        b = s.get("boxes")
        if b is not None:
            xy = b.xyxy - torch.tensor([left, top, left, top], dtype=b.xyxy.dtype)
            xy = clip_boxes_to_image(xy, (self.h, self.w))
            keep = ((xy[:, 2] - xy[:, 0]) >= self.min_box) & ((xy[:, 3] - xy[:, 1]) >= self.min_box)
            out["boxes"] = Boxes(xy[keep], b.labels[keep], b.names)
        return out


class RandomFlip:
    """Horizontal flip with probability ``p`` of every spatial tensor and the boxes of a sample."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, s: dict, g: torch.Generator) -> dict:
        if float(torch.rand((), generator=g)) >= self.p:
            return s
        H, W = _hw(s)
        out = dict(s)
        for k in _spatial(s, (H, W)):
            out[k] = s[k].flip(-1)
        b = s.get("boxes")
        if b is not None:
            x = b.xyxy
            out["boxes"] = Boxes(torch.stack([W - x[:, 2], x[:, 1], W - x[:, 0], x[:, 3]], 1), b.labels, b.names)
        return out


def collate(items: list[dict]) -> dict:
    """Stack equal-size tensors; boxes and names stay lists; ``mask`` is ``None`` unless every sample has one."""
    out: dict[str, Any] = {"name": [s.get("name") for s in items], "boxes": [s.get("boxes") for s in items]}
    keys = {k for s in items for k in s} - {"name", "boxes"}
    for k in sorted(keys):
        vals = [s.get(k) for s in items]
        if all(torch.is_tensor(v) for v in vals):
            out[k] = torch.stack(vals)
        elif k == "mask":
            out[k] = None
        else:
            out[k] = vals
    out.setdefault("mask", None)
    return out


class BatchSource:
    """Batches of ``samples`` (see module docstring).

    Args:
        samples: sample dicts (``load_samples``).
        batch: samples per batch.
        transforms: callables ``(sample, generator) -> sample`` applied in order (:class:`RandomCrop`,
            :class:`RandomFlip`, ...).
        max_batches: cap of batches per epoch (``None`` = all).
        seed: run seed; with ``key`` (e.g. the stage name) and the epoch it determines order and augmentation.
        drop_last: drop a last incomplete batch.
        collate_fn: turns a list of samples into a batch (default :func:`collate`).
        shard: under ``torchrun`` give each rank its share of every batch (``None``: when running distributed;
            ``False``: every rank gets whole batches, e.g. for an update that every rank computes identically).

    **Distributed** (:mod:`ivfuse.engine.distributed`): ``batch`` is the *global* batch. The order, crops and flips
    are drawn exactly as in a single process (every rank draws them for the whole global batch — crops are views,
    so this is cheap); rank r of W then keeps samples ``r, r+W, r+2W, ...`` of each batch. The ranks' shards are
    disjoint, their union is the single-process batch, and with gradients averaged over the ranks (OptimStep) a
    step equals the single-process step on the same global batch. ``batch`` must be a multiple of W; a last
    incomplete batch (``drop_last=False``) is cut to a multiple of W.
    """

    def __init__(
        self,
        samples: list[dict],
        batch: int,
        transforms: Sequence[Callable[[dict, torch.Generator], dict]] = (),
        max_batches: int | None = None,
        seed: int = 0,
        drop_last: bool = True,
        collate_fn: Callable[[list[dict]], Any] = collate,
        shard: bool | None = None,
    ) -> None:
        if batch < 1:
            raise InputError(f"batch size must be >= 1, got {batch}")
        if not samples:
            raise InputError("no training samples")
        self.samples, self.batch, self.transforms = samples, batch, list(transforms)
        self.max_batches, self.seed, self.drop_last, self.collate_fn = max_batches, seed, drop_last, collate_fn
        self.shard = shard
        if len(self) == 0:
            raise InputError(f"{len(samples)} samples make no batch of {batch}")
        self._shard()

    def _shard(self) -> tuple[int, int]:
        """``(rank, world size)`` this source shards for (``(0, 1)``: whole batches)."""
        from . import distributed as dist

        if self.shard is False or not dist.is_distributed():
            return 0, 1
        w = dist.world_size()
        if self.batch % w:
            raise InputError(
                f"batch size {self.batch} is not a multiple of the {w} torchrun processes: the batch is the global "
                f"batch, split evenly over the processes (use a batch of {max(w, self.batch // w * w)} or "
                f"{(self.batch // w + 1) * w}, or another --nproc_per_node)"
            )
        return dist.rank(), w

    def __len__(self) -> int:
        n = len(self.samples) // self.batch if self.drop_last else -(-len(self.samples) // self.batch)
        return min(n, self.max_batches) if self.max_batches else n

    def _generator(self, *parts: Any) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, *parts))

    def epoch(self, epoch: int, key: str = "") -> Iterator[Any]:
        """The batches of epoch ``epoch`` (0-based) of stream ``key``."""
        r, w = self._shard()
        g = self._generator(key, epoch)
        order = torch.randperm(len(self.samples), generator=g).tolist()
        for b in range(len(self)):
            items = [self._augment(self.samples[i], g) for i in order[b * self.batch : (b + 1) * self.batch]]
            if w > 1:
                items = items[: len(items) // w * w][r::w]
                if not items:
                    return
            yield self.collate_fn(items)

    def sample(self, key: str) -> Any:
        """One batch drawn for ``key`` alone (e.g. ``"mfe_1/inner/3/train"``)."""
        return next(iter(self.epoch(0, key)))

    def _augment(self, s: dict, g: torch.Generator) -> dict:
        for t in self.transforms:
            s = t(s, g)
        return s

    def prepare(
        self,
        name: str,
        fn: Callable[[dict], torch.Tensor],
        cache: str | os.PathLike | None = None,
        progress: bool = False,
    ) -> None:
        """Add ``sample[name] = fn(sample)`` to every sample, reading/writing ``cache/<sample name>.safetensors``
        when ``cache`` is given (so expensive extras such as SAM masks are computed once, offline)."""
        from safetensors.torch import load_file, save

        from ..utils import atomic_write_bytes

        it = self.samples
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"prepare {name}", total=len(self.samples))
        for s in it:
            f = Path(cache) / f"{str(s['name']).replace('/', '__')}.safetensors" if cache else None
            if f is not None and f.is_file():
                s[name] = load_file(f)[name]
                continue
            s[name] = fn(s)
            if f is not None:
                atomic_write_bytes(f, save({name: s[name].detach().contiguous().cpu()}))

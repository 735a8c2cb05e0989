"""Joint transforms: one random draw moves IR, visible, boxes and mask together.

Built on ``torchvision.transforms.v2`` (which samples parameters once per call for every tv_tensor in the
input). Wrap any v2 transform with :class:`Joint`; ready-made ones: :func:`random_crop`, :func:`hflip`,
:func:`resize`, :func:`train_transform`.

>>> t = Joint(v2.Compose([v2.RandomCrop(256), v2.RandomHorizontalFlip()]))
>>> sample = t(dataset[0])   # ir, vis, boxes, mask cropped/flipped alike; boxes leaving the crop are dropped
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from .labels import Boxes

__all__ = ["Joint", "random_crop", "hflip", "resize", "train_transform"]


class Joint:
    """Apply a torchvision v2 transform to a sample dict (``ir``, ``vis``, ``boxes``, ``mask``) jointly."""

    def __init__(self, transform: v2.Transform, min_box_size: float = 1.0) -> None:
        self.transform = transform
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=min_box_size, labels_getter=lambda d: d["labels"])

    def __call__(self, sample: dict) -> dict:
        h, w = sample["ir"].shape[-2:]
        data = {"ir": tv_tensors.Image(sample["ir"]), "vis": tv_tensors.Image(sample["vis"])}
        boxes: Boxes | None = sample.get("boxes")
        if boxes is not None:
            data["boxes"] = tv_tensors.BoundingBoxes(boxes.xyxy, format="XYXY", canvas_size=(h, w))
            data["labels"] = boxes.labels
        if sample.get("mask") is not None:
            data["mask"] = tv_tensors.Mask(sample["mask"])
        out = self.transform(data)
        if boxes is not None:
            out = self.sanitize(out)
        res = dict(sample)
        res["ir"] = out["ir"].as_subclass(torch.Tensor)
        res["vis"] = out["vis"].as_subclass(torch.Tensor)
        if boxes is not None:
            res["boxes"] = Boxes(out["boxes"].as_subclass(torch.Tensor), out["labels"], boxes.names)
        if sample.get("mask") is not None:
            res["mask"] = out["mask"].as_subclass(torch.Tensor)
        return res


def random_crop(size: int | tuple[int, int]) -> Joint:
    """Random crop of ``size`` (padded with zeros if the image is smaller)."""
    return Joint(v2.RandomCrop(size, pad_if_needed=True))


def hflip(p: float = 0.5) -> Joint:
    return Joint(v2.RandomHorizontalFlip(p))


def resize(size: int | tuple[int, int]) -> Joint:
    """Resize images (bilinear, antialiased), boxes (scaled) and masks (nearest)."""
    return Joint(v2.Resize(size, antialias=True))


def train_transform(crop: int | tuple[int, int] | None = 256, flip: bool = True) -> Joint:
    ops: list[v2.Transform] = []
    if crop:
        ops.append(v2.RandomCrop(crop, pad_if_needed=True))
    if flip:
        ops.append(v2.RandomHorizontalFlip())
    return Joint(v2.Compose(ops))

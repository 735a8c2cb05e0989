"""Data layer: image I/O and colour, strict pairing, dataset readers, labels, joint transforms.

Names are imported lazily (PEP 562) so that torch-free work (``ivfuse eval``) starts quickly.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "datasets": ["DATASETS", "FusionDataset", "collate", "list_datasets", "load_dataset"],
    "images": ["IMAGE_EXTENSIONS", "read_array", "read_gray_u8", "read_ir", "read_vis", "write_image"],
    "labels": ["Boxes", "read_coco", "read_mask", "read_voc", "read_yolo", "write_yolo"],
    "pairing": ["list_images", "pair_by_stem"],
    "transforms": ["Joint", "hflip", "random_crop", "resize", "train_transform"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

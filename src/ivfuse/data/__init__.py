"""Data layer: image I/O and colour, strict pairing, dataset readers, labels, joint transforms.

Names are imported lazily (PEP 562) so that torch-free work (``ivfuse eval``) starts quickly.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "datasets": ["DATASETS", "FusionDataset", "collate", "list_datasets", "load_dataset"],
    "images": [
        "IMAGE_EXTENSIONS",
        "image_size",
        "read_array",
        "read_gray_u8",
        "read_ir",
        "read_pair",
        "read_vis",
        "write_image",
    ],
    "labels": ["Boxes", "read_coco", "read_mask", "read_voc", "read_yolo", "write_yolo"],
    "pairing": ["list_images", "pair_by_stem"],
    "transforms": ["Joint", "hflip", "random_crop", "resize", "train_transform"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

"""What ``downstream``, ``detect`` and ``segment`` share: their model options, building the detector or segmenter,
drawing on every image of a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_device


def deeplab_backbone() -> str:
    """The default ``backbone`` of the registered ``deeplabv3plus`` segmenter (its factory's signature)."""
    from ..tasks.segmenters import SEGMENTERS
    from . import api_default

    return api_default(SEGMENTERS.get("deeplabv3plus"), "backbone")


def add_segmenter_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=deeplab_backbone(), help="timm backbone of deeplabv3plus")
    p.add_argument("--num-classes", type=int, help="classes of a segmenter trained from scratch")


def add_image_io(p: argparse.ArgumentParser, model: str, what: str) -> None:
    """``--images``, ``-o``, ``--model`` (default ``model``, from the API), ``--weights``, ``--device``."""
    p.add_argument("--images", required=True, help="image or folder")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--model", default=model, help=f"{what} (ivfuse list {what}s)")
    p.add_argument("--weights", help=f"weights file of the {what} (default: its pretrained weights)")
    add_device(p)


def split_names(v: str | None) -> list[str] | None:
    return [x.strip() for x in v.split(",") if x.strip()] if v else None


def load_detector(a: argparse.Namespace, data_names=None):
    from ..tasks import create_detector

    kw = {"weights": a.weights} if a.weights else {}
    if getattr(a, "reset_head", False):
        from ..tasks.detectors import transfer_matching

        det = create_detector(a.model, weights=None, num_classes=len(data_names), class_names=tuple(data_names))
        transfer_matching(create_detector(a.model, **kw), det)  # pretrained body, new class head
    else:
        det = create_detector(a.model, **kw)
    return det.to(a.device)


def load_segmenter(a: argparse.Namespace):
    from ..tasks.segmenters import create_segmenter

    names = split_names(getattr(a, "names", None))
    kw = {"weights": a.weights, "num_classes": getattr(a, "num_classes", None), "class_names": names}
    if a.model == "deeplabv3plus":
        kw["backbone"] = a.backbone
    return create_segmenter(a.model, **kw)


def render_each(a: argparse.Namespace, desc: str, render) -> int:
    """Run ``render(image C×H×W float) -> uint8 C×H×W`` on an image or every image of a folder; write PNGs to -o."""
    from tqdm.auto import tqdm

    from ..data.images import read_vis, write_image
    from ..data.pairing import list_images

    imgs = list_images(a.images) if Path(a.images).is_dir() else {Path(a.images).stem: Path(a.images)}
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    for k, p in tqdm(sorted(imgs.items()), desc=desc, disable=a.quiet):
        write_image(out / f"{k}.png", render(read_vis(p)).float() / 255)
    print(f"wrote {len(imgs)} {desc} images to {out}")
    return 0


def as_u8(x):
    import torch

    return (x.expand(3, -1, -1) * 255).round().to(torch.uint8)

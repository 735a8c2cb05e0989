"""``ivfuse segment``: colour-coded segmentation maps with a class legend beside each image."""

from __future__ import annotations

import argparse

from ._tasknets import add_image_io, add_segmenter_options, as_u8, load_segmenter, render_each

HELP = "save colour-coded segmentation maps beside the images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..tasks.segmenters import DEFAULT_SEGMENTER

    add_image_io(p, DEFAULT_SEGMENTER, "segmenter")
    add_segmenter_options(p)
    p.add_argument("--names", help="comma-separated class names of a segmenter trained from scratch")


def run(a: argparse.Namespace) -> int:
    import torch
    from torchvision.utils import draw_segmentation_masks

    from ..tasks.segmenters import CITYSCAPES_PALETTE

    seg = load_segmenter(a).to(a.device)
    pal = CITYSCAPES_PALETTE if seg.num_classes == 20 else _palette(seg.num_classes)

    def render(x):
        pred = seg.predict(x[None].to(a.device))[0].cpu()
        u8 = as_u8(x)
        present = pred.unique().tolist()
        masks = torch.stack([pred == c for c in present])
        colours = [tuple(pal[c]) for c in present]
        over = draw_segmentation_masks(u8, masks, alpha=0.55, colors=colours)
        legend = _legend([seg.class_names[c] for c in present], colours, u8.shape[-2])
        return torch.cat([u8, over, legend], 2)

    return render_each(a, "segmentation", render)


def _palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct colours (evenly spaced hues, alternating brightness) for classes without a dataset palette."""
    from PIL import ImageColor

    return [ImageColor.getrgb(f"hsv({round(360 * i / max(n, 1))}, 75%, {95 if i % 2 else 70}%)") for i in range(n)]


def _legend(names: list[str], colours: list[tuple[int, int, int]], height: int):
    """A white ``3×height×W`` panel listing each class name beside a swatch of its colour (uint8)."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(10, min(16, height // 24)))
    row = max(14, int(font.size * 1.5))
    sw = row - 4
    width = 12 + sw + 8 + max((int(font.getlength(n)) for n in names), default=0) + 12
    cols = max(1, -(-len(names) * row // max(row, height - 16)))  # wrap into columns when the image is short
    per_col = -(-len(names) // cols)
    im = Image.new("RGB", (width * cols, height), "white")
    draw = ImageDraw.Draw(im)
    for i, (n, c) in enumerate(zip(names, colours)):
        x0, y0 = (i // per_col) * width + 12, 8 + (i % per_col) * row
        draw.rectangle([x0, y0, x0 + sw, y0 + sw], fill=tuple(c), outline="black")
        draw.text((x0 + sw + 8, y0 + sw / 2), n, fill="black", font=font, anchor="lm")
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)

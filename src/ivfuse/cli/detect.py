"""``ivfuse detect``: draw a detector's boxes on images, for people to look at."""

from __future__ import annotations

import argparse

from ._tasknets import add_image_io, as_u8, load_detector, render_each

HELP = "draw detections on images for people to look at"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..tasks.detectors import DEFAULT_DETECTOR, DETECT_CONF

    add_image_io(p, DEFAULT_DETECTOR, "detector")
    p.add_argument("--conf", type=float, default=DETECT_CONF, help="confidence threshold of the boxes drawn")


def run(a: argparse.Namespace) -> int:
    from torchvision.utils import draw_bounding_boxes

    det = load_detector(a)

    def render(x):
        d = det.predict([x], conf=a.conf)[0]
        labels = [f"{det.class_names[int(c)]} {float(s):.2f}" for c, s in zip(d.labels, d.scores)]
        return draw_bounding_boxes(as_u8(x), d.xyxy, labels, colors="yellow", width=2)

    return render_each(a, "detection", render)

"""``ivfuse masks``: OCCO's object region maps (detector boxes -> SAM masks per modality -> shared/unique/background)
or, with ``--kind seg``, TSJNet's segmentation pseudo-masks (:mod:`ivfuse.masks`)."""

from __future__ import annotations

import argparse

from . import add_device, api_default

HELP = (
    "OCCO object masks: detector boxes -> SAM masks per modality -> shared/unique/background maps; --kind seg: "
    "segmentation pseudo-masks (TSJNet)"
)
KINDS = ("occo", "seg")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..masks import generate_masks, generate_seg_masks
    from ..tasks.pseudo import PSEUDO_SOURCES

    p.add_argument("--ir", required=True, help="infrared folder")
    p.add_argument("--vis", required=True, help="visible folder (pairs matched by file stem)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output folder: <stem>.png class map (0 bg, 1 shared, 2 ir-unique, 3 vis-unique), <stem>.json "
        "instances, preview/<stem>.png; --kind seg: <stem>.png MSRS class ids",
    )
    p.add_argument(
        "--kind",
        default=KINDS[0],
        choices=KINDS,
        help="occo: OCCO region maps; seg: Cityscapes-ESPNetv2 pseudo segmentation masks in MSRS' classes, "
        "as TSJNet trains on (docs/tsjnet.md)",
    )
    p.add_argument(
        "--seg-source",
        default=api_default(generate_seg_masks, "source"),
        help=f"--kind seg: input of the labeller, one of {', '.join(PSEUDO_SOURCES)} (auto: visible by "
        "day, mean of IR and visible by night)",
    )
    p.add_argument(
        "--night",
        type=float,
        default=api_default(generate_seg_masks, "night"),
        help="--kind seg, auto: mean visible luminance below this = night",
    )
    p.add_argument("--seg-weights", help="--kind seg: ESPNetv2 Cityscapes checkpoint (default: the shared one)")
    p.add_argument(
        "--prompt-detector",
        default=api_default(generate_masks, "detector"),
        help="ivfuse detector giving the box prompts (ivfuse list detectors)",
    )
    p.add_argument("--detector-weights", help="weights of the prompt detector (default: its pretrained weights)")
    p.add_argument(
        "--conf", type=float, default=api_default(generate_masks, "conf"), help="detector confidence threshold"
    )
    p.add_argument(
        "--classes",
        default=",".join(api_default(generate_masks, "classes")),
        help="comma-separated detector classes used as prompts, or 'all'",
    )
    p.add_argument(
        "--sam-weights", help="SAM checkpoint: MobileSAM (default, shared weights) or official SAM ViT-B/L/H (.pth)"
    )
    p.add_argument("--overwrite", action="store_true", help="recompute pairs whose outputs exist")
    add_device(p, api_default(generate_masks, "device"))


def run(a: argparse.Namespace) -> int:
    from ..masks import generate_masks, generate_seg_masks

    common = {"overwrite": a.overwrite, "device": a.device, "progress": not a.quiet}
    if a.kind == "seg":
        res = generate_seg_masks(
            a.ir, a.vis, a.output, source=a.seg_source, night=a.night, weights=a.seg_weights, **common
        )
        print(f"seg masks: {len(res['written'])} written, {len(res['skipped'])} skipped (already there) -> {a.output}")
        return 0
    classes = None if a.classes == "all" else [c.strip() for c in a.classes.split(",") if c.strip()]
    res = generate_masks(
        a.ir,
        a.vis,
        a.output,
        detector=a.prompt_detector,
        detector_weights=a.detector_weights,
        sam_weights=a.sam_weights,
        conf=a.conf,
        classes=classes,
        **common,
    )
    print(f"masks: {len(res['written'])} written, {len(res['skipped'])} skipped (already there) -> {a.output}")
    return 0

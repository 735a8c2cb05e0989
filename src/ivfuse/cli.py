"""``ivfuse`` command line: ``ivfuse MODE [options]``.

Modes: ``fuse``, ``export``, ``eval``, ``list``, ``downstream``, ``detect``, ``train``, ``segment``, ``masks``, ``bench``
(``ivfuse --help``). Every user error
prints one line ``ivfuse: error: ...`` naming the file or name at fault, and exits with status 2 without
leaving partial output behind.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import IvfuseError

__all__ = ["main", "build_parser", "parse_options"]


class _Parser(argparse.ArgumentParser):
    """argparse with "did you mean" hints for mistyped modes and options."""

    def error(self, message: str):  # type: ignore[override]
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'?([\w.-]+)'?", m.group(2))
            close = difflib.get_close_matches(m.group(1), choices, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        m = re.search(r"unrecognized arguments: (\S+)", message)
        if m:
            opts = [o for a in self._actions for o in a.option_strings]
            for a in self._actions:  # options of the modes, for errors raised by the top-level parser
                if isinstance(a, argparse._SubParsersAction):
                    opts += [o for sp in a.choices.values() for b in sp._actions for o in b.option_strings]
            close = difflib.get_close_matches(m.group(1).split("=")[0], opts, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_options(items: Sequence[str] | None) -> dict:
    """``["levels=5", "eps1=0.3", "name=x"]`` -> ``{"levels": 5, "eps1": 0.3, "name": "x"}`` (the one ``key=value``
    parser of :mod:`ivfuse.config`, shared with ``ivfuse train``; ``-`` in keys becomes ``_``)."""
    from .config import parse_items

    return {k.replace("-", "_"): v for k, v in parse_items(items).items()}


def _terminate_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt, so a killed folder run cleans its staging folder and keeps finished images."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. main() called from a worker thread): leave the default
        pass


def _cmd_fuse(a: argparse.Namespace) -> int:
    from .fusion import DEFAULT_METHOD, fuse_files, fuse_folder
    from .utils import check_device

    check_device(a.device)
    opts = parse_options(a.opt)
    if a.weights:
        opts["weights"] = a.weights
    ir, vis = Path(a.ir), Path(a.vis)
    method = a.method or DEFAULT_METHOD
    speed = {"amp": a.amp, "channels_last": a.channels_last, "compile": a.compile}
    from .video import fuse_video, is_video

    if is_video(ir) or is_video(vis):
        if not (is_video(ir) and is_video(vis)):
            raise IvfuseError(f"--ir {ir} and --vis {vis} must both be videos (or both images/folders)")
        r = fuse_video(ir, vis, a.output, method, a.device, progress=not a.quiet, tile=a.tile or None,
                       tile_overlap=a.tile_overlap, **speed, **opts)
        print(f"wrote {r['output']} ({r['frames']} frames, {r['size'][0]}x{r['size'][1]} at {r['rate']:.3g} fps; "
              f"fused {r['fps']:.2f} frames/s with '{method}')")  # fmt: skip
        return 0
    if ir.is_dir() != vis.is_dir():
        raise IvfuseError(f"--ir {ir} and --vis {vis} must both be files or both be folders")
    speed.update(tile=a.tile or None, tile_overlap=a.tile_overlap)
    if ir.is_dir():
        _terminate_as_interrupt()
        res = fuse_folder(ir, vis, a.output, method, a.device, a.ext, a.ir_norm, progress=not a.quiet,
                          skip_existing=a.skip_existing, continue_on_error=a.continue_on_error, batch=a.batch,
                          workers=a.workers, **speed, **opts)  # fmt: skip
        skipped = f" ({len(res.skipped)} already there, skipped)" if res.skipped else ""
        print(f"fused {len(res)} pairs with '{method}' into {a.output}{skipped}")
        if res.failed:
            for key, msg in res.failed.items():
                print(f"ivfuse: error: {msg}", file=sys.stderr)
            print(f"ivfuse: {len(res.failed)} of {len(res) + len(res.failed) + len(res.skipped)} pairs failed: "
                  f"{', '.join(list(res.failed)[:8])}" + (" ..." if len(res.failed) > 8 else ""), file=sys.stderr)  # fmt: skip
            return 1
    else:
        out = fuse_files(ir, vis, a.output, method, a.device, a.ir_norm, **speed, **opts)
        print(f"wrote {out} ({method})")
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from .export import export_onnx

    opts = parse_options(a.opt)
    if a.weights:
        opts["weights"] = a.weights
    out = export_onnx(a.method, a.output, opset=a.opset, **opts)
    print(f"wrote {out} ({a.method}, ONNX opset {a.opset}, dynamic batch/height/width; checked against PyTorch)")
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from rich.console import Console

    from .evaluate import evaluate_folder, results_table, write_results

    metrics = [m.strip() for m in a.metrics.split(",") if m.strip()] if a.metrics else None
    if a.out:
        from .evaluate import RESULT_FORMATS

        if Path(a.out).suffix.lower() not in RESULT_FORMATS:
            raise IvfuseError(f"{a.out}: unsupported results format (use {', '.join(RESULT_FORMATS)})")
    names = None
    if a.names:
        p = Path(a.names)
        if not p.is_file():
            raise IvfuseError(f"{p}: names file not found")
        names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not names:
            raise IvfuseError(f"{p}: names file lists no image")
    res = evaluate_folder(a.ir, a.vis, a.fused, metrics, a.workers, progress=not a.quiet, names=names,
                          only_fused=a.only_fused, ir_norm=a.ir_norm)  # fmt: skip
    Console(width=max(100, 14 * (len(res["mean"]) + 1))).print(results_table(res, f"fusion metrics: {a.fused}"))
    if a.out:
        print(f"wrote {write_results(res, a.out)}")
    return 0


def _cmd_list(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"ivfuse {a.what}")
    if a.what == "metrics":
        from .metrics import DEFAULT_METRICS, METRICS

        for c in ("name", "better", "default", "reference"):
            t.add_column(c)
        for n in METRICS.names():
            m = METRICS.get(n)
            t.add_row(n, "lower" if m.lower_better else "higher", "yes" if n in DEFAULT_METRICS else "", m.reference)
    elif a.what == "methods":
        from .fusion import DEFAULT_METHOD
        from .models import MODELS

        t.add_column("name")
        t.add_column("description")
        for n in MODELS.names():
            doc = (MODELS.get(n).__doc__ or "").strip().splitlines()
            plugin = f" (plugin: {MODELS.plugins[n]})" if n in MODELS.plugins else ""
            t.add_row(n + (" (default)" if n == DEFAULT_METHOD else ""), (doc[0] if doc else "") + plugin)
    elif a.what == "detectors":
        from .tasks.detectors import DETECTORS

        t.add_column("name")
        t.add_column("description")
        for n in DETECTORS.names():
            doc = (DETECTORS.get(n).__doc__ or "").strip().splitlines()
            t.add_row(n + (" (default)" if n == "yolov5n" else ""), doc[0] if doc else "")
    elif a.what == "segmenters":
        from .tasks import segmenters

        registry = getattr(segmenters, "SEGMENTERS", None)
        known = ({n: registry.get(n) for n in registry.names()} if registry is not None
                 else {"espnetv2": segmenters.ESPNetv2Seg, "deeplabv3plus": segmenters.DeepLabV3Plus})  # fmt: skip
        t.add_column("name")
        t.add_column("description")
        for n, obj in known.items():
            doc = (obj.__doc__ or "").strip().splitlines()
            t.add_row(n + (" (default)" if n == "espnetv2" else ""), doc[0] if doc else "")
    else:
        from .data import DATASETS

        for c in ("name", "splits", "labels", "notes"):
            t.add_column(c)
        for n in DATASETS.names():
            s = DATASETS.get(n)
            labels = ", ".join(filter(None, [f"det ({s.det_format})" if s.det_dirs else "", "seg" if s.seg_dirs else ""]))
            t.add_row(n, ", ".join(s.splits), labels or "-", s.note)
    Console(width=160).print(t)
    return 0


def _split_names(v: str | None) -> list[str] | None:
    return [x.strip() for x in v.split(",") if x.strip()] if v else None


def _load_detector(a: argparse.Namespace, data_names=None):
    from .tasks import create_detector

    kw = {"weights": a.weights} if a.weights else {}
    if getattr(a, "reset_head", False):
        from .tasks.detectors import transfer_matching

        det = create_detector(a.model, weights=None, num_classes=len(data_names), class_names=tuple(data_names))
        transfer_matching(create_detector(a.model, **kw), det)  # pretrained body, new class head
    else:
        det = create_detector(a.model, **kw)
    return det.to(a.device)


def _cmd_downstream(a: argparse.Namespace) -> int:
    import json

    from .utils import atomic_write_text

    from .utils import check_device

    check_device(a.device)
    if a.task == "detect":
        from .engine.finetune import finetune_detector
        from .tasks.downstream import class_mapping, evaluate_detector, load_detection_set

        if not a.labels:
            raise IvfuseError("downstream detect needs --labels")
        if not 0 <= a.merge_iou <= 1:
            raise IvfuseError(f"--merge-iou {a.merge_iou}: must lie in [0, 1] (1 keeps every box of every --labels)")
        merge = a.merge_iou if a.merge_iou < 1 else None
        data = load_detection_set(a.images, a.labels, _split_names(a.names), merge_iou=merge)
        det = _load_detector(a, data.class_names)
        mapping = class_mapping(data.class_names, det.class_names)
        result: dict = {"model": a.model, "weights": _weights_used(a), "images": str(a.images),
                        "labels": [str(x) for x in a.labels]}  # fmt: skip
        if len(a.labels) > 1:
            result["merge_iou"] = merge
        if a.train_images:
            train = load_detection_set(a.train_images, a.train_labels or a.labels, data.class_names, merge_iou=merge)
            hist = finetune_detector(det, train, mapping, a.epochs, a.batch, a.lr, a.imgsz, progress=not a.quiet)
            result["finetune"] = {"images": len(train), "epochs": a.epochs, "loss_per_epoch": hist}
            if a.save:
                det.save(a.save)
                result["finetune"]["saved"] = str(a.save)
        result.update(evaluate_detector(det, data, mapping, progress=not a.quiet))
        print(f"{a.model}: mAP50 {result['mAP50']:.4f}  mAP50:95 {result['mAP50_95']:.4f}  ({result['n_images']} images)")
        for n, v in result["per_class"].items():
            if v["AP50"] is not None:
                print(f"  {n:>12s}: AP50 {v['AP50']:.4f}  AP50:95 {v['AP50_95']:.4f}  ({v['n_gt']} boxes)")
    else:
        from .engine.finetune import finetune_segmenter
        from .tasks.downstream import evaluate_segmenter, load_segmentation_set

        if not a.masks:
            raise IvfuseError("downstream segment needs --masks")
        data = load_segmentation_set(a.images, a.masks)
        seg = _load_segmenter(a).to(a.device)
        result = {"model": a.model, "weights": _weights_used(a), "images": str(a.images)}
        if a.train_images:
            train = load_segmentation_set(a.train_images, a.train_masks or a.masks)
            result["finetune"] = {"images": len(train), "epochs": a.epochs,
                                  "loss_per_epoch": finetune_segmenter(seg, train, a.epochs, a.batch, a.lr, progress=not a.quiet)}  # fmt: skip
        result.update(evaluate_segmenter(seg, data, seg.num_classes, seg.class_names, progress=not a.quiet))
        print(f"{a.model}: mIoU {result['mIoU']:.4f}  pixel acc {result['pixel_acc']:.4f}  ({result['n_images']} images)")
    if a.out:
        atomic_write_text(a.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0


def _weights_used(a: argparse.Namespace) -> str | None:
    """The weights file a downstream model was built from: ``--weights``, else the default file actually loaded
    (YOLOv5n COCO, ESPNetv2 Cityscapes); ``None`` only for a model trained from scratch."""
    from .weights import weights_path

    if a.weights:
        return str(a.weights)
    default = {"yolov5n": "yolov5n_coco", "espnetv2": "espnetv2_city"}.get(a.model)
    if default is None or (a.model == "espnetv2" and getattr(a, "num_classes", None)):
        return None
    return str(weights_path(default).resolve())


def _load_segmenter(a: argparse.Namespace):
    from .tasks.segmenters import create_segmenter

    names = _split_names(getattr(a, "names", None))
    kw = {"weights": a.weights, "num_classes": getattr(a, "num_classes", None), "class_names": names}
    if a.model == "deeplabv3plus":
        kw["backbone"] = a.backbone
    return create_segmenter(a.model, **kw)


def _render_each(a: argparse.Namespace, desc: str, render) -> int:
    """Run ``render(image C×H×W float) -> uint8 C×H×W`` on an image or every image of a folder; write PNGs to -o."""
    from tqdm.auto import tqdm

    from .data.images import read_vis, write_image
    from .data.pairing import list_images

    imgs = list_images(a.images) if Path(a.images).is_dir() else {Path(a.images).stem: Path(a.images)}
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    for k, p in tqdm(sorted(imgs.items()), desc=desc, disable=a.quiet):
        write_image(out / f"{k}.png", render(read_vis(p)).float() / 255)
    print(f"wrote {len(imgs)} {desc} images to {out}")
    return 0


def _as_u8(x):
    import torch

    return (x.expand(3, -1, -1) * 255).round().to(torch.uint8)


def _cmd_detect(a: argparse.Namespace) -> int:
    from torchvision.utils import draw_bounding_boxes

    from .utils import check_device

    check_device(a.device)
    det = _load_detector(a)

    def render(x):
        d = det.predict([x], conf=a.conf)[0]
        labels = [f"{det.class_names[int(c)]} {float(s):.2f}" for c, s in zip(d.labels, d.scores)]
        return draw_bounding_boxes(_as_u8(x), d.xyxy, labels, colors="yellow", width=2)

    return _render_each(a, "detection", render)


def _cmd_segment(a: argparse.Namespace) -> int:
    import torch
    from torchvision.utils import draw_segmentation_masks

    from .tasks.segmenters import CITYSCAPES_PALETTE
    from .utils import check_device

    check_device(a.device)
    seg = _load_segmenter(a).to(a.device)
    pal = CITYSCAPES_PALETTE if seg.num_classes == 20 else _palette(seg.num_classes)

    def render(x):
        pred = seg.predict(x[None].to(a.device))[0].cpu()
        u8 = _as_u8(x)
        present = pred.unique().tolist()
        masks = torch.stack([pred == c for c in present])
        colours = [tuple(pal[c]) for c in present]
        over = draw_segmentation_masks(u8, masks, alpha=0.55, colors=colours)
        legend = _legend([seg.class_names[c] for c in present], colours, u8.shape[-2])
        return torch.cat([u8, over, legend], 2)

    return _render_each(a, "segmentation", render)


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


def _cmd_train(a: argparse.Namespace) -> int:
    import json

    from .engine import RECIPES, train
    from .engine.config import load_config, split_items

    if any(x in ("-h", "--help") for x in [a.method, *a.items]):
        build_parser().parse_args(["train", "--help"])  # prints the usage and exits
    quiet = a.quiet or any(x in _QUIET for x in a.items)  # the flags may follow the items
    items = [x for x in a.items if x not in (*_QUIET, *_VERBOSE)]
    bad = [x for x in items if x.startswith("-")]
    if bad:
        raise IvfuseError(f"train: unknown option '{bad[0]}' (items are key=value; the only flags are -q/--quiet and "
                          "-v/--verbose)")  # fmt: skip
    RECIPES.get(a.method)  # unknown method: "did you mean"
    run, overrides = split_items(items)
    cfg = load_config(a.method, run.get("preset"), run.get("config"), overrides)  # keys and types checked here
    out = run.get("out", f"runs/{a.method}")
    # train() checks the resume mode, the device and the recipe's constraints before it writes anything
    summary = train(a.method, cfg, out, run.get("export"), progress=not quiet, resume=run.get("resume", "auto"))
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports (the process group is gone by now)
        return 0
    print(json.dumps({"out": out, "epoch_seconds": summary["epoch_s"], "val": summary["metrics"].get("val", {})}, indent=1))
    print(f"run folder: {out} (final.pt, summary.json, log.csv)")
    if summary.get("export"):
        print(f"exported the trained model to {summary['export']}")
    return 0


def _cmd_masks(a: argparse.Namespace) -> int:
    from .masks import generate_masks, generate_seg_masks
    from .tasks.pseudo import DEFAULT_CLASSES
    from .utils import check_device

    if a.kind == "seg":
        res = generate_seg_masks(a.ir, a.vis, a.output, source=a.seg_source, night=a.night, weights=a.seg_weights,
                                 overwrite=a.overwrite, device=check_device(a.device), progress=not a.quiet)  # fmt: skip
        print(f"seg masks: {len(res['written'])} written, {len(res['skipped'])} skipped (already there) -> {a.output}")
        return 0
    classes = None if a.classes == "all" else [c.strip() for c in (a.classes or ",".join(DEFAULT_CLASSES)).split(",") if c.strip()]
    res = generate_masks(a.ir, a.vis, a.output, detector=a.prompt_detector, detector_weights=a.detector_weights,
                         sam_weights=a.sam_weights, conf=a.conf, classes=classes, overwrite=a.overwrite,
                         device=check_device(a.device), progress=not a.quiet)  # fmt: skip
    print(f"masks: {len(res['written'])} written, {len(res['skipped'])} skipped (already there) -> {a.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="ivfuse", description="Task-driven infrared-visible image fusion.")
    p.add_argument("--version", action="version", version=f"ivfuse {__version__}")
    sub = p.add_subparsers(dest="command", metavar="MODE", parser_class=_Parser, required=True)

    f = sub.add_parser("fuse", help="fuse an IR/visible pair, or two folders of pairs matched by file stem")
    f.add_argument("--ir", required=True, help="infrared image or folder")
    f.add_argument("--vis", required=True, help="visible image or folder")
    f.add_argument("-o", "--output", required=True, help="output image (pair mode) or folder (folder mode)")
    f.add_argument("--method", help="fusion method (ivfuse list methods); default: the shipped default model")
    f.add_argument("--weights", help="checkpoint file for learned methods")
    f.add_argument("--opt", action="append", metavar="KEY=VALUE", help="method option, repeatable (e.g. levels=5)")
    f.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1 ...)")
    f.add_argument("--ext", default=".png", help="output extension in folder mode (default .png)")
    f.add_argument("--ir-norm", default="minmax", choices=["minmax", "percentile", "scale"],
                   help="normalisation of 16-bit/float infrared data (8-bit is divided by 255)")
    f.add_argument("--skip-existing", action="store_true",
                   help="folder mode: keep outputs that already exist (resume an interrupted run)")
    f.add_argument("--continue-on-error", action="store_true",
                   help="folder mode: fuse every good pair, report the bad ones at the end and exit with status 1")
    f.add_argument("--batch", type=int, default=1, help="folder mode: pairs per forward pass (equal sizes are grouped)")
    f.add_argument("--workers", type=int, help="folder mode: DataLoader reader processes (default 0 at batch 1, else 2)")
    f.add_argument("--amp", choices=["none", "bf16", "fp16"],
                   help="autocast precision, as the training key amp= (cuda: bf16/fp16; cpu: bf16 only; none = fp32)")
    f.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    f.add_argument("--compile", action="store_true", help="torch.compile the model (slow first call)")
    f.add_argument("--tile", type=int, metavar="N",
                   help="fuse in NxN windows blended without seams: large images in bounded memory (e.g. 1024; 0 = off)")
    f.add_argument("--tile-overlap", type=int, metavar="M",
                   help="overlap of neighbouring --tile windows in pixels (default N/8)")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    f.set_defaults(run=_cmd_fuse)

    x = sub.add_parser("export", help="export a method to ONNX (dynamic batch/height/width) for onnxruntime: --method onnx:FILE")
    x.add_argument("method", help="method to export (ivfuse list methods)")
    x.add_argument("--weights", help="checkpoint file for learned methods")
    x.add_argument("--opt", action="append", metavar="KEY=VALUE", help="method option, repeatable")
    x.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    x.add_argument("-o", "--output", required=True, help="output file (.onnx)")
    x.set_defaults(run=_cmd_export)

    e = sub.add_parser("eval", help="score fused images against their sources")
    e.add_argument("--ir", required=True, help="infrared folder")
    e.add_argument("--vis", required=True, help="visible folder")
    e.add_argument("--fused", required=True, help="folder of fused images (same stems)")
    e.add_argument("--metrics", help="comma-separated metric names (default: the standard suite)")
    e.add_argument("--out", help="write results to .json, .csv or .md")
    e.add_argument("--names", help="text file of image names (one per line, extension optional): score only these")
    e.add_argument("--only-fused", action="store_true",
                   help="score the fused images present; source pairs without a fused image are reported, not an error")
    e.add_argument("--ir-norm", choices=["minmax", "percentile", "scale"],
                   help="read 16-bit/float infrared as `ivfuse fuse --ir-norm` does (then quantised to 8 bits); "
                   "default: infrared must be 8-bit")
    e.add_argument("--workers", type=int, help="processes (default: all cores)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(run=_cmd_eval)

    ls = sub.add_parser("list", help="list methods, metrics, datasets, detectors or segmenters")
    ls.add_argument("what", choices=["methods", "metrics", "datasets", "detectors", "segmenters"])
    ls.set_defaults(run=_cmd_list)

    d = sub.add_parser("downstream", help="evaluate images with a detector (mAP) or segmenter (mIoU), optionally fine-tuning first")
    d.add_argument("task", choices=["detect", "segment"])
    d.add_argument("--images", required=True, help="folder of images to judge (IR, visible or fused)")
    d.add_argument("--labels", action="append", help="YOLO/VOC label folder or COCO json; repeat to join sets (union)")
    d.add_argument("--masks", help="folder of class-id mask PNGs (segment)")
    d.add_argument("--merge-iou", type=float, default=0.5,
                   help="with several --labels: a later box with the class of an earlier one and IoU above this is "
                   "the same object and is dropped, the earlier kept (default 0.5; 1 keeps every box)")
    d.add_argument("--names", help="comma-separated dataset class names (default: classes.txt beside the labels)")
    d.add_argument("--model", default=None, help="detector (yolov5n, ..., fasterrcnn_resnet50_fpn) or segmenter (espnetv2, deeplabv3plus)")
    d.add_argument("--weights", help="weights file (default: the shared COCO YOLOv5n / Cityscapes ESPNetv2)")
    d.add_argument("--backbone", default="resnet50", help="timm backbone for deeplabv3plus")
    d.add_argument("--num-classes", type=int, help="classes of a segmenter trained from scratch")
    d.add_argument("--reset-head", action="store_true", help="new detection head with the dataset's classes")
    d.add_argument("--train-images", help="fine-tune on these images first")
    d.add_argument("--train-labels", action="append", help="labels of the training images (default: --labels)")
    d.add_argument("--train-masks", help="masks of the training images (default: --masks)")
    d.add_argument("--epochs", type=int, default=5)
    d.add_argument("--batch", type=int, default=4)
    d.add_argument("--lr", type=float, default=0.002)
    d.add_argument("--imgsz", type=int, default=640)
    d.add_argument("--save", help="save the fine-tuned weights here")
    d.add_argument("--out", help="write results JSON")
    d.add_argument("--device", default="cpu")
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(run=_cmd_downstream)

    def image_io(sp: argparse.ArgumentParser, model: str) -> None:
        sp.add_argument("--images", required=True, help="image or folder")
        sp.add_argument("-o", "--output", required=True, help="output folder")
        sp.add_argument("--model", default=model)
        sp.add_argument("--weights")
        sp.add_argument("--device", default="cpu")
        sp.add_argument("-q", "--quiet", action="store_true")

    dt = sub.add_parser("detect", help="draw detections on images for people to look at")
    image_io(dt, "yolov5n")
    dt.add_argument("--conf", type=float, default=0.25)
    dt.set_defaults(run=_cmd_detect)

    tr = sub.add_parser("train", help="train a method: ivfuse train metafusion [preset=cpu] [config=FILE] [out=DIR] [export=FILE] key=value ...")
    tr.add_argument("method", help="method to train (metafusion, tsjnet, tim, occo, lite; ivfuse list methods)")
    tr.add_argument("items", nargs=argparse.REMAINDER, metavar="KEY=VALUE",
                    help="preset=, config=, out=, export=, resume=auto|force|new and config overrides such as epochs.pretrain=5")
    tr.add_argument("-q", "--quiet", action="store_true")
    tr.set_defaults(run=_cmd_train)

    sg = sub.add_parser("segment", help="save colour-coded segmentation maps beside the images")
    image_io(sg, "espnetv2")
    sg.add_argument("--backbone", default="resnet50")
    sg.add_argument("--num-classes", type=int)
    sg.add_argument("--names")
    sg.set_defaults(run=_cmd_segment)

    from .bench.cli import add_parser as add_bench_parser

    add_bench_parser(sub)
    m = sub.add_parser("masks", help="OCCO object masks: detector boxes -> SAM masks per modality -> shared/unique/background "
                       "maps; --kind seg: segmentation pseudo-masks (TSJNet)")  # fmt: skip
    m.add_argument("--ir", required=True, help="infrared folder")
    m.add_argument("--vis", required=True, help="visible folder (pairs matched by file stem)")
    m.add_argument("-o", "--output", required=True, help="output folder: <stem>.png class map (0 bg, 1 shared, 2 ir-unique, "
                   "3 vis-unique), <stem>.json instances, preview/<stem>.png; --kind seg: <stem>.png MSRS class ids")  # fmt: skip
    m.add_argument("--kind", default="occo", choices=["occo", "seg"],
                   help="occo (default): OCCO region maps; seg: Cityscapes-ESPNetv2 pseudo segmentation masks in MSRS' "
                   "classes, as TSJNet trains on (docs/tsjnet.md)")  # fmt: skip
    m.add_argument("--seg-source", default="auto", help="--kind seg: input of the labeller: auto (visible by day, "
                   "mean of IR and visible by night), vis, ir, mean")  # fmt: skip
    m.add_argument("--night", type=float, default=0.2, help="--kind seg, auto: mean visible luminance below this = night")
    m.add_argument("--seg-weights", help="--kind seg: ESPNetv2 Cityscapes checkpoint (default: the shared one)")
    m.add_argument("--prompt-detector", default="yolov5n", help="ivfuse detector giving the box prompts (default yolov5n, COCO)")
    m.add_argument("--detector-weights", help="weights of the prompt detector")
    m.add_argument("--conf", type=float, default=0.25, help="detector confidence threshold (default 0.25)")
    m.add_argument("--classes", help="comma-separated detector classes used as prompts, or 'all' (default: person, bicycle, "
                   "car, motorcycle, bus, truck)")  # fmt: skip
    m.add_argument("--sam-weights", help="SAM checkpoint: MobileSAM (default, shared weights) or official SAM ViT-B/L/H (.pth)")
    m.add_argument("--overwrite", action="store_true", help="recompute pairs whose outputs exist")
    m.add_argument("--device", default="cpu")
    m.add_argument("-q", "--quiet", action="store_true")
    m.set_defaults(run=_cmd_masks)
    for sp in sub.choices.values():  # every mode with -q also takes -v
        if "-q" in sp._option_string_actions and "-v" not in sp._option_string_actions:
            sp.add_argument("-v", "--verbose", action="store_true", help="also debug messages (e.g. tiling)")
    return p


_QUIET, _VERBOSE = ("-q", "--quiet"), ("-v", "--verbose")


class _OneLine(logging.Formatter):
    """``ivfuse: message`` / ``ivfuse: warning: message`` — the errors' one-line style for the package's log records."""

    def format(self, record: logging.LogRecord) -> str:
        tag = "" if logging.INFO <= record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"ivfuse: {tag}{record.getMessage()}"


class _TqdmHandler(logging.StreamHandler):
    """Writes through ``tqdm.write`` so that a record does not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise
            self.handleError(record)


def _setup_logging(args: argparse.Namespace) -> None:
    """The CLI's handler on the ``ivfuse`` logger: INFO by default, notices (resume) and warnings with ``-q``
    (:data:`ivfuse.utils.NOTICE`), DEBUG with ``-v``."""
    from .utils import NOTICE

    items = getattr(args, "items", None) or []
    quiet = getattr(args, "quiet", False) or any(x in _QUIET for x in items)
    verbose = getattr(args, "verbose", False) or any(x in _VERBOSE for x in items)
    log = logging.getLogger("ivfuse")
    for h in [h for h in log.handlers if isinstance(h, _TqdmHandler)]:  # main() called again (tests, notebooks)
        log.removeHandler(h)
    h = _TqdmHandler()
    h.setFormatter(_OneLine())
    log.addHandler(h)
    log.setLevel(logging.DEBUG if verbose else NOTICE if quiet else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    with warnings.catch_warnings():
        default_show = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            from .errors import IvfuseWarning

            if issubclass(category, IvfuseWarning):  # input warnings: one line, like the errors
                print(f"ivfuse: warning: {message}", file=file or sys.stderr)
            else:
                default_show(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args)
    if getattr(args, "command", None) == "downstream" and args.model is None:
        args.model = "yolov5n" if args.task == "detect" else "espnetv2"
    try:
        return args.run(args)
    except IvfuseError as e:
        print(f"ivfuse: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk met by a write that does not go through ivfuse.utils.atomic_write_bytes
        from .utils import DISK_FULL, write_error

        if e.errno not in DISK_FULL:
            raise
        print(f"ivfuse: error: {write_error(e.filename or 'a file', e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("ivfuse: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

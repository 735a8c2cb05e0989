"""``ivfuse`` command line: ``ivfuse MODE [options]``.

Modes: ``fuse``, ``eval``, ``list`` (more are added by the task and training modules). Every user error
prints one line ``ivfuse: error: ...`` naming the file or name at fault, and exits with status 2 without
leaving partial output behind.
"""

from __future__ import annotations

import argparse
import ast
import difflib
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
    """``["levels=5", "eps1=0.3", "name=x"]`` -> ``{"levels": 5, "eps1": 0.3, "name": "x"}``."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise IvfuseError(f"option '{it}' is not of the form key=value")
        k, v = it.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip().replace("-", "_")] = v
    return out


def _cmd_fuse(a: argparse.Namespace) -> int:
    from .fusion import DEFAULT_METHOD, fuse_files, fuse_folder

    opts = parse_options(a.opt)
    if a.weights:
        opts["weights"] = a.weights
    ir, vis = Path(a.ir), Path(a.vis)
    method = a.method or DEFAULT_METHOD
    if ir.is_dir() != vis.is_dir():
        raise IvfuseError(f"--ir {ir} and --vis {vis} must both be files or both be folders")
    if ir.is_dir():
        written = fuse_folder(ir, vis, a.output, method, a.device, a.ext, a.ir_norm, progress=not a.quiet, **opts)
        print(f"fused {len(written)} pairs with '{method}' into {a.output}")
    else:
        out = fuse_files(ir, vis, a.output, method, a.device, a.ir_norm, **opts)
        print(f"wrote {out} ({method})")
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from rich.console import Console

    from .evaluate import evaluate_folder, results_table, write_results

    metrics = [m.strip() for m in a.metrics.split(",") if m.strip()] if a.metrics else None
    if a.out:
        from .evaluate import RESULT_FORMATS

        if Path(a.out).suffix.lower() not in RESULT_FORMATS:
            raise IvfuseError(f"{a.out}: unsupported results format (use {', '.join(RESULT_FORMATS)})")
    res = evaluate_folder(a.ir, a.vis, a.fused, metrics, a.workers, progress=not a.quiet)
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
            t.add_row(n + (" (default)" if n == DEFAULT_METHOD else ""), doc[0] if doc else "")
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

    if a.task == "detect":
        from .tasks.downstream import class_mapping, evaluate_detector, finetune_detector, load_detection_set

        if not a.labels:
            raise IvfuseError("downstream detect needs --labels")
        data = load_detection_set(a.images, a.labels, _split_names(a.names))
        det = _load_detector(a, data.class_names)
        mapping = class_mapping(data.class_names, det.class_names)
        result: dict = {"model": a.model, "weights": a.weights, "images": str(a.images), "labels": [str(x) for x in a.labels]}
        if a.train_images:
            train = load_detection_set(a.train_images, a.train_labels or a.labels, data.class_names)
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
        from .tasks.downstream import evaluate_segmenter, finetune_segmenter, load_segmentation_set

        if not a.masks:
            raise IvfuseError("downstream segment needs --masks")
        data = load_segmentation_set(a.images, a.masks)
        seg = _load_segmenter(a).to(a.device)
        result = {"model": a.model, "weights": a.weights, "images": str(a.images)}
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


def _load_segmenter(a: argparse.Namespace):
    from .tasks import DeepLabV3Plus, ESPNetv2Seg
    from .weights import weights_path

    names = _split_names(getattr(a, "names", None))
    if a.model == "espnetv2":
        if a.weights is None and getattr(a, "num_classes", None):
            return ESPNetv2Seg(a.num_classes, class_names=names)
        return ESPNetv2Seg.from_checkpoint(weights_path("espnetv2_city", a.weights))
    if a.model == "deeplabv3plus":
        k = getattr(a, "num_classes", None) or (len(names) if names else None)
        if not k:
            raise IvfuseError("deeplabv3plus needs --num-classes (or --names)")
        m = DeepLabV3Plus(k, a.backbone, class_names=names)
        if a.weights:
            import torch

            m.load_state_dict(torch.load(a.weights, map_location="cpu", weights_only=True))
        return m
    from .errors import suggest

    raise suggest(a.model, ["espnetv2", "deeplabv3plus"], "segmenter")


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

    seg = _load_segmenter(a).to(a.device)
    pal = CITYSCAPES_PALETTE if seg.num_classes == 20 else None

    def render(x):
        pred = seg.predict(x[None].to(a.device))[0].cpu()
        u8 = _as_u8(x)
        present = pred.unique().tolist()
        masks = torch.stack([pred == c for c in present])
        over = draw_segmentation_masks(u8, masks, alpha=0.55, colors=[pal[c] for c in present] if pal else None)
        return torch.cat([u8, over], 2)

    return _render_each(a, "segmentation", render)


def _cmd_train(a: argparse.Namespace) -> int:
    import importlib
    import json

    from .engine import RECIPES
    from .engine.config import load_config
    from .errors import suggest

    if a.method not in RECIPES:
        raise suggest(a.method, RECIPES, "trainable method")
    opts, overrides = {}, []
    for item in a.items:
        key = item.split("=", 1)[0]
        if key in ("preset", "config", "out", "export") and "=" in item:
            opts[key] = item.split("=", 1)[1]
        else:
            overrides.append(item)
    cfg = load_config(a.method, opts.get("preset"), opts.get("config"), overrides)
    out = opts.get("out", f"runs/{a.method}")
    mod, fn = RECIPES[a.method].split(":")
    summary = getattr(importlib.import_module(mod), fn)(cfg, out, opts.get("export"), progress=not a.quiet)
    print(json.dumps({"out": out, "epoch_seconds": summary["epoch_s"], "val": summary["metrics"].get("val", {})}, indent=1))
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
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    f.set_defaults(run=_cmd_fuse)

    e = sub.add_parser("eval", help="score fused images against their sources")
    e.add_argument("--ir", required=True, help="infrared folder")
    e.add_argument("--vis", required=True, help="visible folder")
    e.add_argument("--fused", required=True, help="folder of fused images (same stems)")
    e.add_argument("--metrics", help="comma-separated metric names (default: the standard suite)")
    e.add_argument("--out", help="write results to .json, .csv or .md")
    e.add_argument("--workers", type=int, help="processes (default: all cores)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(run=_cmd_eval)

    ls = sub.add_parser("list", help="list methods, metrics or datasets")
    ls.add_argument("what", choices=["methods", "metrics", "datasets"])
    ls.set_defaults(run=_cmd_list)

    d = sub.add_parser("downstream", help="evaluate images with a detector (mAP) or segmenter (mIoU), optionally fine-tuning first")
    d.add_argument("task", choices=["detect", "segment"])
    d.add_argument("--images", required=True, help="folder of images to judge (IR, visible or fused)")
    d.add_argument("--labels", action="append", help="YOLO/VOC label folder or COCO json; repeat to join sets (union)")
    d.add_argument("--masks", help="folder of class-id mask PNGs (segment)")
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
    tr.add_argument("method", help="method to train (metafusion)")
    tr.add_argument("items", nargs="*", metavar="KEY=VALUE", help="preset=, config=, out=, export= and config overrides such as epochs.pretrain=5")
    tr.add_argument("-q", "--quiet", action="store_true")
    tr.set_defaults(run=_cmd_train)

    sg = sub.add_parser("segment", help="save colour-coded segmentation maps beside the images")
    image_io(sg, "espnetv2")
    sg.add_argument("--backbone", default="resnet50")
    sg.add_argument("--num-classes", type=int)
    sg.add_argument("--names")
    sg.set_defaults(run=_cmd_segment)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) == "downstream" and args.model is None:
        args.model = "yolov5n" if args.task == "detect" else "espnetv2"
    try:
        return args.run(args)
    except IvfuseError as e:
        print(f"ivfuse: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ivfuse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

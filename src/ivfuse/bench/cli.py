"""``ivfuse bench`` command line (kept free of torch imports so that ``ivfuse --help`` stays fast)."""

from __future__ import annotations

import argparse

from .recipes import LABEL_SETS, PRESETS, PROTOCOLS, SEG_JUDGES

__all__ = ["add_parser"]


def _cmd_bench(a: argparse.Namespace) -> int:
    from .runner import run_bench

    res = run_bench(
        a.methods, a.data, protocols=a.protocols, out=a.out, device=a.device, seeds=a.seeds, preset=a.preset,
        labels=a.labels, judge=a.judge, judge_weights=a.judge_weights, metrics=a.metrics, limit=a.limit,
        train_limit=a.train_limit, references=not a.no_references, speed=not a.no_speed, workers=a.workers,
        progress=not a.quiet, grid_pairs=a.grid_pairs, epochs=a.epochs, imgsz=a.imgsz, batch_size=a.batch, lr=a.lr,
        train_pairs=a.train_pairs, seg_masks=a.seg_masks, seg_judge=a.seg_judge, seg_epochs=a.seg_epochs, seg_lr=a.seg_lr,
        baseline=None if a.baseline.lower() == "none" else a.baseline,
    )  # fmt: skip
    c = res["meta"]["cache"]
    print(f"wrote {a.out}/results.json, results.csv, results.md, report.html "
          f"({res['meta']['wall_seconds']:.0f} s; cache: {c['result_hits']} results reused, {c['result_misses']} computed, "
          f"{c['fused_written']} images fused)")  # fmt: skip
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``ivfuse bench`` on the CLI's sub-parsers."""
    b = sub.add_parser("bench", help="rank methods: fusion metrics, detection (zero-shot and retrained judge), speed; HTML report")
    b.add_argument("--methods", required=True,
                   help="comma-separated methods: NAME, NAME@WEIGHTS, LABEL=dir:FOLDER (your fused images: FOLDER/<split>/<pair>.png), "
                   "LABEL=py:module:attr (your model or function); ir and vis rows are added")  # fmt: skip
    b.add_argument("--baseline", default="average",
                   help="row every method is compared with: paired bootstrap 95%% CIs in every table (default average; "
                   "any method, ir, vis; none: no CIs)")  # fmt: skip
    b.add_argument("--data", required=True, help="comma-separated datasets name[:split][@ROOT], e.g. msrs:dev-val,tno (msrs:val = msrs:dev-val)")
    b.add_argument("--protocols", default="fusion,zero,retrain", help=f"subset of {','.join(PROTOCOLS)} (default fusion,zero,retrain)")
    b.add_argument("--out", default="bench", help="output folder (results, report, cache); rerunning reuses its cache")
    b.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    b.add_argument("--seeds", type=int, default=1, help="retrain/seg repetitions; mean ± std reported (default 1)")
    b.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="fine-tuning recipe (docs/bench.md)")
    b.add_argument("--labels", default="infrared", choices=LABEL_SETS, help="detection label set (default infrared)")
    b.add_argument("--judge", default="yolov5n", help="registered detector used as judge (default yolov5n, COCO weights)")
    b.add_argument("--judge-weights", help="checkpoint of the judge (default: its pretrained weights)")
    b.add_argument("--metrics", help="comma-separated fusion metrics (default: the standard suite)")
    b.add_argument("--epochs", type=int, help="override the preset's epochs")
    b.add_argument("--imgsz", type=int, help="override the preset's training image size")
    b.add_argument("--batch", type=int, help="override the preset's batch size")
    b.add_argument("--lr", type=float, help="override the preset's learning rate")
    b.add_argument("--train-pairs", type=int, help="override the preset's number of training pairs (0: all)")
    b.add_argument("--seg-masks", help="folder of class-id masks <pair>.png for the seg protocol instead of the datasets' own "
                   "(e.g. pseudo-masks from: ivfuse masks --kind seg)")  # fmt: skip
    b.add_argument("--seg-judge", default="head", choices=SEG_JUDGES,
                   help="seg: ESPNetv2 with a new head for the dataset's classes (head, default) or the Cityscapes network kept "
                   "whole with its classes merged into MSRS' (merged; for MSRS-class pseudo-masks)")  # fmt: skip
    b.add_argument("--seg-epochs", type=int, help="override the preset's seg fine-tuning epochs (0: judge the segmenter frozen)")
    b.add_argument("--seg-lr", type=float, help="override the preset's seg learning rate")
    b.add_argument("--limit", type=int, help="only the first N pairs of each judged split (smoke tests)")
    b.add_argument("--train-limit", type=int, help="only the first N pairs of each training split")
    b.add_argument("--grid-pairs", type=int, default=2, help="pairs shown in the image grids (default 2: night and day)")
    b.add_argument("--workers", type=int, default=1, help="processes for the fusion metrics (default 1)")
    b.add_argument("--no-references", action="store_true", help="leave out the ir / vis reference rows")
    b.add_argument("--no-speed", action="store_true", help="do not time the methods")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    b.set_defaults(run=_cmd_bench)
    return b

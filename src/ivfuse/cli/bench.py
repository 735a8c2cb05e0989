"""``ivfuse bench``: rank methods by fusion metrics, detection (zero-shot, retrained judge), segmentation and speed
(:func:`ivfuse.bench.run_bench`; ``docs/bench.md``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..errors import IvfuseError
from . import add_device, add_opt, api_default

HELP = "rank methods: fusion metrics, detection (zero-shot and retrained judge), speed; HTML report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..bench.recipes import LABEL_SETS, PRESETS, PROTOCOLS, SEG_JUDGES
    from ..bench.runner import run_bench

    def default(name: str):
        return api_default(run_bench, name)

    p.add_argument(
        "--methods",
        required=True,
        help="comma-separated methods: NAME, NAME@WEIGHTS, NAME?KEY=VALUE&KEY=VALUE (method options), "
        "LABEL=dir:FOLDER (your fused images: FOLDER/<split>/<pair>.png), LABEL=py:module:attr (your model "
        "or function); ir and vis rows are added",
    )
    add_opt(p, "method option of every registered method in --methods (NAME?KEY=VALUE sets one method's)")
    p.add_argument(
        "--baseline",
        default=default("baseline"),
        help="row every method is compared with: paired bootstrap 95%% CIs in every table (any method, ir, "
        "vis; none: no CIs)",
    )
    p.add_argument(
        "--data",
        required=True,
        help="comma-separated datasets name[:split][@ROOT], e.g. msrs:dev-val,tno (msrs:val = msrs:dev-val)",
    )
    p.add_argument(
        "--protocols", default=",".join(default("protocols")), help=f"comma-separated subset of {','.join(PROTOCOLS)}"
    )
    p.add_argument("--out", default=default("out"), help="output folder (results, report, cache); a rerun reuses it")
    add_device(p, default("device"))
    p.add_argument("--seeds", type=int, default=default("seeds"), help="retrain/seg repetitions; mean ± std reported")
    p.add_argument(
        "--preset", default=default("preset"), choices=sorted(PRESETS), help="fine-tuning recipe (docs/bench.md)"
    )
    p.add_argument("--labels", default=default("labels"), choices=LABEL_SETS, help="detection label set")
    p.add_argument("--judge", default=default("judge"), help="detector used as judge (ivfuse list detectors)")
    p.add_argument("--judge-weights", help="checkpoint of the judge (default: its pretrained weights)")
    p.add_argument("--metrics", help="comma-separated fusion metrics (default: the standard suite)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--imgsz", type=int, help="override the preset's training image size")
    p.add_argument("--batch", type=int, help="override the preset's batch size")
    p.add_argument("--lr", type=float, help="override the preset's learning rate")
    p.add_argument("--train-pairs", type=int, help="override the preset's number of training pairs (0: all)")
    p.add_argument(
        "--seg-masks",
        help="folder of class-id masks <pair>.png for the seg protocol instead of the "
        "datasets' own (e.g. pseudo-masks from: ivfuse masks --kind seg)",
    )
    p.add_argument(
        "--seg-judge",
        default=default("seg_judge"),
        choices=SEG_JUDGES,
        help="seg: ESPNetv2 with a new head for the dataset's classes (head) or the Cityscapes network kept "
        "whole with its classes merged into MSRS' (merged; for MSRS-class pseudo-masks)",
    )
    p.add_argument(
        "--seg-epochs", type=int, help="override the preset's seg fine-tuning epochs (0: judge the segmenter frozen)"
    )
    p.add_argument("--seg-lr", type=float, help="override the preset's seg learning rate")
    p.add_argument("--limit", type=int, help="only the first N pairs of each judged split (smoke tests)")
    p.add_argument("--train-limit", type=int, help="only the first N pairs of each training split")
    p.add_argument(
        "--grid-pairs",
        type=int,
        default=default("grid_pairs"),
        help="pairs shown in the image grids (2: night and day)",
    )
    p.add_argument("--workers", type=int, default=default("workers"), help="processes for the fusion metrics")
    p.add_argument("--no-references", action="store_true", help="leave out the ir / vis reference rows")
    p.add_argument("--no-speed", action="store_true", help="do not time the methods")


def with_options(methods: str, opts: Sequence[str] | None) -> str:
    """``--methods`` with the ``--opt KEY=VALUE`` items added to every registered method as ``NAME?KEY=VALUE``
    (after the method's own ``?`` options); the reference rows and ``dir:``/``py:`` rows take none."""
    from ..bench.references import REFERENCES
    from . import parse_options

    if not opts:
        return methods
    parse_options(opts)  # key=value shape, one-line error
    bad = [o for o in opts if "," in o or "&" in o]
    if bad:
        raise IvfuseError(
            f"--opt {bad[0]}: a bench method option cannot hold ',' or '&' (they separate the methods "
            "and the options of --methods)"
        )
    query = "&".join(f"{k.strip().replace('-', '_')}={v}" for k, _, v in (o.partition("=") for o in opts))
    out = []
    for item in methods.split(","):
        label, eq, spec = item.partition("=")
        if not eq or any(c in label for c in "?@:/\\&"):  # as ivfuse.bench.methods.parse_method: no LABEL=
            spec = item
        spec = spec.strip()
        name = spec.partition("?")[0].partition("@")[0].strip()
        if not name or spec.startswith(("dir:", "py:")) or name in REFERENCES:
            out.append(item)
        else:
            out.append(item.rstrip() + ("&" if "?" in spec else "?") + query)
    return ",".join(out)


def run(a: argparse.Namespace) -> int:
    from ..bench.runner import run_bench

    res = run_bench(
        with_options(a.methods, a.opt),
        a.data,
        protocols=a.protocols,
        out=a.out,
        device=a.device,
        seeds=a.seeds,
        preset=a.preset,
        labels=a.labels,
        judge=a.judge,
        judge_weights=a.judge_weights,
        metrics=a.metrics,
        limit=a.limit,
        train_limit=a.train_limit,
        references=not a.no_references,
        speed=not a.no_speed,
        workers=a.workers,
        progress=not a.quiet,
        grid_pairs=a.grid_pairs,
        epochs=a.epochs,
        imgsz=a.imgsz,
        batch_size=a.batch,
        lr=a.lr,
        train_pairs=a.train_pairs,
        seg_masks=a.seg_masks,
        seg_judge=a.seg_judge,
        seg_epochs=a.seg_epochs,
        seg_lr=a.seg_lr,
        baseline=None if a.baseline.lower() == "none" else a.baseline,
    )
    c = res["meta"]["cache"]
    print(
        f"wrote {a.out}/results.json, results.csv, results.md, report.html ({res['meta']['wall_seconds']:.0f} s; "
        f"cache: {c['result_hits']} results reused, {c['result_misses']} computed, {c['fused_written']} images "
        "fused)"
    )
    return 0

"""``ivfuse eval``: score a folder of fused images against their sources (fusion metrics)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import IvfuseError
from . import api_default

HELP = "score fused images against their sources"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..data.images import IR_NORMS
    from ..evaluate import RESULT_FORMATS, evaluate_folder

    p.add_argument("--ir", required=True, help="infrared folder")
    p.add_argument("--vis", required=True, help="visible folder")
    p.add_argument("--fused", required=True, help="folder of fused images (same stems)")
    p.add_argument("--metrics", help="comma-separated metric names (default: the standard suite, ivfuse list metrics)")
    p.add_argument("--out", help=f"write the results to a {', '.join(RESULT_FORMATS)} file")
    p.add_argument("--names", help="text file of image names (one per line, extension optional): score only these")
    p.add_argument(
        "--only-fused",
        action="store_true",
        help="score the fused images present; source pairs without a fused image are reported, not an error",
    )
    p.add_argument(
        "--ir-norm",
        choices=IR_NORMS,
        default=api_default(evaluate_folder, "ir_norm"),
        help="read 16-bit/float infrared as `ivfuse fuse --ir-norm` does (then quantised to 8 bits); "
        "default: infrared must be 8-bit",
    )
    p.add_argument(
        "--workers", type=int, default=api_default(evaluate_folder, "workers"), help="processes (default: all cores)"
    )


def run(a: argparse.Namespace) -> int:
    from rich.console import Console

    from ..evaluate import RESULT_FORMATS, evaluate_folder, results_table, write_results

    metrics = [m.strip() for m in a.metrics.split(",") if m.strip()] if a.metrics else None
    if a.out and Path(a.out).suffix.lower() not in RESULT_FORMATS:
        raise IvfuseError(f"{a.out}: unsupported results format (use {', '.join(RESULT_FORMATS)})")
    names = None
    if a.names:
        p = Path(a.names)
        if not p.is_file():
            raise IvfuseError(f"{p}: names file not found")
        names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not names:
            raise IvfuseError(f"{p}: names file lists no image")
    res = evaluate_folder(
        a.ir,
        a.vis,
        a.fused,
        metrics,
        a.workers,
        progress=not a.quiet,
        names=names,
        only_fused=a.only_fused,
        ir_norm=a.ir_norm,
    )
    Console(width=max(100, 14 * (len(res["mean"]) + 1))).print(results_table(res, f"fusion metrics: {a.fused}"))
    if a.out:
        print(f"wrote {write_results(res, a.out)}")
    return 0

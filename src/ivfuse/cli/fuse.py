"""``ivfuse fuse``: a pair of images, two folders of pairs (matched by file stem) or two videos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import IvfuseError
from . import add_device, add_opt, api_default, parse_options

HELP = "fuse an IR/visible pair, two folders of pairs matched by file stem, or two videos"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..data.images import IR_NORMS
    from ..fusion import DEFAULT_METHOD, fuse_folder
    from ..utils import AMP_MODES

    p.add_argument("--ir", required=True, help="infrared image, folder or video")
    p.add_argument("--vis", required=True, help="visible image, folder or video")
    p.add_argument("-o", "--output", required=True, help="output image (pair mode), folder (folder mode) or video")
    p.add_argument("--method", default=DEFAULT_METHOD, help="fusion method (ivfuse list methods)")
    p.add_argument("--weights", help="checkpoint file for learned methods")
    add_opt(p)
    add_device(p, api_default(fuse_folder, "device"))
    p.add_argument("--ext", default=api_default(fuse_folder, "ext"), help="output extension in folder mode")
    p.add_argument(
        "--ir-norm",
        default=api_default(fuse_folder, "ir_norm"),
        choices=IR_NORMS,
        help="normalisation of 16-bit/float infrared data (8-bit is divided by 255)",
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="folder mode: keep outputs that already exist (resume an interrupted run)",
    )
    p.add_argument(
        "--continue-on-error",
        action="store_true",
        help="folder mode: fuse every good pair, report the bad ones at the end and exit with status 1",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=api_default(fuse_folder, "batch"),
        help="folder mode: pairs per forward pass (equal sizes are grouped)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=api_default(fuse_folder, "workers"),
        help="folder mode: DataLoader reader processes (default: 0 at batch 1, else 2)",
    )
    p.add_argument(
        "--amp",
        choices=AMP_MODES,
        default=api_default(fuse_folder, "amp"),
        help="autocast precision, as the training key amp= (cuda: bf16/fp16; cpu: bf16 only; default: none = fp32)",
    )
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow first call)")
    p.add_argument(
        "--tile",
        type=int,
        metavar="N",
        default=api_default(fuse_folder, "tile"),
        help="fuse in NxN windows blended without seams: large images in bounded memory (e.g. 1024; default: off)",
    )
    p.add_argument(
        "--tile-overlap",
        type=int,
        metavar="M",
        default=api_default(fuse_folder, "tile_overlap"),
        help="overlap of neighbouring --tile windows in pixels (default: N/8)",
    )


def _terminate_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt, so a killed folder run cleans its staging folder and keeps finished images."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. main() called from a worker thread): leave the default
        pass


def run(a: argparse.Namespace) -> int:
    from ..fusion import fuse_files, fuse_folder
    from ..video import fuse_video, is_video

    opts = parse_options(a.opt)
    if a.weights:
        opts["weights"] = a.weights
    ir, vis, method = Path(a.ir), Path(a.vis), a.method
    speed = {"amp": a.amp, "channels_last": a.channels_last, "compile": a.compile}
    tiling = {"tile": a.tile or None, "tile_overlap": a.tile_overlap}
    if is_video(ir) or is_video(vis):
        if not (is_video(ir) and is_video(vis)):
            raise IvfuseError(f"--ir {ir} and --vis {vis} must both be videos (or both images/folders)")
        r = fuse_video(ir, vis, a.output, method, a.device, progress=not a.quiet, **tiling, **speed, **opts)
        print(
            f"wrote {r['output']} ({r['frames']} frames, {r['size'][0]}x{r['size'][1]} at {r['rate']:.3g} fps; "
            f"fused {r['fps']:.2f} frames/s with '{method}')"
        )
        return 0
    if ir.is_dir() != vis.is_dir():
        raise IvfuseError(f"--ir {ir} and --vis {vis} must both be files or both be folders")
    if not ir.is_dir():
        out = fuse_files(ir, vis, a.output, method, a.device, a.ir_norm, **tiling, **speed, **opts)
        print(f"wrote {out} ({method})")
        return 0
    _terminate_as_interrupt()
    res = fuse_folder(
        ir,
        vis,
        a.output,
        method,
        a.device,
        a.ext,
        a.ir_norm,
        progress=not a.quiet,
        skip_existing=a.skip_existing,
        continue_on_error=a.continue_on_error,
        batch=a.batch,
        workers=a.workers,
        **tiling,
        **speed,
        **opts,
    )
    skipped = f" ({len(res.skipped)} already there, skipped)" if res.skipped else ""
    print(f"fused {len(res)} pairs with '{method}' into {a.output}{skipped}")
    if not res.failed:
        return 0
    for msg in res.failed.values():
        print(f"ivfuse: error: {msg}", file=sys.stderr)
    total = len(res) + len(res.failed) + len(res.skipped)
    names = ", ".join(list(res.failed)[:8]) + (" ..." if len(res.failed) > 8 else "")
    print(f"ivfuse: {len(res.failed)} of {total} pairs failed: {names}", file=sys.stderr)
    return 1

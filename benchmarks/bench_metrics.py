"""Metric speed: each metric and the default suite on one 640×480 triple, and a folder on all cores.

    python benchmarks/bench_metrics.py [--folder-n 48] [--repeat 5]

Uses the MSRS pair 00004N from ../shared when present (else a synthetic structured triple).
Target: the default suite <= 0.25 s per 640×480 triple on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ivfuse
from common import timeit
from ivfuse.metrics import DEFAULT_METRICS, create_metric, list_metrics
from ivfuse.utils import shared_root


def triple():
    d = shared_root() / "data" / "MSRS"
    if (d / "ir" / "00004N.png").exists():
        ir = ivfuse.read_ir(d / "ir" / "00004N.png")[None]
        vis = ivfuse.read_vis(d / "vi" / "00004N.png")[None]
        src = "MSRS 00004N"
    else:
        g = torch.Generator().manual_seed(0)
        ir, vis = torch.rand(1, 1, 480, 640, generator=g), torch.rand(1, 3, 480, 640, generator=g)
        src = "synthetic"
    fused = ivfuse.create_model("gff")(ir, vis)
    from ivfuse.metrics import to_gray255

    return to_gray255(fused[0]), to_gray255(ir[0]), to_gray255(vis[0]), src


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--folder-n", type=int, default=48)
    a = ap.parse_args()
    F, A, B, src = triple()
    print(f"# metric speed, 640x480 triple ({src}), {os.cpu_count()} cores, median of {a.repeat}")
    print("| metric | ms | in default suite |\n|---|---:|---|")
    for name in list_metrics():
        m = create_metric(name)
        t = timeit(lambda: m.compute(F, A if m.needs_sources else None, B if m.needs_sources else None), a.repeat)
        print(f"| {name} | {t * 1000:.1f} | {'yes' if name in DEFAULT_METRICS else ''} |")
    suite = [create_metric(n) for n in DEFAULT_METRICS]
    t = timeit(lambda: [m.compute(F, A if m.needs_sources else None, B if m.needs_sources else None) for m in suite], a.repeat)
    print(f"| **default suite ({len(suite)} metrics)** | **{t * 1000:.1f}** | target <= 250 |")

    from ivfuse.evaluate import evaluate_folder

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for d, arr in (("ir", A), ("vi", B), ("f", F)):
            (tmp / d).mkdir()
            for i in range(a.folder_n):
                Image.fromarray(arr.astype(np.uint8)).save(tmp / d / f"{i:04d}.png")
        for w in (1, os.cpu_count() or 1):
            t0 = time.perf_counter()
            evaluate_folder(tmp / "ir", tmp / "vi", tmp / "f", workers=w, progress=False)
            dt = time.perf_counter() - t0
            print(f"folder of {a.folder_n} triples, {w} worker(s): {dt:.2f} s total, {dt / a.folder_n * 1000:.0f} ms/triple (incl. PNG decoding)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

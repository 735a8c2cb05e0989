"""Metric speed: each metric and the default suite on one 640×480 triple, and a folder on all cores.

    python benchmarks/bench_metrics.py [--folder-n 48] [--repeat 5] [--only fmi,fmi_dct]

Uses the MSRS pair 00004N from ../shared when present (else a synthetic structured triple), fused by ``gff``.
Targets on 2 cores: the default suite <= 0.25 s per 640×480 triple; ``fmi`` and ``fmi_dct`` <= 0.1 s each
(they use up to OMP_NUM_THREADS threads, all cores when unset; one per process in folder workers).
Each row gives the median wall time and the process CPU time of one call (CPU > wall when a metric uses threads;
wall >> CPU when other processes compete for the cores: the load average is printed for that reason).
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
from common import timeit
from PIL import Image

import ivfuse
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
    ap.add_argument("--only", default="", help="comma-separated metric names: time only these (no suite/folder)")
    a = ap.parse_args()
    F, A, B, src = triple()
    names = [n.strip() for n in a.only.split(",") if n.strip()] or list_metrics()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"# metric speed, 640x480 triple ({src}), {os.cpu_count()} cores, OMP_NUM_THREADS={omp}, "
          f"load average {load:.1f}, median of {a.repeat}")  # fmt: skip
    print("| metric | ms | cpu ms | in default suite |\n|---|---:|---:|---|")
    for name in names:
        m = create_metric(name)
        fa, fb = (A, B) if m.needs_sources else (None, None)
        m.compute(F, fa, fb)  # warm-up (FMI compiles or loads its numba kernel on the first call)
        t = timeit(lambda m=m, fa=fa, fb=fb: m.compute(F, fa, fb), a.repeat, warmup=False)
        c0 = time.process_time()
        for _ in range(a.repeat):
            m.compute(F, fa, fb)
        cpu = (time.process_time() - c0) / a.repeat
        print(f"| {name} | {t * 1000:.1f} | {cpu * 1000:.1f} | {'yes' if name in DEFAULT_METRICS else ''} |")
    if a.only:
        return
    suite = [create_metric(n) for n in DEFAULT_METRICS]
    t = timeit(
        lambda: [m.compute(F, A if m.needs_sources else None, B if m.needs_sources else None) for m in suite], a.repeat
    )
    print(f"| **default suite ({len(suite)} metrics)** | **{t * 1000:.1f}** | | target <= 250 |")

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
            print(
                f"folder of {a.folder_n} triples, {w} worker(s): {dt:.2f} s total, {dt / a.folder_n * 1000:.0f} ms/triple (incl. PNG decoding)"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()

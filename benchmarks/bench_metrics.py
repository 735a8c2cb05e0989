"""Metric speed on one 640×480 triple: the individual metric functions, ``compute_all``, and CDDFuse's evaluator.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/bench_metrics.py --reference /tmp/cddfuse_ref

Uses the MSRS pair 00004N from ../shared when present (else a synthetic structured triple), fused by ``gff``.
The suite is ``DEFAULT_METRICS`` plus fmi, qcb and qcv (what the bench reports). Three paths are timed on the same
arrays, interleaved in every repeat so that load from other processes falls on all of them alike (median of
``--repeat``):

* **before**: each registered metric function (``Metric.fn``, the plain transcriptions of the reference tools,
  the code ivfuse <= 0.1 ran for every metric) called on its own;
* **after**: ``ivfuse.metrics.compute_all`` on the whole suite, sharing intermediates (per-metric times from its
  ``timings`` hook; a shared intermediate is charged to the first metric that needs it);
* **reference**: CDDFuse's ``utils/Evaluator.py`` (``--reference``: the file or its folder, kept OUTSIDE this
  repository, e.g. ``git show HEAD:utils/Evaluator.py > /tmp/cddfuse_ref/Evaluator.py`` in a clone of
  Zhaozixiang1228/MMIF-CDDFuse; it needs scikit-learn and scikit-image), its 11 metrics EN SD SF AG MI SCD VIFF
  Qabf MSE PSNR CC (its SSIM is scikit-image's, a different metric from ivfuse's ``ssim``, and is left out).

Target (issue #24): the 16-metric suite through ``compute_all`` >= 5x faster than the reference's 11 metrics.
``--folder-n N`` additionally times ``evaluate_folder`` on N copies of the triple (1 worker and all cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ivfuse
from ivfuse.metrics import DEFAULT_METRICS, create_metric
from ivfuse.metrics.fast import compute_arrays
from ivfuse.utils import shared_root

SUITE = tuple(DEFAULT_METRICS) + tuple(m for m in ("fmi", "qcb", "qcv") if m not in DEFAULT_METRICS)
# ivfuse metric -> the reference evaluator's method computing the same quantity (its conventions: AG over M*N,
# MI in nats, PSNR with max(F) as the peak; the cost is the same)
REF11 = {
    "en": "EN",
    "sd": "SD",
    "sf": "SF",
    "ag": "AG",
    "mi": "MI",
    "scd": "SCD",
    "vif": "VIFF",
    "qabf": "Qabf",
    "mse": "MSE",
    "psnr": "PSNR",
    "cc": "CC",
}


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


def load_reference(path: str):
    p = Path(path)
    if p.is_dir():
        p = p / "Evaluator.py"
    if not p.is_file():
        sys.exit(f"--reference: {p} not found (CDDFuse's utils/Evaluator.py, kept outside the repository)")
    if Path(__file__).resolve().parent.parent in p.resolve().parents:
        sys.exit("--reference: keep the reference code outside this repository")
    spec = importlib.util.spec_from_file_location("cddfuse_evaluator_reference", p)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except ImportError as e:
        sys.exit(f"--reference: {e} (the reference needs scikit-learn and scikit-image: pip install scikit-learn)")
    return mod.Evaluator, p


def ref_calls(E, F, A, B) -> dict:
    one = {"EN", "SD", "SF", "AG"}
    return {k: (lambda n=n: getattr(E, n)(F) if n in one else getattr(E, n)(F, A, B)) for k, n in REF11.items()}


def tune_allocator() -> bool:
    """glibc only: keep freed heap memory for reuse (fewer page faults on the many image-sized temporaries)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 32 << 20)) and bool(libc.mallopt(-1, 128 << 20))  # M_MMAP_/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--reference", default="", help="CDDFuse utils/Evaluator.py (file or folder), outside the repo")
    ap.add_argument("--only", default="", help="comma-separated metric names instead of the 16-metric suite")
    ap.add_argument("--folder-n", type=int, default=0, help="also time evaluate_folder on N copies of the triple")
    ap.add_argument("--malloc-tuning", action="store_true", help="glibc mallopt for all paths (see tune_allocator)")
    a = ap.parse_args()
    F, A, B, src = triple()
    names = [create_metric(n.strip()).name for n in a.only.split(",") if n.strip()] or list(SUITE)
    metrics = [create_metric(n) for n in names]
    same11 = [n for n in REF11 if n in names]
    tuned = tune_allocator() if a.malloc_tuning else False
    E = ref = None
    if a.reference:
        E, ref = load_reference(a.reference)

    def arg(m):
        return (F, A, B) if m.needs_sources else (F, None, None)

    # warm-up: numba kernels compile or load from the on-disk cache; first FFT plans; the reference's imports
    compute_arrays(F, A, B, metrics)
    compute_arrays(F, A, B, same11)
    for m in metrics:
        m.fn(*arg(m))
    refs = ref_calls(E, F, A, B) if E is not None else {}
    for fn in refs.values():
        fn()

    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    before = {n: [] for n in names}
    after = {n: [] for n in names}
    refd = {n: [] for n in refs}
    tot = {"before": [], "after": [], "after11": [], "reference": []}
    cpu = {k: [] for k in tot}
    for r in range(a.repeat):
        order = ["reference", "before", "after", "after11"]
        order = order[r % 4 :] + order[: r % 4]  # rotate, so that no path always runs first
        for path in order:
            c0, t0 = time.process_time(), time.perf_counter()
            if path == "before":
                for m in metrics:
                    s = time.perf_counter()
                    m.fn(*arg(m))
                    before[m.name].append(time.perf_counter() - s)
            elif path == "after":
                tm: dict = {}
                compute_arrays(F, A, B, metrics, timings=tm)
                for n, v in tm.items():
                    after[n].append(v)
            elif path == "after11":
                if not same11:
                    continue
                compute_arrays(F, A, B, same11)
            else:
                if not refs:
                    continue
                for n, fn in refs.items():
                    s = time.perf_counter()
                    fn()
                    refd[n].append(time.perf_counter() - s)
            tot[path].append(time.perf_counter() - t0)
            cpu[path].append(time.process_time() - c0)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    def med(v):
        return statistics.median(v) * 1000 if v else float("nan")

    env = {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    print(
        f"# metric speed, {F.shape[1]}x{F.shape[0]} triple ({src}), one process, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} NUMBA_NUM_THREADS={env['NUMBA_NUM_THREADS']}, "
        f"load average {load0:.1f} -> {load1:.1f}, median of {a.repeat} interleaved repeats (wall ms)"
        + (", glibc malloc tuned" if tuned else "")
    )
    if ref:
        print(f"# reference: {ref}")
    print("\n| metric | before: Metric.fn | after: compute_all | before/after | reference (CDDFuse) |")
    print("|---|---:|---:|---:|---:|")
    for n in names:
        b, f = med(before[n]), med(after[n])
        rv = f"{med(refd[n]):.1f}" if n in refd else ""
        print(f"| {n} | {b:.1f} | {f:.1f} | {b / f:.1f}x | {rv} |")
    tb, ta, tr, t11 = (med(tot[k]) for k in ("before", "after", "reference", "after11"))
    cb, ca, cr, c11 = (med(cpu[k]) for k in ("before", "after", "reference", "after11"))
    print(
        f"| **total, {len(names)} metrics** | **{tb:.1f}** | **{ta:.1f}** | **{tb / ta:.1f}x** | "
        f"**{tr:.1f}** ({len(refs)} metrics) |"
    )
    print(f"\nprocess CPU ms per pass (median): before {cb:.1f}, after {ca:.1f}, reference {cr:.1f}")
    if refs:
        print(
            f"reference {len(refs)} metrics / ivfuse compute_all {len(names)} metrics: {tr / ta:.1f}x (wall), "
            f"{cr / ca:.1f}x (CPU)   [target >= 5x]"
        )
        if same11:
            print(
                f"the same {len(same11)} metrics (compute_all {t11:.1f} ms): {tr / t11:.1f}x (wall), "
                f"{cr / c11:.1f}x (CPU)"
            )

    if a.folder_n:
        from ivfuse.evaluate import evaluate_folder

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for d, arr in (("ir", A), ("vi", B), ("f", F)):
                (tmp / d).mkdir()
                for i in range(a.folder_n):
                    Image.fromarray(arr.astype(np.uint8)).save(tmp / d / f"{i:04d}.png")
            for w in (1, os.cpu_count() or 1):
                t0 = time.perf_counter()
                evaluate_folder(tmp / "ir", tmp / "vi", tmp / "f", metrics=names, workers=w, progress=False)
                dt = time.perf_counter() - t0
                print(
                    f"folder of {a.folder_n} triples, {len(names)} metrics, {w} worker(s): {dt:.2f} s total, "
                    f"{dt / a.folder_n * 1000:.0f} ms/triple (incl. PNG decoding)"
                )
    sys.stdout.flush()


if __name__ == "__main__":
    main()

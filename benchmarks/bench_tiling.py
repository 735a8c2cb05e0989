"""Tiled inference on large images: seconds and peak memory (RSS) by method × tile, one fresh process per row.

    # lite, metafusion at 4096x3072; untiled, --tile 1024, 512
    python benchmarks/bench_tiling.py
    python benchmarks/bench_tiling.py --methods lite --size 3072x4096 --tiles 0,1024 --out tiling.md
    python benchmarks/bench_tiling.py --calibrate [--methods ...]      # bytes/pixel table for ivfuse.tiling

Each row runs ``ivfuse.fuse_files`` (the path of ``ivfuse fuse``: PNG decoding, fusion, PNG writing) in a new
Python process on one thread (``OMP_NUM_THREADS=1``) and reads that process's peak resident set size ``VmHWM``
from ``/proc/self/status``; ``RSS before`` is its resident size after importing ivfuse and loading the model. The
input pair is an MSRS pair (``../shared/data/MSRS``, 640×480) upscaled bicubically to ``--size`` (written once to
a temporary folder), or a synthetic pair when the data are absent. A row whose untiled forward would not fit is
refused by the memory guard (the row shows its one-line error): that refusal is part of what is measured.

``--calibrate`` measures the peak working memory of one untiled fp32 forward pass per method: in a fresh process,
``VmHWM`` after the forward minus ``VmRSS`` before it (inputs and model already allocated), divided by the pixels,
at 640×480 and 1280×960; the larger of the two ×1.25 is the value ``ivfuse.tiling.PEAK_BYTES_PER_PIXEL`` stores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status(key: str) -> int:
    """``/proc/self/status`` field in bytes (``VmHWM``, ``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _child_fuse(method: str, ir: str, vis: str, out: str, tile: int, overlap: int | None) -> dict:
    import torch

    import ivfuse
    from ivfuse.errors import IvfuseError
    from ivfuse.fusion import get_model

    torch.set_num_threads(1)
    model = get_model(method)
    before = _status("VmRSS")
    t = time.perf_counter()
    try:
        ivfuse.fuse_files(ir, vis, out, model, tile=tile or None, tile_overlap=overlap)
    except IvfuseError as e:
        return {"error": str(e), "rss_before": before, "peak": _status("VmHWM")}
    return {"seconds": time.perf_counter() - t, "rss_before": before, "peak": _status("VmHWM")}


def _child_calibrate(method: str, h: int, w: int) -> dict:
    import torch

    from ivfuse import allocator
    from ivfuse.fusion import get_model

    torch.set_num_threads(1)
    allocator.tune()  # as ivfuse runs models (a no-op under --malloc system)
    os.environ["IVFUSE_AVAILABLE_MEMORY"] = "off"
    model = get_model(method)
    g = torch.Generator().manual_seed(0)
    ir, vis = torch.rand(1, 1, h, w, generator=g), torch.rand(1, 3, h, w, generator=g)
    before = _status("VmRSS")
    t = time.perf_counter()
    with torch.inference_mode():
        model(ir, vis)
    return {"seconds": time.perf_counter() - t, "rss_before": before, "peak": _status("VmHWM")}


def _run_child(args: list[str], timeout: float, malloc: str = "tuned") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if malloc == "system":
        env["IVFUSE_MALLOC"] = "system"
    try:
        r = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(args)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        tail = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        return {"error": tail[:200]}
    return json.loads(lines[-1])


def _make_pair(folder: Path, h: int, w: int) -> tuple[Path, Path, str]:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ivfuse.data.images import read_ir, read_vis, write_image
    from ivfuse.utils import shared_root

    src = shared_root() / "data" / "MSRS"
    if (src / "ir" / "00004N.png").is_file():
        ir, vis = read_ir(src / "ir" / "00004N.png")[None], read_vis(src / "vi" / "00004N.png")[None]
        ir = F.interpolate(ir, (h, w), mode="bicubic", align_corners=False).clamp(0, 1)[0]
        vis = F.interpolate(vis, (h, w), mode="bicubic", align_corners=False).clamp(0, 1)[0]
        what = f"MSRS 00004N upscaled from 640x480 (bicubic) to {w}x{h}"
    else:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        ir = torch.from_numpy((0.5 + 0.5 * np.sin(40 * xx) * np.cos(30 * yy)).astype("float32"))[None]
        vis = torch.from_numpy(np.stack([yy, xx, rng.random((h, w))]).astype("float32"))
        what = f"synthetic {w}x{h} pattern"
    return write_image(folder / "ir.png", ir), write_image(folder / "vis.png", vis), what


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", help="comma-separated methods (default lite,metafusion; --calibrate: every method)")
    ap.add_argument("--size", default="3072x4096", help="HxW of the pair (default 3072x4096)")
    ap.add_argument("--tiles", default="0,1024,512", help="tile sizes, 0 = untiled (default 0,1024,512)")
    ap.add_argument("--overlap", type=int, help="--tile-overlap (default: tile/8)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per row before it is abandoned")
    ap.add_argument("--calibrate", action="store_true", help="measure bytes/pixel of an untiled forward per method")
    ap.add_argument(
        "--malloc",
        choices=("tuned", "system"),
        default="tuned",
        help="tuned: the C allocator as ivfuse sets it (ivfuse.allocator); system: glibc's default",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help="also write the markdown table here")
    a = ap.parse_args(argv)
    if a.child:
        args = json.loads(a.child)
        res = _child_calibrate(*args[1:]) if args[0] == "calibrate" else _child_fuse(*args[1:])
        print(json.dumps(res))
        return 0
    print(f"# {' '.join(['python', *sys.argv])}")
    print(
        f"# one fresh process per row, 1 thread (OMP_NUM_THREADS=1); {os.cpu_count()} CPU cores; "
        f"load average {os.getloadavg()[0]:.1f}; MemAvailable {_mem_available()}; malloc {a.malloc}"
    )
    if a.calibrate:
        return _calibrate(a)
    h, w = (int(v) for v in a.size.lower().split("x"))
    lines = [
        "| method | size | tile | overlap | seconds | peak RSS (MiB) | RSS before (MiB) | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory(prefix="ivfuse-tiling-") as tmp:
        ir, vis, what = _make_pair(Path(tmp), h, w)
        for m in (a.methods or "lite,metafusion").split(","):
            for tile in (int(t) for t in a.tiles.split(",")):
                ov = (a.overlap if a.overlap is not None else max(1, tile // 8)) if tile else None
                r = _run_child(
                    ["fuse", m, str(ir), str(vis), str(Path(tmp) / "out.png"), tile, ov], a.timeout, a.malloc
                )
                secs = f"{r['seconds']:.1f}" if "seconds" in r else "—"
                peak = _mib(r["peak"]) if "peak" in r else "—"
                before = _mib(r["rss_before"]) if "rss_before" in r else "—"
                note = f"refused: `{r['error']}`" if "error" in r else ""
                line = (
                    f"| {m} | {w}×{h} | {tile or '—'} | {ov if ov is not None else '—'} | {secs} | {peak} | "
                    f"{before} | {note} |"
                )
                lines.append(line)
                print(line, flush=True)
    print(f"# input: {what}")
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")
    return 0


def _mem_available() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "?"


def _calibrate(a: argparse.Namespace) -> int:
    import ivfuse

    methods = a.methods.split(",") if a.methods else ivfuse.list_models()
    sizes = [(480, 640), (960, 1280)]
    print("| method | bytes/pixel 640×480 | bytes/pixel 1280×960 | seconds 1280×960 | stored (max ×1.25) |")
    print("|---|---:|---:|---:|---:|", flush=True)
    table = {}
    for m in methods:
        vals, secs = [], "—"
        for h, w in sizes:
            r = _run_child(["calibrate", m, h, w], a.timeout, a.malloc)
            if "error" in r:
                vals.append(None)
                print(f"# {m} {w}x{h}: {r['error']}", flush=True)
                continue
            vals.append((r["peak"] - r["rss_before"]) / (h * w))
            secs = f"{r['seconds']:.1f}"
        good = [v for v in vals if v is not None]
        if good:
            table[m] = round(max(good) * 1.25)
        cells = " | ".join(f"{v:,.0f}" if v is not None else "—" for v in vals)
        print(f"| {m} | {cells} | {secs} | {table.get(m, '—')} |", flush=True)
    print("PEAK_BYTES_PER_PIXEL = " + json.dumps(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())

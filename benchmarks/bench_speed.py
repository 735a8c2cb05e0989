"""Inference speed of every fusion method at 640×480: images/s by device × precision × batch (+ onnxruntime).

    python benchmarks/bench_speed.py                  # CPU (2 threads) fp32 batch 1/8; CUDA fp32/bf16/fp16 batch 1/8
    python benchmarks/bench_speed.py --methods lite,average --onnx --threads 2 --out speed.md

Each cell is images/s = batch / median wall time of ``--repeat`` forward passes after one warm-up pass (random
640×480 IR + RGB visible, ``ivfuse.fusion.Runner``: the path ``ivfuse fuse`` uses, without file I/O). CUDA times
are synchronised. ``--onnx`` adds onnxruntime (CPU) rows for the methods that export. Methods without weights are
skipped with the reason. Speed targets live here, not in timed tests (``docs/deployment.md`` has the table).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", help="comma-separated methods (default: all registered that load)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--size", default="480x640", help="HxW (default 480x640)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--devices", default="cpu,cuda", help="devices to try (cuda skipped when absent)")
    ap.add_argument("--cpu-bf16", action="store_true", help="also CPU bf16 autocast")
    ap.add_argument("--onnx", action="store_true", help="also onnxruntime (CPU) for methods that export")
    ap.add_argument(
        "--max-seconds", type=float, default=60.0, help="skip larger batches of a method slower than this per image"
    )
    ap.add_argument("--out", help="also write the markdown table here")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    from common import timeit

    import ivfuse
    from ivfuse.errors import IvfuseError
    from ivfuse.fusion import Runner

    torch.set_num_threads(a.threads)
    h, w = (int(v) for v in a.size.lower().split("x"))
    batches = [int(b) for b in a.batches.split(",")]
    methods = a.methods.split(",") if a.methods else ivfuse.list_models()
    configs = [("cpu", None)] + ([("cpu", "bf16")] if a.cpu_bf16 else [])
    if "cuda" in a.devices and torch.cuda.is_available():
        configs += [("cuda", None), ("cuda", "bf16"), ("cuda", "fp16")]
    g = torch.Generator().manual_seed(0)
    ir_full, vis_full = torch.rand(max(batches), 1, h, w, generator=g), torch.rand(max(batches), 3, h, w, generator=g)
    rows = []

    def record(m, dev, prec, b, fn, sync=None):
        def call():
            fn(ir_full[:b], vis_full[:b])
            if sync:
                sync()

        t = timeit(call, a.repeat)
        rows.append((m, dev, prec, b, b / t))
        print(f"{m:12s} {dev:5s} {prec:5s} batch {b}: {b / t:8.2f} images/s", flush=True)
        return t / b

    for m in methods:
        try:
            model = ivfuse.create_model(m)
        except IvfuseError as e:
            print(f"{m:12s} skipped: {e}", flush=True)
            continue
        for dev, amp in configs:
            runner = Runner(model.to(dev), dev, amp)
            sync = torch.cuda.synchronize if dev == "cuda" else None
            for b in batches:
                per = record(m, dev, amp or "fp32", b, runner, sync)
                if per > a.max_seconds:
                    break
        model.to("cpu")
        if a.onnx:
            from ivfuse.export import export_onnx
            from ivfuse.models.onnx import OnnxFusionModel

            with tempfile.TemporaryDirectory() as d:
                try:
                    p = export_onnx(model, Path(d) / "m.onnx", check=False)
                except IvfuseError as e:
                    print(f"{m:12s} onnx skipped: {e}", flush=True)
                    continue
                om = OnnxFusionModel(p, threads=a.threads)
                for b in batches:
                    if record(m, "cpu", "ort", b, om) > a.max_seconds:
                        break
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    title = (
        f"speed at {w}x{h}, images/s ({a.threads} CPU threads; torch {torch.__version__}; {gpu}; "
        f"{time.strftime('%Y-%m-%d')})"
    )
    lines = [title, "", "| method | device | precision | batch | images/s |", "|---|---|---|---:|---:|"]
    lines += [f"| {m} | {d} | {p} | {b} | {v:.2f} |" for m, d, p, b, v in rows]
    text = "\n".join(lines)
    print("\n" + text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

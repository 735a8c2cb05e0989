r"""Forward-pass time of ivfuse's learned methods on one 640×480 pair: the ivfuse side of the table "inference vs
the official code" in ``docs/deployment.md`` (issue 24 item 2).

    python benchmarks/bench_forward.py                                 # the eight methods of the table, 1 and 2 threads
    python benchmarks/bench_forward.py --methods tsjnet --threads 2 --repeat 5
    python benchmarks/bench_forward.py \
        --methods "metafusion@$IVFUSE_SHARED/seed_reference/MetaFusion/metafusion_seed.pth"

Each method is built like ``ivfuse bench --methods`` builds it (``name``, ``name@WEIGHTS``, ``name?key=value&…``;
``seed`` below selects the official-format seed checkpoints of ``shared/seed_reference``, the weights the official
code was timed with), in eval mode. Input: MSRS ``00004N`` (IR + RGB visible) from the shared data, else a random
pair of ``--size``. One warm-up call, then ``--repeat`` calls of ``model(ir, vis)`` under ``torch.inference_mode``
(the whole forward: colour conversion included), methods interleaved round by round, with the C allocator as ivfuse
sets it (``--malloc tuned``, ``ivfuse.allocator``) or glibc's default (``--malloc system``, the setting of the
official code's process); reported: median wall seconds
and median process CPU seconds per pair, with the load average. On a shared machine compare only numbers taken in
the same run (ratios); the CPU seconds of a one-thread run are the least sensitive to other jobs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: the methods of the table; ``seed``: the official-format seed checkpoints (same weights as the official code)
TABLE = ("metafusion", "tim", "occo", "tsjnet", "seafusion", "tardal", "ifcnn", "didfuse")
SEED = {
    "metafusion": "metafusion@{s}/seed_reference/MetaFusion/metafusion_seed.pth",
    "tim": (
        "tim@{s}/seed_reference/TIMFusion/full/weights_1_seed.pth"
        "?stage2={s}/seed_reference/TIMFusion/full/weights_2_seed.pth"
    ),
    "occo": "occo@{s}/seed_reference/OCCO/occo_seed.pth",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--methods", default=",".join(TABLE), help="comma-separated method specs (default: the table's eight)"
    )
    ap.add_argument(
        "--weights",
        choices=("seed", "default"),
        default="seed",
        help="seed: metafusion/tim/occo from shared/seed_reference (as timed against the official code); "
        "default: their shipped weights",
    )
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    ap.add_argument("--size", default="480x640", help="HxW of the random pair used when MSRS is absent")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--malloc",
        choices=("tuned", "system"),
        default="tuned",
        help="tuned: freed memory kept for reuse, as ivfuse runs models (ivfuse.allocator); system: glibc's default",
    )
    ap.add_argument("--out", help="also write the markdown table here")
    a = ap.parse_args(argv)
    threads = [int(t) for t in a.threads.split(",")]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(threads)))
    import torch

    import ivfuse
    from ivfuse import allocator
    from ivfuse.bench.protocols import build_method
    from ivfuse.errors import IvfuseError
    from ivfuse.utils import shared_root

    malloc = "tuned" if a.malloc == "tuned" and allocator.tune() else "system"
    shared = shared_root()
    msrs = shared / "data" / "MSRS"
    if (msrs / "ir" / "00004N.png").is_file():
        ir, vis = ivfuse.read_ir(msrs / "ir" / "00004N.png")[None], ivfuse.read_vis(msrs / "vi" / "00004N.png")[None]
        source = "MSRS 00004N"
    else:
        h, w = (int(v) for v in a.size.lower().split("x"))
        g = torch.Generator().manual_seed(0)
        ir, vis = torch.rand(1, 1, h, w, generator=g), torch.rand(1, 3, h, w, generator=g)
        source = "random pair"
    models = {}
    for spec in a.methods.split(","):
        spec = spec.strip()
        if a.weights == "seed" and spec in SEED:
            spec = SEED[spec].format(s=shared)
        try:
            name, model, _, _ = build_method(spec)
        except IvfuseError as e:
            print(f"{spec}: skipped: {e}", flush=True)
            continue
        models[name] = model
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        wall: dict[str, list[float]] = {m: [] for m in models}
        cpu: dict[str, list[float]] = {m: [] for m in models}
        loads = []
        with torch.inference_mode():
            for m in models.values():  # warm-up
                m(ir, vis)
            for _ in range(a.repeat):  # interleaved rounds
                for name, m in models.items():
                    w0, c0 = time.perf_counter(), time.process_time()
                    m(ir, vis)
                    wall[name].append(time.perf_counter() - w0)
                    cpu[name].append(time.process_time() - c0)
                loads.append(os.getloadavg()[0])
        for name in models:
            row = (name, t, statistics.median(wall[name]), statistics.median(cpu[name]), statistics.mean(loads))
            rows.append(row)
            print(
                f"{name:12s} {t} thread(s): {row[2]:7.3f} s/pair wall, {row[3]:7.3f} s CPU (load {row[4]:.1f})",
                flush=True,
            )
    title = (
        f"ivfuse forward at {ir.shape[-1]}x{ir.shape[-2]} ({source}, fp32, CPU; torch {torch.__version__}; "
        f"{os.cpu_count()} cores; malloc {malloc}; {time.strftime('%Y-%m-%d')})"
    )
    lines = [title, "", "| method | threads | s/pair (wall) | CPU s/pair | load average |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {t} | {w:.3f} | {c:.3f} | {ld:.1f} |" for n, t, w, c, ld in rows]
    text = "\n".join(lines)
    print("\n" + text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

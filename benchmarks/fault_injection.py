r"""Kill ivfuse at many random points and check that it resumes to exactly what an uninterrupted run produces (#25).

For each training recipe (tiny configs on MSRS, CPU) the script runs ``ivfuse train`` once uninterrupted, then N times
with a SIGKILL at a random point, each followed by a plain rerun into the same folder (``resume=auto``, the default),
and compares the final weights (every tensor of ``final.pt``'s ``modules``) bit for bit with the uninterrupted run's.
The kill points are drawn at random among

* ``time``: an external ``SIGKILL`` at a uniformly random moment of the training (after its run folder appears);
* ``write``: a ``SIGKILL`` inside the k-th checkpoint write (``IVFUSE_FAULT_WRITE=last.pt:k:kill``, k random):
  half of the temporary file written;
* ``torn``: the k-th write of ``last.pt`` leaves half a file renamed over it, then ``SIGKILL``
  (``IVFUSE_FAULT_WRITE=last.pt:k:torn``: what a power loss can leave); the resume must detect it and use
  ``last.prev.pt``.

``fuse`` does the same for ``ivfuse fuse`` on a folder (kill at a random moment or inside the write of a random image,
rerun with ``--skip-existing``, compare every output's bytes).

Run from the repository root (MSRS under ../shared)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/fault_injection.py --kills 10 \
        [--recipes lite,metafusion,tim,occo,tsjnet,fuse]

Columns: kill points tried; killed (the process died of the SIGKILL before finishing); resumed (the rerun finished
with status 0, after saying ``resuming from`` when a checkpoint existed); equal (final weights or images bitwise equal
to the uninterrupted run's); torn detected (torn kills whose rerun warned and used the previous checkpoint).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RECIPES = {
    "lite": [
        "epochs=4",
        "max_batches=2",
        "batch=2",
        "crop=[64, 64]",
        "val.max=0",
        "teacher.method=null",
        "loss.ssim=1",
        "loss.gradient=10",
    ],
    "metafusion": [
        "mode=metafusion",
        "fusion.width=0.125",
        "mfe.mid=4",
        "data.crop=[48, 48]",
        "data.det_crop=96",
        "data.batch=2",
        "data.det_batch=2",
        "data.max_batches=2",
        "epochs.pretrain=2",
        "epochs.det=1",
        "epochs.mfe=2",
        "inner.every=2",
        "inner.updates=1",
        "rounds=1",
        "val.max=0",
        "data.train=[{name: msrs, split: train}]",
        "detector.weights=scratch",
    ],
    # TIM's whole chain (search -> derive -> meta_init -> train, two epochs each) at width 8 on 32 x 32 crops
    "tim": [
        "preset=cpu",
        "net.width=8",
        "search.cg_iters=1",
        "search.max_batches=1",
        "data.max_batches=1",
        "data.batch=1",
        "data.crop=[32, 32]",
        "data.det_crop=[64, 64]",
        "meta.steps=2",
        "meta.inner_steps=1",
        "val.max=0",
        "epochs.search=2",
        "epochs.meta_init=2",
        "epochs.train=2",
        "data.meta=[{name: llvip, split: all, task: llvip}, {name: tno, split: all, task: tno}]",
    ],
    # OCCO with the contrastive loss on 2 pairs (MobileSAM masks computed once into {tmp}'s cache by the first run)
    "occo": [
        "preset=cpu",
        "max_pairs=2",
        "crop=[32, 32]",
        "batch=2",
        "epochs=3",
        "val.max=0",
        "masks.cache={tmp}/occo-masks",
    ],
    # TSJNet's cpu variant with both guides (pseudo-masks cached in {tmp} by the first run)
    "tsjnet": [
        "preset=cpu",
        "data.max_pairs=2",
        "data.batch=2",
        "data.crop=[64, 64]",
        "data.max_batches=1",
        "epochs=3",
        "val.max=0",
        "seg.cache={tmp}/tsjnet-masks",
    ],
}


def env(**extra) -> dict:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), e.get("PYTHONPATH", "")])
    return e


def train_cmd(method: str, out: Path) -> list[str]:
    """The training command; ``{tmp}`` in an item is the benchmark's temporary folder (the parent of ``out``)."""
    items = [i.replace("{tmp}", str(out.parent)) for i in RECIPES[method]]
    return [sys.executable, "-m", "ivfuse", "train", method, "-q", f"out={out}", *items]


def run_killed(cmd: list[str], e: dict, started: Path, delay: float | None) -> int:
    """Run ``cmd``; with ``delay``, SIGKILL it ``delay`` s after ``started`` appears. Returns the exit status."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=e)
    if delay is not None:
        while p.poll() is None and not started.exists():
            time.sleep(0.02)
        t = time.monotonic()
        while p.poll() is None and time.monotonic() - t < delay:
            time.sleep(0.01)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    return p.wait()


def kill_window(cmd: list[str], started: Path) -> float:
    """Seconds from ``started`` appearing to the end of an uninterrupted run of ``cmd``: the window in which a
    ``time`` kill lands inside the work (the caller removes the probe's output)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env())
    while p.poll() is None and not started.exists():
        time.sleep(0.02)
    t1 = time.monotonic()
    p.wait()
    return time.monotonic() - t1


def say(
    label: str,
    i: int,
    kind: str,
    delay: float | None,
    fault: str,
    rc: int,
    ok: bool,
    eq: bool,
    stderr: str = "",
    done: str = "",
) -> None:
    """One kill point's line (``label #i: kind at ... -> exit rc, [done, ]rerun ok, equal``); the rerun's stderr tail
    when it failed or differed."""
    at = f" at {delay:.2f} s" if delay is not None else f" {fault}"
    print(
        f"  {label} #{i + 1}: {kind}{at} -> exit {rc}, {done}rerun {'ok' if ok else 'FAILED'}, "
        f"{'equal' if eq else 'DIFFERENT'}",
        flush=True,
    )
    if stderr and not (ok and eq):
        print(stderr[-1500:], flush=True)


def modules(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["modules"]


def same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(
        a[m].keys() == b[m].keys() and all(torch.equal(a[m][k], b[m][k]) for k in a[m]) for m in a
    )


def bench_recipe(method: str, n: int, rng: random.Random, tmp: Path) -> dict:
    ref = tmp / f"{method}-ref"
    t0 = time.monotonic()
    subprocess.run(train_cmd(method, ref), check=True, stdout=subprocess.DEVNULL, env=env())
    t_ref = time.monotonic() - t0
    import torch

    prog = torch.load(ref / "last.pt", map_location="cpu", weights_only=True)["progress"]
    saves = sum(prog["done"].values()) + len(prog["ended"])  # last.pt writes: one per epoch and one per stage end
    want = modules(ref / "final.pt")
    # how long the training itself lasts (from the run folder appearing to the end): the time-kill window
    probe = tmp / f"{method}-probe"
    window = kill_window(train_cmd(method, probe), probe / "config.json")
    shutil.rmtree(probe)
    row = {
        "recipe": method,
        "tried": 0,
        "killed": 0,
        "resumed": 0,
        "equal": 0,
        "torn": 0,
        "torn_detected": 0,
        "kinds": {},
        "ref_s": t_ref,
        "window_s": window,
    }
    for i in range(n):
        kind = rng.choice(["time", "time", "write", "torn"])
        out = tmp / f"{method}-{i}"
        e, delay = env(), None
        if kind == "time":
            delay = rng.uniform(0, window)
        else:
            e = env(IVFUSE_FAULT_WRITE=f"last.pt:{rng.randint(1, saves)}:{'kill' if kind == 'write' else 'torn'}")
        rc = run_killed(train_cmd(method, out), e, out / "config.json", delay)
        row["tried"] += 1
        row["kinds"][kind] = row["kinds"].get(kind, 0) + 1
        killed = rc == -signal.SIGKILL
        row["killed"] += killed
        had_ck = (out / "last.pt").exists()
        r = subprocess.run(train_cmd(method, out), capture_output=True, text=True, env=env())
        ok = r.returncode == 0 and (not had_ck or not killed or "resuming from" in r.stderr)
        row["resumed"] += ok
        eq = ok and same(modules(out / "final.pt"), want)
        row["equal"] += eq
        if kind == "torn" and killed:
            row["torn"] += 1
            row["torn_detected"] += "using the previous checkpoint" in r.stderr
        say(method, i, kind, delay, e.get("IVFUSE_FAULT_WRITE", ""), rc, ok, eq, r.stderr)
        shutil.rmtree(out)
    return row


def bench_fuse(n: int, rng: random.Random, tmp: Path) -> dict:
    import numpy as np
    from PIL import Image

    ir, vi = tmp / "fz" / "ir", tmp / "fz" / "vi"
    ir.mkdir(parents=True)
    vi.mkdir(parents=True)
    g = np.random.default_rng(0)
    k = 24
    for i in range(k):
        Image.fromarray(g.integers(0, 256, (240, 320), dtype=np.uint8)).save(ir / f"p{i:02d}.png")
        Image.fromarray(g.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(vi / f"p{i:02d}.png")
    base = [sys.executable, "-m", "ivfuse", "fuse", "--ir", str(ir), "--vis", str(vi), "--method", "laplacian", "-q"]
    ref = tmp / "fz-ref"
    subprocess.run([*base, "-o", str(ref)], check=True, stdout=subprocess.DEVNULL, env=env())
    want = {p.name: p.read_bytes() for p in ref.iterdir()}
    t0 = time.monotonic()
    probe = tmp / "fz-probe"
    window = kill_window([*base, "-o", str(probe)], probe)
    shutil.rmtree(probe)
    row = {
        "recipe": "fuse (folder, 24 pairs)",
        "tried": 0,
        "killed": 0,
        "resumed": 0,
        "equal": 0,
        "torn": 0,
        "torn_detected": 0,
        "kinds": {},
        "ref_s": time.monotonic() - t0,
        "window_s": window,
        "partial": 0,
    }
    for i in range(n):
        out = tmp / f"fz-{i}"
        kind = rng.choice(["time", "write"])
        e, delay = env(), None
        if kind == "time":
            delay = rng.uniform(0, window)
        else:
            e = env(IVFUSE_FAULT_WRITE=f"p{rng.randrange(k):02d}.png:1:kill")
        rc = run_killed([*base, "-o", str(out)], e, out, delay)
        row["tried"] += 1
        row["kinds"][kind] = row["kinds"].get(kind, 0) + 1
        row["killed"] += rc == -signal.SIGKILL
        done = {q.name: q.read_bytes() for q in out.iterdir() if q.is_file()} if out.exists() else {}
        row["partial"] += sum(b != want.get(nm) for nm, b in done.items())
        r = subprocess.run([*base, "-o", str(out), "--skip-existing"], capture_output=True, text=True, env=env())
        ok = r.returncode == 0
        row["resumed"] += ok
        got = {q.name: q.read_bytes() for q in out.iterdir() if q.is_file()}
        eq = ok and got == want and not [q for q in out.iterdir() if q.name.startswith(".")]
        row["equal"] += eq
        say("fuse", i, kind, delay, e.get("IVFUSE_FAULT_WRITE", ""), rc, ok, eq, done=f"{len(done)} of {k} done, ")
        shutil.rmtree(out)
    return row


def bench_results(folder: Path) -> dict:
    """A bench's ``results.json`` without what differs between equal runs: how, where and when it ran, and every
    wall-clock field (``*seconds``, ``*_s``, ``*time*``)."""
    import json

    def untimed(x):
        if isinstance(x, dict):
            return {k: untimed(v) for k, v in x.items() if not (k.endswith(("seconds", "_s")) or "time" in k)}
        return [untimed(v) for v in x] if isinstance(x, list) else x

    r = json.loads((folder / "results.json").read_text().replace(str(folder), "OUT"))
    for k in ("command", "cache", "wall_seconds", "finished"):
        r["meta"].pop(k, None)
    return untimed(r)


def bench_bench(n: int, rng: random.Random, tmp: Path) -> dict:
    """``ivfuse bench`` (average and gff on 3 MSRS dev-val pairs: fusion, zero-shot and a 1-epoch retrain) killed at a
    random moment — while fusing, inside a protocol, or inside a cache entry's write — then rerun into the same
    ``--out``: its ``results.json`` must equal an uninterrupted run's (timing fields aside)."""
    base = [
        sys.executable,
        "-m",
        "ivfuse",
        "bench",
        "--methods",
        "average,gff",
        "--data",
        "msrs:dev-val",
        "--limit",
        "3",
        "--train-limit",
        "4",
        "--epochs",
        "1",
        "--imgsz",
        "160",
        "--protocols",
        "fusion,zero,retrain",
        "--no-speed",
        "--no-references",
        "--baseline",
        "none",
        "-q",
    ]
    ref = tmp / "bench-ref"
    t0 = time.monotonic()
    subprocess.run([*base, "--out", str(ref)], check=True, stdout=subprocess.DEVNULL, env=env())
    t_ref = time.monotonic() - t0
    want = bench_results(ref)
    entries = len(list((ref / "cache" / "results").rglob("*.json")))
    probe = tmp / "bench-probe"
    window = kill_window([*base, "--out", str(probe)], probe)
    shutil.rmtree(probe)
    row = {
        "recipe": "bench (2 methods, 3 pairs)",
        "tried": 0,
        "killed": 0,
        "resumed": 0,
        "equal": 0,
        "torn": 0,
        "torn_detected": 0,
        "kinds": {},
        "ref_s": t_ref,
        "window_s": window,
    }
    for i in range(n):
        out = tmp / f"bench-{i}"
        kind = rng.choice(["time", "time", "write"])
        e, delay = env(), None
        if kind == "time":
            delay = rng.uniform(0, window)
        else:  # inside the write of a result entry (its file name is a hash: the n-th .json write of any name)
            e = env(IVFUSE_FAULT_WRITE=f"*.json:{rng.randint(1, entries)}:kill")
        rc = run_killed([*base, "--out", str(out)], e, out, delay)
        row["tried"] += 1
        row["kinds"][kind] = row["kinds"].get(kind, 0) + 1
        row["killed"] += rc == -signal.SIGKILL
        r = subprocess.run([*base, "--out", str(out)], capture_output=True, text=True, env=env())
        ok = r.returncode == 0
        row["resumed"] += ok
        eq = ok and bench_results(out) == want
        row["equal"] += eq
        say("bench", i, kind, delay, e.get("IVFUSE_FAULT_WRITE", ""), rc, ok, eq, r.stderr)
        shutil.rmtree(out)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=10, help="random kill points per recipe (default 10)")
    ap.add_argument(
        "--recipes",
        default="lite,metafusion,tim,occo,tsjnet,fuse,bench",
        help="comma-separated: lite, metafusion, tim, occo, tsjnet, fuse, bench",
    )
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    rows = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ivfuse-faults-") as d:
        for r in a.recipes.split(","):
            print(f"{r}:", flush=True)
            kind = {"fuse": bench_fuse, "bench": bench_bench}.get(r)
            rows.append(kind(a.kills, rng, Path(d)) if kind else bench_recipe(r, a.kills, rng, Path(d)))
    print(
        "\n| recipe | kill points tried | killed | resumed | equal | torn writes detected | kinds | uninterrupted run |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["kinds"].items()))
        torn = f"{r['torn_detected']} of {r['torn']}" if r["torn"] else "—"
        print(
            f"| {r['recipe']} | {r['tried']} | {r['killed']} | {r['resumed']} | {r['equal']} | {torn} | {kinds} | "
            f"{r['ref_s']:.0f} s |"
        )
    print(f"\ntotal {time.monotonic() - t0:.0f} s, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, seed {a.seed}")
    if any(r["equal"] != r["tried"] or r.get("partial") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

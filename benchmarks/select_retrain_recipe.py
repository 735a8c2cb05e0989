"""Choose a bench ``retrain`` recipe without looking at dev-val.

The judge is fine-tuned on the infrared images of ``n`` evenly spaced MSRS dev-train pairs and scored on the *other*
dev-train pairs (infrared labels); dev-val is never read. Each candidate runs with every seed given, so that its seed
spread is measured beside its mean.

Two candidate sets:

* ``cpu`` (issue 9, the quick preset): lr/batch at the ``cpu`` preset's 3 epochs on its 64 pairs.
* ``cpu-full`` (issue 19): longer recipes on 114 of the 171 pairs (2/3; the preset itself then trains on all 171),
  with YOLOv5's linear learning-rate decay and a moving average of the weights. The rule, written before any run:
  **among the candidates whose mean held-out mAP50 is within 0.01 of the best mean, take the one with the smallest
  seed std; a std within 0.002 of that smallest counts as a tie, broken by the lower cost (epochs × imgsz²).**

    OMP_NUM_THREADS=1 python benchmarks/select_retrain_recipe.py --set cpu-full --seeds 0,1,2 [--only 0,1] [--out F]

``--only`` runs a subset of the candidates (two processes on two cores); ``--out`` appends one JSON line per run,
``--summary F`` prints the table and the rule's choice from such a file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from ivfuse.bench.protocols import detection_set, held_out_dev_train, run_retrain
from ivfuse.bench.recipes import PRESETS
from ivfuse.tasks import create_detector

CANDIDATES = {
    "cpu": (64, [dict(lr=0.005, batch_size=8), dict(lr=0.002, batch_size=4), dict(lr=0.001, batch_size=4)]),
    "cpu-full": (
        114,
        [
            dict(epochs=10, lr=0.001, batch_size=4),  # the cpu recipe, longer
            dict(epochs=10, lr=0.002, batch_size=4, lr_final=0.05, ema=0.99),
            dict(epochs=10, lr=0.005, batch_size=4, lr_final=0.05, ema=0.99),
            dict(epochs=20, lr=0.002, batch_size=4, lr_final=0.05, ema=0.99),
            # added after the held-out spread of 1 came out above target
            dict(epochs=10, lr=0.002, batch_size=4, lr_final=0.01, ema=0.995),
        ],
    ),
}


def _cost(c: dict) -> float:
    return c["epochs"] * c["imgsz"] ** 2


def summary(rows: list[dict]) -> str:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(json.dumps(r["recipe"], sort_keys=True), []).append(r)
    stats = []
    for k, rs in groups.items():
        m = [r["mAP50"] for r in rs]
        stats.append(
            {
                "recipe": json.loads(k),
                "n": len(m),
                "mean": statistics.fmean(m),
                "std": statistics.stdev(m) if len(m) > 1 else float("nan"),
                "mean95": statistics.fmean(r["mAP50_95"] for r in rs),
                "seconds": statistics.fmean(r["seconds"] for r in rs),
            }
        )
    lines = [
        "| epochs | lr | batch | lr_final | ema | seeds | held-out mAP50 (mean ± std) | mAP50:95 | s/run |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in stats:
        c = s["recipe"]
        lines.append(
            f"| {c['epochs']} | {c['lr']} | {c['batch_size']} | {c['lr_final']} | {c['ema']} | {s['n']} | "
            f"{s['mean']:.4f} ± {s['std']:.4f} | {s['mean95']:.4f} | {s['seconds']:.0f} |"
        )
    best = max(s["mean"] for s in stats)
    near = [s for s in stats if s["mean"] >= best - 0.01 and s["n"] > 1]
    if near:
        low = min(s["std"] for s in near)
        pick = min((s for s in near if s["std"] <= low + 0.002), key=lambda s: _cost(s["recipe"]))
        lines.append(f"\nrule's choice: {json.dumps(pick['recipe'])} (mean {pick['mean']:.4f}, std {pick['std']:.4f})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="cpu", choices=sorted(CANDIDATES), help="candidate set (default cpu)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--only", help="comma-separated candidate indices to run (default all)")
    ap.add_argument("--out", help="append one JSON line per run to this file")
    ap.add_argument("--summary", help="print the table and the rule's choice from a file written by --out, and exit")
    a = ap.parse_args()
    if a.summary:
        print(summary([json.loads(x) for x in Path(a.summary).read_text().splitlines() if x.strip()]))
        return
    n_train, cands = CANDIDATES[a.set]
    base = replace(PRESETS["cpu"], train_pairs=n_train)
    train_ds, held_ds = held_out_dev_train(n_train, "infrared")
    ir = lambda ds: {n: ip for n, ip, _ in ds.pairs}  # noqa: E731 - the infrared image is the judged image
    train, held = detection_set(train_ds, ir(train_ds)), detection_set(held_ds, ir(held_ds))
    print(f"train {len(train)} dev-train pairs, select on the other {len(held)} dev-train pairs (dev-val unused)")
    only = [int(i) for i in a.only.split(",")] if a.only else range(len(cands))
    rows = []
    for i in only:
        recipe = replace(base, **cands[i])
        for seed in [int(s) for s in a.seeds.split(",")]:
            t = time.perf_counter()
            r = run_retrain(lambda: create_detector("yolov5n"), train, held, recipe, seed, False)
            det = {k: v for k, v in recipe.as_dict().items() if not k.startswith("seg_")}
            rows.append(
                {
                    "candidate": i,
                    "recipe": det,
                    "seed": seed,
                    "mAP50": r["mAP50"],
                    "mAP50_95": r["mAP50_95"],
                    "seconds": time.perf_counter() - t,
                    "n_train": len(train),
                    "n_held_out": len(held),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
    print(summary(rows))


if __name__ == "__main__":
    main()

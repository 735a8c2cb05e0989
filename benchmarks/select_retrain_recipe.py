"""Choose the bench's CPU ``retrain`` recipe without looking at dev-val.

The judge is fine-tuned on the infrared images of the 64 evenly spaced MSRS dev-train pairs that the CPU preset
trains on, and scored on the *other* 107 dev-train pairs (infrared labels); dev-val is never read. Each candidate
(lr, batch) is run with the preset's epochs and image size.

    OMP_NUM_THREADS=1 python benchmarks/select_retrain_recipe.py [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from ivfuse.bench.protocols import detection_set, held_out_dev_train, run_retrain
from ivfuse.bench.recipes import PRESETS
from ivfuse.tasks import create_detector

CANDIDATES = [(0.005, 8), (0.002, 4), (0.001, 4)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    a = ap.parse_args()
    base = PRESETS["cpu"]
    train_ds, held_ds = held_out_dev_train(base.train_pairs, "infrared")
    ir = lambda ds: {n: ip for n, ip, _ in ds.pairs}  # noqa: E731 - the infrared image is the judged image
    train, held = detection_set(train_ds, ir(train_ds)), detection_set(held_ds, ir(held_ds))
    print(f"train {len(train)} dev-train pairs, select on the other {len(held)} dev-train pairs (dev-val unused)")
    rows = []
    for lr, batch in CANDIDATES:
        for seed in [int(s) for s in a.seeds.split(",")]:
            r = run_retrain(lambda: create_detector("yolov5n"), train, held, replace(base, lr=lr, batch_size=batch), seed, False)
            rows.append({"lr": lr, "batch": batch, "seed": seed, "mAP50": r["mAP50"], "mAP50_95": r["mAP50_95"]})
            print(json.dumps(rows[-1]), flush=True)
    print("| lr | batch | seed | mAP50 | mAP50:95 |\n|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['lr']} | {r['batch']} | {r['seed']} | {r['mAP50']:.4f} | {r['mAP50_95']:.4f} |")


if __name__ == "__main__":
    main()

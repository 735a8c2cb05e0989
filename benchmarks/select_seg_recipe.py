"""Choose the bench's CPU ``seg`` recipe without looking at dev-val.

ESPNetv2 (Cityscapes weights; a new head for MSRS' nine classes, so its bottom-up decoder starts from scratch) is
fine-tuned on the visible images of the 64 evenly spaced MSRS dev-train pairs that the CPU preset trains on, with
segmentation masks from ``--masks`` (MSRS ``Segmentation_labels`` where a user has them; here TSJNet's pseudo-masks
from ``ivfuse masks --kind seg``), and scored (mIoU) on the *other* 107 dev-train pairs; dev-val is never read. Each
candidate (seg_epochs, seg_lr) is run with the preset's batch and crop. ``--judge merged`` keeps the whole
Cityscapes network and merges its classes into MSRS' (for MSRS-class masks; 0 epochs = the frozen network).

    OMP_NUM_THREADS=1 python benchmarks/select_seg_recipe.py --masks MASKS [--judge head|merged] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from ivfuse.bench.protocols import held_out_dev_train, run_seg
from ivfuse.bench.recipes import PRESETS

CANDIDATES = {"head": [(3, 1e-3), (10, 1e-3), (10, 3e-3)], "merged": [(0, 0.0), (3, 1e-3), (3, 1e-4)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masks", required=True, help="folder of <pair>.png class-id masks covering MSRS dev-train")
    ap.add_argument(
        "--judge", default="head", choices=sorted(CANDIDATES), help="seg judge (ivfuse.bench.protocols.run_seg)"
    )
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    a = ap.parse_args()
    base = PRESETS["cpu"]
    train_ds, held_ds = held_out_dev_train(base.train_pairs, None, seg_dir=a.masks)
    vis = lambda ds: {n: vp for n, _, vp in ds.pairs}  # noqa: E731 - the visible image is the judged image
    print(f"train {len(train_ds)} dev-train pairs, select on the other {len(held_ds)} dev-train pairs (dev-val unused)")
    rows = []
    for epochs, lr in CANDIDATES[a.judge]:
        for seed in [int(s) for s in a.seeds.split(",")]:
            r = run_seg(
                train_ds,
                vis(train_ds),
                held_ds,
                vis(held_ds),
                replace(base, seg_epochs=epochs, seg_lr=lr),
                seed,
                progress=False,
                judge=a.judge,
            )
            rows.append(
                {
                    "seg_epochs": epochs,
                    "seg_lr": lr,
                    "seed": seed,
                    "mIoU": r["mIoU"],
                    "pixel_acc": r["pixel_acc"],
                    "per_class": {k: v for k, v in r["per_class"].items() if v is not None},
                    "loss_per_epoch": r["loss_per_epoch"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print("| seg_epochs | seg_lr | seed | held-out dev-train mIoU | pixel acc |\n|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seg_epochs']} | {r['seg_lr']:g} | {r['seed']} | {r['mIoU']:.4f} | {r['pixel_acc']:.4f} |")


if __name__ == "__main__":
    main()

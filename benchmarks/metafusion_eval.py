"""Evaluate fusion models the way issue #4 asks: fusion metrics on TNO (42) and MSRS test (241, not used in
training) beside the classical baselines, and zero-shot YOLOv5n mAP on MSRS test for IR only, visible only,
each baseline and the learned models.

    python benchmarks/metafusion_eval.py --model metafusion=default --model sofusion=runs/mf_cpu/after_pretrain_f.pt \
        --model cofusion=runs/co_cpu/final.pt [--out runs/metafusion_eval.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

import ivfuse
from ivfuse.data import load_dataset
from ivfuse.models.metafusion import MetaFusionNet
from ivfuse.tasks import create_detector
from ivfuse.tasks.downstream import evaluate_detector, load_detection_set
from ivfuse.utils import atomic_write_text, shared_root

METRICS = ["en", "sd", "sf", "ag", "mi", "scd", "vif", "qabf"]


def link_split(root: Path, names: list[str], dest: Path) -> tuple[Path, Path]:
    for d in ("ir", "vi"):
        (dest / d).mkdir(parents=True, exist_ok=True)
        for n in names:
            src = root / d / f"{n}.png"
            (dest / d / src.name).symlink_to(src.resolve())
    return dest / "ir", dest / "vi"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", default=[], help="label=checkpoint (or label=default)")
    ap.add_argument("--baselines", default="average,max,laplacian,gff")
    ap.add_argument("--skip-sources", action="store_true", help="no mAP rows for IR-only / visible-only")
    ap.add_argument("--work", default="runs/metafusion_eval")
    ap.add_argument("--out", default="runs/metafusion_eval/results.json")
    a = ap.parse_args()
    work = Path(a.work)
    data = shared_root() / "data"
    msrs_test = load_dataset("msrs", split="test").names
    tmp = Path(tempfile.mkdtemp())
    sets = {
        "tno": (data / "TNO" / "ir", data / "TNO" / "vi"),
        "msrs_test": link_split(data / "MSRS", msrs_test, tmp / "msrs"),
    }
    models: dict[str, object] = {b: b for b in a.baselines.split(",") if b}
    for spec in a.model:
        label, ck = spec.split("=", 1)
        models[label] = ivfuse.create_model("metafusion") if ck == "default" else MetaFusionNet.from_checkpoint(ck)
    res: dict = {"metrics": {}, "map": {}, "seconds_per_image": {}}
    if Path(a.out).is_file():  # keep what an earlier run computed; only new models are evaluated
        res = json.loads(Path(a.out).read_text())
    for sname, (ir, vi) in sets.items():
        for label, m in models.items():
            out = work / sname / label
            if f"{sname}/{label}" in res["metrics"]:
                continue
            t0 = time.time()
            if not out.exists():
                ivfuse.fuse_folder(ir, vi, out, method=m, progress=False)
            n = len(list(out.iterdir()))
            res["seconds_per_image"][f"{sname}/{label}"] = (time.time() - t0) / n
            r = ivfuse.evaluate_folder(ir, vi, out, METRICS, workers=1, progress=False)
            res["metrics"][f"{sname}/{label}"] = r["mean"]
            print(f"{sname:10s} {label:12s} " + " ".join(f"{k}={v:.4f}" for k, v in r["mean"].items()), flush=True)
            atomic_write_text(a.out, json.dumps(res, indent=1))
    det = create_detector("yolov5n")
    labels = {
        "union": [data / "MSRS" / "labels_det" / "infrared", data / "MSRS" / "labels_det" / "visible"],
        "infrared": [data / "MSRS" / "labels_det" / "infrared"],
    }
    image_sets = {} if a.skip_sources else {"ir": sets["msrs_test"][0], "vis": sets["msrs_test"][1]}
    image_sets.update({label: work / "msrs_test" / label for label in models})
    for label, d in image_sets.items():
        for g, lab in labels.items():
            if f"{label}/{g}" in res["map"]:
                continue
            r = evaluate_detector(det, load_detection_set(d, lab), progress=False)
            res["map"][f"{label}/{g}"] = {"mAP50": r["mAP50"], "mAP50_95": r["mAP50_95"]}
            print(f"mAP {label:12s} {g:8s} mAP50={r['mAP50']:.4f} mAP50:95={r['mAP50_95']:.4f}", flush=True)
            atomic_write_text(a.out, json.dumps(res, indent=1))
    atomic_write_text(a.out, json.dumps(res, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

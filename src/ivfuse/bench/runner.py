"""``run_bench``: every method x dataset x protocol, cached, then results files and the HTML report."""

from __future__ import annotations

import math
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from ..allocator import tune as tune_allocator
from ..errors import InputError
from ..metrics import DEFAULT_METRICS, create_metric
from ..tasks.detectors import DEFAULT_DETECTOR
from ..utils import check_device
from .cache import BenchCache, data_key, folder_hash, short_hash, state_hash
from .methods import BenchMethod, parse_method
from .stats import add_scene_maps, compare_to_baseline
from .recipes import LABEL_SETS, PRESETS, PROTOCOLS
from .protocols import (
    DET_RESULT_VERSION,
    REFERENCES,
    check_seg_judge,
    detection_set,
    fuse_split,
    open_dataset,
    parse_data,
    run_fusion,
    run_retrain,
    run_seg,
    run_speed,
    run_zero,
)

__all__ = ["run_bench", "LABEL_SETS"]


def _split_list(v: str | Sequence[str] | None) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        v = v.split(",")
    return [x.strip() for x in v if x and x.strip()]


def _mean_std(vals: list[float]) -> tuple[float, float]:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)  # no spread from one seed


def _aggregate_seeds(runs: list[dict], keys=("mAP50", "mAP50_95")) -> dict:
    out: dict = {"seeds": runs, "n_seeds": len(runs)}
    for k in keys:
        out[k], out[k + "_std"] = _mean_std([r[k] for r in runs])
    if runs and "mAP50" in keys:
        out["per_class_AP50"] = {
            c: _mean_std([r["per_class"][c]["AP50"] for r in runs])[0] for c in runs[0]["per_class"]
        }
    elif runs and "mIoU" in keys:
        out["per_class_IoU"] = {c: _mean_std([r["per_class"][c] for r in runs])[0] for c in runs[0]["per_class"]}
    return out


def run_bench(
    methods: str | Sequence[str],
    data: str | Sequence[str],
    protocols: str | Sequence[str] = ("fusion", "zero", "retrain"),
    out: str | Path = "bench",
    device: str = "cpu",
    seeds: int = 1,
    preset: str = "cpu",
    labels: str = "infrared",
    judge: str = DEFAULT_DETECTOR,
    judge_weights: str | None = None,
    metrics: str | Sequence[str] | None = None,
    limit: int | None = None,
    train_limit: int | None = None,
    references: bool = True,
    speed: bool = True,
    workers: int = 1,
    progress: bool = True,
    report: bool = True,
    grid_pairs: int = 2,
    seg_masks: str | Path | None = None,
    seg_judge: str = "head",
    baseline: str | None = "average",
    **recipe_overrides,
) -> dict:
    """Run the bench and write ``out/results.{json,csv,md}`` and ``out/report.html`` (+ ``out/assets``).

    Args:
        methods: method names (``ivfuse list methods``), ``name@WEIGHTS`` for a checkpoint, ``LABEL=dir:PATH`` for a
            folder of pre-fused images, ``LABEL=py:module:attr`` for a user's model (:mod:`ivfuse.bench.methods`);
            the reference rows ``ir`` and ``vis`` (the source images themselves) are added unless
            ``references=False``.
        baseline: the row every other row is compared with (paired 95 % bootstrap CIs, :mod:`ivfuse.bench.stats`);
            added to the methods when missing; ``None`` computes no CIs.
        data: ``name[:split]`` per dataset (``msrs:dev-val``, ``msrs:val`` = ``msrs:dev-val``, ``tno``).
        protocols: subset of ``fusion, zero, retrain, seg``.
        preset: ``cpu`` or ``gpu`` fine-tuning recipe (:data:`ivfuse.bench.PRESETS`); ``recipe_overrides``
            (``epochs=``, ``imgsz=``, ...) replace single fields and are recorded with the results.
        seeds: ``retrain``/``seg`` repetitions (seeds 0..N-1); mean ± std are reported.
        labels: detection label set (``infrared``, ``union``, ``visible``).
        limit / train_limit: only the first N pairs of the judged / training split (smoke tests).
        seg_masks: folder of class-id masks (``<pair>.png``) used by ``seg`` instead of the datasets' own, for both
            the training and the judged split (pseudo-masks from ``ivfuse masks --kind seg``); its content is part of
            the cache key.
        seg_judge: ``head`` (ESPNetv2 with a new head for the dataset's classes) or ``merged`` (the Cityscapes
            ESPNetv2 kept whole, its classes merged into MSRS'; for MSRS-class masks such as the pseudo-masks).
    Returns the results dict written to ``results.json``.
    """
    tune_allocator()
    t_start = time.time()
    protos = _split_list(protocols)
    bad = [p for p in protos if p not in PROTOCOLS]
    if bad:
        raise InputError(f"unknown protocol(s) {', '.join(bad)} (available: {', '.join(PROTOCOLS)})")
    if labels not in LABEL_SETS:
        raise InputError(f"unknown label set '{labels}' (available: {', '.join(LABEL_SETS)})")
    if preset not in PRESETS:
        raise InputError(f"unknown preset '{preset}' (available: {', '.join(PRESETS)})")
    check_device(device)
    if seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {seeds}")
    recipe = replace(PRESETS[preset], **{k: v for k, v in recipe_overrides.items() if v is not None})
    metric_names = [create_metric(m).name for m in (_split_list(metrics) or DEFAULT_METRICS)]
    specs = [parse_data(d) for d in _split_list(data)]
    if not specs:
        raise InputError("no dataset given (--data msrs:dev-val,tno)")
    mlist = _split_list(methods)
    if not mlist:
        raise InputError("no method given (--methods average,gff,...)")
    baseline = (baseline or "").strip() or None
    if references:
        mlist = [r for r in REFERENCES if r not in mlist] + mlist
    mlist = list(dict.fromkeys(mlist))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    cache = BenchCache(out / "cache")
    fused_written = 0

    models: dict[str, BenchMethod] = {}
    for m in mlist:
        bm = parse_method(m, device)
        if bm.label in models:
            raise InputError(f"--methods: the row '{bm.label}' is given twice")
        models[bm.label] = bm
    if baseline is not None and baseline not in models:
        bm = parse_method(baseline, device)
        models = {bm.label: bm, **models}
        baseline = bm.label
    mlist = list(models)

    needs_judge = any(p in protos for p in ("zero", "retrain"))
    from ..tasks import create_detector

    def make_judge():
        kw = {"weights": judge_weights} if judge_weights else {}
        return create_detector(judge, **kw).to(device).eval()

    frozen = make_judge() if needs_judge else None
    judge_key = f"{judge}-{state_hash(frozen)[:10]}" if frozen is not None else judge
    # retrain results depend on the detection fields only: seg overrides (--seg-epochs ...) keep them cached
    det_view = replace(recipe, **{k: v for k, v in PRESETS[preset].as_dict().items() if k.startswith("seg_")})
    recipe_key = short_hash({**det_view.as_dict(), "eval": "val.py at imgsz"}, 8)
    seg_recipe_key = short_hash({**recipe.as_dict(), "eval": "val.py at imgsz"}, 8)
    if seg_masks is not None and not Path(seg_masks).is_dir():
        raise InputError(f"--seg-masks {seg_masks}: folder not found")
    masks_key = (
        ""
        if seg_masks is None or "seg" not in protos
        else "-m" + folder_hash(seg_masks, (".png", ".bmp", ".tif"), False)[:10]
    )
    seg_key = "espnetv2" if check_seg_judge(seg_judge) == "head" else f"espnetv2_{seg_judge}"

    results: dict = {
        "meta": {
            "command": " ".join(sys.argv) if Path(sys.argv[0]).name in ("ivfuse", "__main__.py") else None,
            "methods": mlist,
            "references": [m for m in mlist if models[m].reference],
            "protocols": protos,
            "metrics": metric_names,
            "preset": preset,
            "recipe": recipe.as_dict(),
            "seeds": seeds,
            "labels": labels,
            "judge": judge,
            "judge_weights": judge_weights or "default (COCO)",
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "limit": limit,
            "train_limit": train_limit,
            "seg_masks": str(seg_masks) if seg_masks is not None else None,
            "seg_judge": seg_judge,
            "methods_identity": {m: models[m].identity for m in mlist},
            "baseline": baseline,
        },
        "datasets": {},
    }

    for spec in specs:
        det_req = labels if any(p in protos for p in ("zero", "retrain")) else None
        ds = open_dataset(spec, spec.split, "auto", limit, seg_dir=seg_masks)
        has_labels = ds.det_labels is not None
        if has_labels and det_req:
            ds = open_dataset(spec, spec.split, det_req, limit, seg_dir=seg_masks)
        dkey = data_key(spec.name, spec.split, ds.root, ds.names, ds.ir_norm)
        entry: dict = {
            "dataset": spec.name,
            "split": spec.split,
            "root": str(ds.root),
            "n_pairs": len(ds),
            "names": ds.names,
            "labels": ds.det_labels if has_labels else None,
            "class_names": list(ds.class_names) if has_labels else [],
            "train_split": None,
            "n_train": 0,
            "skipped": {},
            "data_key": dkey,
            "fusion": {},
            "zero": {},
            "retrain": {},
            "seg": {},
            "speed": {},
        }
        todo = set(protos)
        for p in ("zero", "retrain"):
            if p in todo and not has_labels:
                entry["skipped"][p] = f"{spec.name} has no detection labels (only fusion metrics and speed)"
                todo.discard(p)
        if "retrain" in todo and spec.train_split is None:
            entry["skipped"]["retrain"] = f"{spec.name}:{spec.split} has no separate training split to fine-tune on"
            todo.discard("retrain")
        if ds.seg_dir is None:
            entry["skipped"]["seg"] = (
                f"no segmentation masks (e.g. Segmentation_labels/) under {ds.root} "
                "(pseudo-masks: ivfuse masks --kind seg, then --seg-masks)"
            )
            todo.discard("seg")
        elif "seg" in todo and spec.train_split is None:
            entry["skipped"]["seg"] = f"{spec.name}:{spec.split} has no separate training split"
            todo.discard("seg")
        ds_train = tkey = None
        if todo & {"retrain", "seg"}:
            ds_train = open_dataset(
                spec,
                spec.train_split,
                det_req if has_labels else None,
                train_limit or limit,
                recipe.train_pairs,
                seg_dir=seg_masks,
            )
            tkey = data_key(spec.name, spec.train_split, ds_train.root, ds_train.names, ds_train.ir_norm)
            if set(ds_train.names) & set(ds.names):
                raise InputError(f"{spec.tag}: training split {spec.train_split} overlaps the judged split")
            entry.update(train_split=spec.train_split, n_train=len(ds_train), train_key=tkey)

        for m in mlist:  # a dir: method missing a pair fails here, before anything is computed
            if models[m].kind == "dir":
                models[m].folder_images(ds, spec.split, judged=True)
                if ds_train is not None:
                    models[m].folder_images(ds_train, spec.train_split, judged=False)
        matches: dict[str, dict[str, list]] = {"zero": {}, "retrain": {}}
        for m in mlist:
            info = models[m]
            mkey, tag = info.key, f"{m} {spec.tag}"
            paths, n = _fused(info, cache, ds, spec.split, dkey, True, device, progress, f"fuse[{tag}]")
            fused_written += n
            if "fusion" in todo:
                xk = short_hash(metric_names, 8)
                r = cache.get("fusion", dkey, mkey, xk)
                if r is None:
                    r = cache.put(
                        "fusion",
                        dkey,
                        mkey,
                        run_fusion(ds, paths, metric_names, workers, progress, f"metrics[{tag}]"),
                        xk,
                    )
                entry["fusion"][m] = r
            if speed and info.kind == "model":
                xk = f"{torch.device(device).type}-t{torch.get_num_threads()}"
                r = cache.get("speed", dkey, mkey, xk) or cache.put(
                    "speed", dkey, mkey, run_speed(info.model, ds, device), xk
                )
                entry["speed"][m] = r
            if "zero" in todo:
                xk = f"{judge_key}-{ds.det_labels}-{DET_RESULT_VERSION}"
                r = cache.get("zero", dkey, mkey, xk)
                if r is None:
                    r = cache.put("zero", dkey, mkey, run_zero(frozen, detection_set(ds, paths), progress), xk)
                matches["zero"][m] = [r.pop("matches")]
                entry["zero"][m] = r
            tpaths = None
            if todo & {"retrain", "seg"}:
                tpaths, n = _fused(
                    info,
                    cache,
                    ds_train,
                    spec.train_split,
                    tkey,
                    False,
                    device,
                    progress,
                    f"fuse[{m} {spec.name}:{spec.train_split}]",
                )
                fused_written += n
            if "retrain" in todo:
                runs = []
                for seed in range(seeds):
                    xk = f"{judge_key}-{ds.det_labels}-{recipe_key}-{tkey}-s{seed}-{DET_RESULT_VERSION}"
                    r = cache.get("retrain", dkey, mkey, xk)
                    if r is None:
                        r = run_retrain(
                            make_judge,
                            detection_set(ds_train, tpaths),
                            detection_set(ds, paths),
                            recipe,
                            seed,
                            progress,
                        )
                        cache.put("retrain", dkey, mkey, r, xk)
                    matches["retrain"].setdefault(m, []).append(r.pop("matches"))
                    runs.append(r)
                entry["retrain"][m] = _aggregate_seeds(runs)
            if "seg" in todo:
                runs = []
                for seed in range(seeds):
                    xk = f"{seg_key}-{seg_recipe_key}-{tkey}{masks_key}-s{seed}"
                    r = cache.get("seg", dkey, mkey, xk)
                    if r is None:
                        r = cache.put(
                            "seg",
                            dkey,
                            mkey,
                            run_seg(ds_train, tpaths, ds, paths, recipe, seed, device, progress, seg_judge),
                            xk,
                        )
                    runs.append(r)
                entry["seg"][m] = _aggregate_seeds(runs, keys=("mIoU",))
            entry.setdefault("fused_dirs", {})[m] = str(Path(next(iter(paths.values()))).parent) if paths else None
        if baseline is not None:
            entry["significance"] = compare_to_baseline(entry, matches, baseline, metric_names, progress)
        entry["scenes"] = add_scene_maps(entry, matches)  # day / night rows of zero and retrain (MSRS names)
        results["datasets"][spec.tag] = entry

    results["meta"]["cache"] = {
        "result_hits": cache.hits,
        "result_misses": cache.misses,
        "fused_written": fused_written,
    }
    results["meta"]["wall_seconds"] = time.time() - t_start
    results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    from .report import write_report, write_results

    write_results(results, out)
    if report:
        write_report(results, out, grid_pairs=grid_pairs)
    return results


def _fused(
    info: BenchMethod,
    cache: BenchCache,
    ds,
    split: str,
    dkey: str,
    judged: bool,
    device: str,
    progress: bool,
    desc: str,
) -> tuple[dict[str, Path], int]:
    """``({pair: fused image}, images fused now)`` of one split: the user's files for a ``dir:`` method, else the
    cached fusion of the method's model (fused where missing)."""
    if info.kind == "dir":
        return info.folder_images(ds, split, judged), 0
    d = cache.fused_dir(dkey, info.key)
    before = sum(1 for _ in d.glob("*.png")) if d.is_dir() else 0
    paths = fuse_split(info.model, ds, d, device, progress, desc=desc)
    return paths, len(paths) - before

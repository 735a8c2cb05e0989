"""Scoring folders of fused images: ``ivfuse eval`` and its Python counterpart.

>>> res = ivfuse.evaluate_folder("IR_DIR", "VIS_DIR", "FUSED_DIR", metrics=["en", "qabf"])
>>> res["mean"]["qabf"], res["per_image"]["00004N"]["en"]

Images are read as 8-bit gray (colour -> rounded BT.601 luma, as CDDFuse's evaluator) and matched by file
stem across the three folders, strictly. Triples are scored in parallel on all cores.

Subsets: ``names=[...]`` (``ivfuse eval --names FILE``) scores only those pairs; ``only_fused=True``
(``--only-fused``) scores the fused images present and reports (warning) the source pairs without one.
16-bit/float infrared is refused unless ``ir_norm`` is given (``--ir-norm``): it is then normalised exactly as
``ivfuse fuse --ir-norm`` reads it and quantised to 8 bits (``round(255 x)``) before scoring.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .data.images import IMAGE_EXTENSIONS, IR_NORMS, read_gray_u8
from .data.pairing import list_images, pair_by_stem
from .errors import InputError, PairingError, warn
from .metrics import DEFAULT_METRICS, create_metric
from .metrics.fast import compute_arrays
from .utils import atomic_write_text

__all__ = ["evaluate_folder", "score_triple", "write_results", "results_table", "RESULT_FORMATS"]

RESULT_FORMATS = (".json", ".csv", ".md")


def _read_ir_u8(path: str, ir_norm: str | None):
    """Infrared for the metrics: 8-bit as stored, or (``ir_norm``) read as fusion reads it and quantised to 8 bits."""
    if ir_norm is None:
        try:
            return read_gray_u8(path)
        except InputError as e:
            raise InputError(
                f"{e} (for 16-bit/float infrared pass --ir-norm minmax|percentile|scale, as for fuse)"
            ) from None
    import numpy as np

    from .data.images import read_ir

    x = read_ir(path, ir_norm)[0].numpy().astype(np.float64)
    return np.round(np.clip(x, 0, 1) * 255.0)


def score_triple(
    fused_path: str, ir_path: str, vis_path: str, metrics: Sequence[str], ir_norm: str | None = None
) -> dict[str, float]:
    """Read one triple of 8-bit images and score it (fused, ir, vis order as everywhere)."""
    f, a, b = read_gray_u8(fused_path), _read_ir_u8(ir_path, ir_norm), read_gray_u8(vis_path)
    for arr, p in ((a, ir_path), (b, vis_path)):
        if arr.shape != f.shape:
            raise PairingError(
                f"{fused_path}: fused image is {f.shape[1]}x{f.shape[0]} but {p} is {arr.shape[1]}x{arr.shape[0]}"
            )
    try:  # all metrics in one pass, sharing intermediates (ivfuse.metrics.compute_all)
        res = compute_arrays(f, a, b, [create_metric(name) for name in metrics])
    except InputError as e:
        raise InputError(f"{fused_path}: {e}") from None
    return {name: res[create_metric(name).name] for name in metrics}


def _score_job(args):
    return score_triple(*args)


def evaluate_folder(
    ir_dir: str | os.PathLike,
    vis_dir: str | os.PathLike,
    fused_dir: str | os.PathLike,
    metrics: Sequence[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
    *,
    names: Sequence[str] | None = None,
    only_fused: bool = False,
    ir_norm: str | None = None,
) -> dict:
    """Score every fused image against its sources; returns ``{"per_image": {stem: {m: v}}, "mean": {m: v}}``.

    Args:
        names: score only these pair names (file stems; each must be in all three folders).
        only_fused: score the fused images present (each needs its source pair); source pairs without a fused
            image are reported as a warning instead of an error.
        ir_norm: ``None`` (infrared must be 8-bit) or how to normalise 16-bit/float infrared, as ``fuse`` does.
    """
    if ir_norm is not None and ir_norm not in IR_NORMS:
        raise InputError(f"unknown ir_norm '{ir_norm}' (use {', '.join(IR_NORMS)})")
    metric_names = [create_metric(m).name for m in (metrics or DEFAULT_METRICS)]
    subset = names is not None or only_fused
    pairs = pair_by_stem(ir_dir, vis_dir, allow_unmatched=subset)
    fused = list_images(fused_dir)
    if names is not None:
        wanted = list(
            dict.fromkeys(
                Path(str(n)).stem if Path(str(n)).suffix.lower() in IMAGE_EXTENSIONS else str(n) for n in names
            )
        )
        if not wanted:
            raise InputError("no image names given to score")
        by_key = {k: (ip, vp) for k, ip, vp in pairs}
        absent = [k for k in wanted if k not in by_key or k not in fused]
        if absent:
            where = [f"{k} ({'no fused image' if k in by_key else 'no source pair'})" for k in absent[:8]]
            raise PairingError(
                f"{len(absent)} of the {len(wanted)} names to score are missing: {', '.join(where)}"
                + (" ..." if len(absent) > 8 else "")
            )
        pairs = [(k, *by_key[k]) for k in wanted]
    elif only_fused:
        keys = {k for k, _, _ in pairs}
        orphans = sorted(set(fused) - keys)
        if orphans:
            raise PairingError(
                f"fused images without a source pair: {', '.join(orphans[:8])}" + (" ..." if len(orphans) > 8 else "")
            )
        unscored = [k for k, _, _ in pairs if k not in fused]
        if not fused:
            raise InputError(f"{fused_dir}: no fused images found")
        if unscored:
            warn(
                f"{fused_dir}: {len(unscored)} of {len(pairs)} source pairs have no fused image and are not scored: "
                f"{', '.join(unscored[:8])}" + (" ..." if len(unscored) > 8 else "")
            )
        pairs = [p for p in pairs if p[0] in fused]
    missing = [k for k, _, _ in pairs if k not in fused]
    extra = [] if subset else sorted(set(fused) - {k for k, _, _ in pairs})
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                f"no fused image in {fused_dir} for: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else "")
            )
        if extra:
            parts.append(
                f"fused images without a source pair: {', '.join(extra[:8])}" + (" ..." if len(extra) > 8 else "")
            )
        raise PairingError("; ".join(parts))
    jobs = [(str(fused[k]), str(ip), str(vp), metric_names, ir_norm) for k, ip, vp in pairs]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="eval", unit="img", disable=not progress)
    try:
        if workers == 1:
            results = []
            for j in jobs:
                results.append(_score_job(j))
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as ex:
                results = []
                for r in ex.map(_score_job, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                    results.append(r)
                    bar.update()
    finally:
        bar.close()
    per_image = {k: r for (k, _, _), r in zip(pairs, results)}
    mean = {m: _mean([r[m] for r in results]) for m in metric_names}
    return {"per_image": per_image, "mean": mean}


def _mean(vals: list[float]) -> float:
    finite = [v for v in vals if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _rows(results: dict) -> tuple[list[str], list[list]]:
    metrics = list(results["mean"])
    rows = [[k] + [v[m] for m in metrics] for k, v in results["per_image"].items()]
    rows.append(["mean"] + [results["mean"][m] for m in metrics])
    return ["image"] + metrics, rows


def _fmt(v) -> str:
    return v if isinstance(v, str) else f"{v:.4f}"


def results_markdown(results: dict) -> str:
    head, rows = _rows(results)
    arrows = [""] + [" ↓" if create_metric(m).lower_better else " ↑" for m in head[1:]]
    lines = ["| " + " | ".join(h + a for h, a in zip(head, arrows)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(results: dict, out: str | os.PathLike) -> Path:
    """Write results as JSON, CSV or Markdown according to the extension of ``out`` (atomically)."""
    p = Path(out)
    ext = p.suffix.lower()
    if ext == ".json":
        text = json.dumps(results, indent=2) + "\n"
    elif ext == ".csv":
        head, rows = _rows(results)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(head)
        for r in rows:
            w.writerow([r[0]] + [repr(float(v)) for v in r[1:]])
        text = buf.getvalue()
    elif ext == ".md":
        text = results_markdown(results)
    else:
        raise InputError(f"{p}: unsupported results format '{p.suffix}' (use {', '.join(RESULT_FORMATS)})")
    return atomic_write_text(p, text)


def results_table(results: dict, title: str = "fusion metrics"):
    """A rich Table with one row per image and a final mean row (↑/↓ mark the better direction)."""
    from rich.table import Table

    head, rows = _rows(results)
    t = Table(title=title)
    t.add_column(head[0])
    for m in head[1:]:
        t.add_column(m + (" ↓" if create_metric(m).lower_better else " ↑"), justify="right")
    for i, r in enumerate(rows):
        t.add_row(*[_fmt(v) for v in r], end_section=(i == len(rows) - 2))
    return t

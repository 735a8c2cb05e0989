"""Paired significance of the bench: every method against one baseline, on the same judged images.

Three kinds of paired 95 % confidence interval of ``method − baseline`` (``docs/bench.md``, *Significance*):

* **fusion metrics** — the per-image difference ``d_i = metric(method_i) − metric(baseline_i)``; the CI of the
  mean of ``d`` is :func:`scipy.stats.bootstrap` (BCa, resampling images). Images where either value is not finite
  are left out (as the bench's means leave them out).
* **zero-shot detection** — an image-level paired bootstrap of the mAP difference (:func:`scipy.stats.bootstrap`,
  BCa): a resample draws images with replacement, and *both* methods' mAP50 (or mAP50:95) are recomputed on that
  same resample from the per-image matches COCOeval made (:class:`~ivfuse.tasks.evaluation.PreparedMatches`),
  so the difference keeps the pairing of images.
* **retrain** (a judge fine-tuned per method and seed) — a two-level bootstrap: each resample draws the images
  with replacement (shared by both methods) *and*, for each method independently, its seeds with replacement;
  the statistic is ``mean over the drawn seeds of mAP(method) − mean over the drawn seeds of mAP(baseline)``, both
  on the resampled images. The percentile interval of that distribution is the CI. Seeds that disagree spread the
  seed means, so the interval widens with the seed spread; with one seed per method it is the image bootstrap.
  scipy's ``bootstrap`` resamples one axis of paired samples and has no nested resampling, hence this loop.

All resampling comes from ``numpy.random.default_rng(seed)`` with a fixed ``seed`` (:data:`BOOTSTRAP_SEED`), so a
rerun gives identical intervals, and every method is compared on the same image resamples.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats as _st

from ..tasks.evaluation import PreparedMatches

__all__ = [
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "N_RESAMPLES",
    "compare_to_baseline",
    "paired_mean_ci",
    "paired_map_ci",
    "seeded_map_ci",
    "per_image_ap50",
    "scene_masks",
    "scene_maps",
    "add_scene_maps",
]

BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
#: resamples per protocol: a fusion mean costs nothing, an mAP costs a few ms per resample and method
N_RESAMPLES = {"fusion": 10000, "zero": 1000, "retrain": 1000}


def _result(delta: float, lo: float, hi: float, n: int, how: str, n_resamples: int) -> dict:
    return {
        "delta": delta,
        "ci": [lo, hi],
        "excludes_zero": bool(lo > 0 or hi < 0),
        "n_images": n,
        "method": how,
        "n_resamples": n_resamples,
    }


def paired_mean_ci(
    a: Sequence[float],
    b: Sequence[float],
    n_resamples: int = N_RESAMPLES["fusion"],
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict:
    """CI of ``mean(a − b)`` over images (``a[i]``, ``b[i]`` the same image), BCa bootstrap of the differences.

    Returns ``{"delta", "ci": [lo, hi], "excludes_zero", "n_images", "method", "n_resamples"}``. Identical inputs
    give ``delta = 0`` and the interval ``[0, 0]``, which contains 0 (no resampling can make them differ)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if d.size == 0:
        return _result(math.nan, math.nan, math.nan, 0, "no finite pairs", 0)
    delta = float(d.mean())
    if d.size < 2 or np.all(d == d[0]):
        return _result(delta, delta, delta, int(d.size), "degenerate (all differences equal)", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (_st.DegenerateDataWarning, RuntimeWarning))
        r = _st.bootstrap(
            (d,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    lo, hi = float(r.confidence_interval.low), float(r.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # BCa undefined (e.g. a near-constant difference)
        lo, hi = (
            float(x) for x in np.percentile(r.bootstrap_distribution, [50 * (1 - confidence), 50 * (1 + confidence)])
        )
        return _result(delta, lo, hi, int(d.size), "scipy.stats.bootstrap, percentile (BCa undefined)", n_resamples)
    return _result(delta, lo, hi, int(d.size), "scipy.stats.bootstrap, BCa", n_resamples)


def _measure(ap: np.ndarray, measure: str) -> float:
    valid = ~np.isnan(ap[0])
    if not valid.any():
        return 0.0
    return float(ap[0, valid].mean() if measure == "mAP50" else ap[:, valid].mean())


def _measures(ap: np.ndarray, measure: str) -> np.ndarray:
    """:func:`_measure` of each ``T×K`` slice of ``B×T×K``."""
    return np.array([_measure(x, measure) for x in ap])


def _check_measure(measure: str) -> None:
    if measure not in ("mAP50", "mAP50_95"):
        raise ValueError(f"measure must be mAP50 or mAP50_95, got {measure!r}")


def paired_map_ci(
    a: PreparedMatches,
    b: PreparedMatches,
    measure: str = "mAP50",
    n_resamples: int = N_RESAMPLES["zero"],
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict:
    """CI of ``mAP(a) − mAP(b)`` on the same judged images: images resampled with replacement, both mAPs
    recomputed on each resample (BCa, :func:`scipy.stats.bootstrap` over image indices)."""
    _check_measure(measure)
    n = a.n_gt.shape[0]
    if b.n_gt.shape[0] != n or not np.array_equal(a.n_gt, b.n_gt):
        raise ValueError("the two match sets are not on the same images and ground truth")

    def stat(idx: np.ndarray, axis: int = -1) -> np.ndarray | float:
        rows = np.atleast_2d(idx).astype(np.int64)  # resamples × n image indices
        w = np.zeros((rows.shape[0], n))
        np.add.at(w, (np.arange(rows.shape[0])[:, None], rows), 1.0)
        d = _measures(a.ap_batch(w), measure) - _measures(b.ap_batch(w), measure)
        return float(d[0]) if idx.ndim == 1 else d

    delta = stat(np.arange(n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (_st.DegenerateDataWarning, RuntimeWarning))
        r = _st.bootstrap(
            (np.arange(n),),
            stat,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="BCa",
            vectorized=True,
            batch=256,
            rng=np.random.default_rng(seed),
        )
    dist = np.asarray(r.bootstrap_distribution)
    if np.all(dist == dist[0]):
        return _result(delta, float(dist[0]), float(dist[0]), n, "degenerate (every resample equal)", n_resamples)
    lo, hi = float(r.confidence_interval.low), float(r.confidence_interval.high)
    how = "scipy.stats.bootstrap over images, BCa"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = (float(x) for x in np.percentile(dist, [50 * (1 - confidence), 50 * (1 + confidence)]))
        how = "scipy.stats.bootstrap over images, percentile (BCa undefined)"
    return _result(delta, lo, hi, n, how, n_resamples)


def _image_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """``n_resamples × n`` image counts of the resamples (the same for every comparison of a run)."""
    idx = np.random.default_rng(seed).integers(0, n, (n_resamples, n))
    return np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)


def _resampled(p: PreparedMatches, weights: np.ndarray, key: tuple, measures: Sequence[str]) -> dict[str, np.ndarray]:
    """``{measure: value per resample}`` of one match set, cached on it (a baseline is compared with every method)."""
    cache = p.__dict__.setdefault("_resampled", {})
    if key not in cache:
        aps = p.ap_batch(weights)
        cache[key] = {m: _measures(aps, m) for m in ("mAP50", "mAP50_95")}
    return {m: cache[key][m] for m in measures}


def seeded_map_ci(
    a: Sequence[PreparedMatches],
    b: Sequence[PreparedMatches],
    measures: Sequence[str] = ("mAP50",),
    n_resamples: int = N_RESAMPLES["retrain"],
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, dict]:
    """CI of ``mean_s mAP(a_s) − mean_s mAP(b_s)`` for judges fine-tuned with several seeds (two-level bootstrap:
    images shared by both sides, seeds drawn per side; percentile interval). Returns ``{measure: result}``.

    The image resamples come from ``default_rng(seed)`` and the seed draws from ``default_rng([seed, 1])``, so every
    comparison of a run sees the same image resamples (and each match set's mAP on them is computed once)."""
    for m in measures:
        _check_measure(m)
    if not a or not b:
        raise ValueError("each side needs at least one seed")
    n = a[0].n_gt.shape[0]
    if any(x.n_gt.shape[0] != n or not np.array_equal(x.n_gt, a[0].n_gt) for x in (*a, *b)):
        raise ValueError("the match sets are not on the same images and ground truth")
    weights = _image_weights(n, n_resamples, seed)
    key = (n, n_resamples, seed)
    va = [_resampled(x, weights, key, measures) for x in a]  # per seed: {measure: B values}
    vb = [_resampled(x, weights, key, measures) for x in b]
    seeds = np.random.default_rng([seed, 1])
    sa = seeds.integers(0, len(a), (n_resamples, len(a)))
    sb = seeds.integers(0, len(b), (n_resamples, len(b)))
    rows = np.arange(n_resamples)[:, None]
    how = f"two-level bootstrap (images shared, {len(a)} vs {len(b)} seeds drawn per side), percentile"
    out = {}
    for m in measures:
        A, B = np.stack([v[m] for v in va], 1), np.stack([v[m] for v in vb], 1)  # resamples × seeds
        dist = A[rows, sa].mean(1) - B[rows, sb].mean(1)
        full = float(np.mean([_measure(x.ap(), m) for x in a]) - np.mean([_measure(x.ap(), m) for x in b]))
        lo, hi = (float(x) for x in np.percentile(dist, [50 * (1 - confidence), 50 * (1 + confidence)]))
        out[m] = _result(full, lo, hi, n, how, n_resamples)
        out[m]["n_seeds"] = [len(a), len(b)]
    return out


def per_image_ap50(p: PreparedMatches) -> list[float | None]:
    """AP50 of each image on its own (mean over the classes it has ground truth of; ``None`` for an image with
    none) — for the paired per-image plots, not for ranking (a single image's AP is coarse)."""
    ap50 = p.ap_batch(np.eye(p.n_gt.shape[0]))[:, 0]  # N×K
    return [float(np.nanmean(x)) if np.isfinite(x).any() else None for x in ap50]


def compare_to_baseline(
    entry: dict, matches: dict[str, dict[str, list]], baseline: str, metrics: Sequence[str], progress: bool = False
) -> dict:
    """Paired CIs of every row against ``baseline`` for one dataset of the bench: fusion metrics per image,
    zero-shot mAP, retrain mAP over seeds and images. Writes ``entry[protocol][method]["vs_baseline"]`` (and
    per-image AP50 under ``entry[protocol][method]["per_image_AP50"]``, mean over seeds) and returns the run's
    settings ``{"baseline", "confidence", "seed", "n_resamples", "how"}``.

    ``matches``: ``{"zero"|"retrain": {method: [encoded matches, one per seed]}}`` as the protocols returned them.
    """
    from tqdm.auto import tqdm

    from ..tasks.evaluation import decode_matches

    info = {
        "baseline": baseline,
        "confidence": CONFIDENCE,
        "seed": BOOTSTRAP_SEED,
        "n_resamples": dict(N_RESAMPLES),
        "how": {
            "fusion": "mean of per-image differences; scipy.stats.bootstrap BCa over images",
            "zero": "paired image bootstrap of the mAP difference (both mAPs recomputed per resample); "
            "scipy.stats.bootstrap BCa",
            "retrain": "two-level bootstrap: images resampled (shared), seeds resampled per method; "
            "percentile interval of mean-over-seeds mAP(method) - mAP(baseline)",
        },
    }
    fus = entry.get("fusion", {})
    if baseline in fus:
        base = fus[baseline]["per_image"]
        for m, r in fus.items():
            if m == baseline:
                continue
            names = [n for n in base if n in r["per_image"]]
            r["vs_baseline"] = {
                k: paired_mean_ci([r["per_image"][n][k] for n in names], [base[n][k] for n in names]) for k in metrics
            }
    for proto in ("zero", "retrain"):
        sets = {m: [PreparedMatches(decode_matches(x)) for x in xs] for m, xs in matches.get(proto, {}).items()}
        if not sets:
            continue
        for m, ps in sets.items():
            per = np.array([[np.nan if v is None else v for v in per_image_ap50(p)] for p in ps], dtype=np.float64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: images without ground truth
                col = np.nanmean(per, axis=0)
            entry[proto][m]["per_image_AP50"] = [None if not math.isfinite(v) else float(v) for v in col]
        if baseline not in sets:
            continue
        todo = [m for m in sets if m != baseline]
        for m in tqdm(todo, desc=f"bootstrap[{proto}]", unit="method", disable=not progress or not todo):
            if proto == "zero":
                entry[proto][m]["vs_baseline"] = {
                    k: paired_map_ci(sets[m][0], sets[baseline][0], k) for k in ("mAP50", "mAP50_95")
                }
            else:
                entry[proto][m]["vs_baseline"] = seeded_map_ci(sets[m], sets[baseline], ("mAP50", "mAP50_95"))
    return info


def scene_masks(names: Sequence[str]) -> dict[str, np.ndarray]:
    """``{"day": bool mask, "night": bool mask}`` over ``names`` for MSRS-style pair names, whose last character
    is ``D`` (day) or ``N`` (night) (``00004N``, ``00633D``); ``{}`` when any name does not follow that rule or one
    scene is absent (no per-scene breakdown then)."""
    last = [str(n)[-1:].upper() for n in names]
    if not names or any(c not in ("D", "N") for c in last):
        return {}
    day = np.array([c == "D" for c in last])
    return {"day": day, "night": ~day} if day.any() and (~day).any() else {}


def scene_maps(ps: Sequence[PreparedMatches], class_names: Sequence[str], masks: dict[str, np.ndarray]) -> dict:
    """Per scene: ``{"n_images", "mAP50", "mAP50_95", "per_class_AP50": {class: AP50}}``, each the mean over the
    seeds' matches ``ps`` (one for zero-shot), computed exactly as COCOeval on the scene's images alone (the other
    images weighted 0, :meth:`PreparedMatches.ap_batch`)."""
    out = {}
    for scene, m in masks.items():
        w = m.astype(np.float64)[None]
        aps = [p.ap_batch(w)[0] for p in ps]  # T×K each
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from the scene: NaN
            pc = np.nanmean([a[0] for a in aps], axis=0)
        out[scene] = {
            "n_images": int(m.sum()),
            "mAP50": float(np.mean([_measure(a, "mAP50") for a in aps])),
            "mAP50_95": float(np.mean([_measure(a, "mAP50_95") for a in aps])),
            "per_class_AP50": {c: (float(v) if math.isfinite(v) else None) for c, v in zip(class_names, pc)},
        }
    return out


def add_scene_maps(entry: dict, matches: dict[str, dict[str, list]]) -> bool:
    """Write ``entry[protocol][method]["by_scene"]`` (day / night, :func:`scene_maps`) for the zero and retrain rows
    of one dataset of the bench when its pair names carry the scene (:func:`scene_masks`); returns whether they did."""
    from ..tasks.evaluation import decode_matches

    masks = scene_masks(entry.get("names", []))
    if not masks:
        return False
    for proto in ("zero", "retrain"):
        for m, xs in matches.get(proto, {}).items():
            ps = [PreparedMatches(decode_matches(x)) for x in xs]
            entry[proto][m]["by_scene"] = scene_maps(ps, entry.get("class_names", []), masks)
    return True

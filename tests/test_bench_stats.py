"""Paired significance of the bench (ivfuse.bench.stats) and the resampled mAP it rests on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ivfuse.bench.stats import paired_map_ci, paired_mean_ci, per_image_ap50, seeded_map_ci
from ivfuse.data.labels import Boxes
from ivfuse.tasks.evaluation import PreparedMatches, detection_map, map_from_matches
from ivfuse.tasks.yolov5 import Detections

NAMES = ("person", "bicycle", "car")


def _gt(xyxy, labels):
    return Boxes(torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64), NAMES)


def _det(xyxy, scores, labels):
    return Detections(
        torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels, dtype=torch.int64),
    )


def _random_set(seed: int, n: int = 12, quality: float = 1.0):
    """``n`` images with 0-4 objects each and detections: jittered true boxes (``quality`` = fraction kept) plus
    random false positives; scores continuous (no ties)."""
    g = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(n):
        k = int(g.integers(0, 5))
        xy = g.uniform(0, 300, (k, 2))
        wh = g.uniform(20, 80, (k, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = g.integers(0, 3, k)
        gts.append(_gt(boxes, labels))
        keep = g.uniform(size=k) < quality
        jit = boxes[keep] + g.normal(0, 6, (int(keep.sum()), 4))
        fp_n = int(g.integers(0, 4))
        fxy = g.uniform(0, 300, (fp_n, 2))
        fp = np.concatenate([fxy, fxy + g.uniform(20, 80, (fp_n, 2))], 1)
        allb = np.concatenate([jit, fp]) if len(jit) or len(fp) else np.zeros((0, 4))
        lab = np.concatenate([labels[keep], g.integers(0, 3, fp_n)]).astype(np.int64)
        sc = np.concatenate([g.uniform(0.5, 1.0, len(jit)), g.uniform(0.0, 0.7, fp_n)])
        dets.append(_det(allb, sc, lab))
    return dets, gts


def test_matches_reproduce_pycocotools_and_resamples():
    dets, gts = _random_set(0)
    r = detection_map(dets, gts, NAMES, matches=True)
    q = map_from_matches(r["matches"], class_names=NAMES)
    assert q["mAP50"] == pytest.approx(r["mAP50"], abs=1e-12)
    assert q["mAP50_95"] == pytest.approx(r["mAP50_95"], abs=1e-12)
    for c in NAMES:
        assert q["per_class"][c] == pytest.approx(r["per_class"][c]["AP50"], abs=1e-12)
    # a bootstrap resample (images drawn with replacement) equals COCOeval on the explicitly resampled list
    idx = np.random.default_rng(3).integers(0, len(dets), len(dets))
    w = np.bincount(idx, minlength=len(dets))
    ref = detection_map([dets[i] for i in idx], [gts[i] for i in idx], NAMES)
    got = map_from_matches(r["matches"], w)
    assert got["mAP50"] == pytest.approx(ref["mAP50"], abs=1e-12)
    assert got["mAP50_95"] == pytest.approx(ref["mAP50_95"], abs=1e-12)
    # batched weightings give the same as one at a time
    p = PreparedMatches(r["matches"])
    W = np.stack([w, np.ones(len(dets)), np.eye(len(dets))[2]])
    np.testing.assert_array_equal(p.ap_batch(W)[0], p.ap(w))


def test_hand_checked_ap_on_two_images():
    # image A: one person, found at 0.9; image B: one person, a false alarm at 0.8 then the hit at 0.7
    gts = [_gt([[0, 0, 10, 10]], [0]), _gt([[0, 0, 10, 10]], [0])]
    dets = [_det([[0, 0, 10, 10]], [0.9], [0]), _det([[50, 50, 60, 60], [0, 0, 10, 10]], [0.8, 0.7], [0, 0])]
    r = detection_map(dets, gts, NAMES, matches=True)
    # precision envelope 1 up to recall 0.5 (51 of the 101 recall points), then 2/3
    assert r["mAP50"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    m = r["matches"]
    assert map_from_matches(m)["mAP50"] == pytest.approx(r["mAP50"], abs=1e-12)
    assert map_from_matches(m, [2, 0])["mAP50"] == pytest.approx(1.0)  # {A, A}: every detection a hit
    assert map_from_matches(m, [0, 2])["mAP50"] == pytest.approx(0.5)  # {B, B}: the false alarm first
    assert map_from_matches(m, [0, 2])["mAP50"] == pytest.approx(
        detection_map(dets[1:] * 2, gts[1:] * 2, NAMES)["mAP50"]
    )
    assert per_image_ap50(PreparedMatches(m)) == pytest.approx([1.0, 0.5])


def test_identical_methods_contain_zero_and_a_better_one_excludes_it():
    dets, gts = _random_set(1, n=30)
    base = PreparedMatches(detection_map(dets, gts, NAMES, matches=True)["matches"])
    same = paired_map_ci(base, base)
    assert same["delta"] == 0 and same["ci"][0] <= 0 <= same["ci"][1] and not same["excludes_zero"]
    # a worse method: the same detections plus a confident false alarm in every image
    worse = [
        _det(
            torch.cat([d.xyxy, torch.tensor([[400.0, 400.0, 450.0, 450.0]])]).numpy(),
            torch.cat([d.scores, torch.tensor([0.99])]).numpy(),
            torch.cat([d.labels, torch.tensor([0])]).numpy(),
        )
        for d in dets
    ]
    bad = PreparedMatches(detection_map(worse, gts, NAMES, matches=True)["matches"])
    r = paired_map_ci(base, bad)
    assert r["delta"] > 0 and r["excludes_zero"] and r["ci"][0] > 0, r
    assert paired_map_ci(base, bad) == r  # fixed bootstrap seed: identical reruns


def test_fusion_mean_ci():
    g = np.random.default_rng(0)
    a = g.normal(5, 1, 50)
    assert paired_mean_ci(a, a)["ci"] == [0.0, 0.0]
    better = a + 0.3 + g.normal(0, 0.05, 50)  # better on every image
    r = paired_mean_ci(better, a)
    assert r["excludes_zero"] and r["ci"][0] > 0 and r["ci"][0] < r["delta"] < r["ci"][1]
    noise = a + g.normal(0, 1, 50)
    assert paired_mean_ci(noise - noise.mean() + a.mean(), a)["excludes_zero"] is False
    with pytest.raises(ValueError):
        paired_mean_ci(a, a[:-1])


def test_retrain_ci_widens_when_seeds_disagree():
    dets, gts = _random_set(2, n=30)
    mk = lambda d: PreparedMatches(detection_map(d, gts, NAMES, matches=True)["matches"])  # noqa: E731
    base = mk(dets)
    # three seeds of a judge that agree, and three that disagree (one good, one poor) around a similar mean
    mid = mk(_random_set(2, n=30, quality=0.8)[0])
    good, poor = mk(_random_set(2, n=30, quality=1.0)[0]), mk(_random_set(2, n=30, quality=0.5)[0])
    agree = seeded_map_ci([mid, mid, mid], [base, base, base])["mAP50"]
    disagree = seeded_map_ci([good, poor, mid], [base, base, base])["mAP50"]
    width = lambda r: r["ci"][1] - r["ci"][0]  # noqa: E731
    assert width(disagree) > 1.2 * width(agree), (agree, disagree)
    assert agree["n_seeds"] == [3, 3]
    one = seeded_map_ci([mid], [base])["mAP50"]
    assert one["delta"] == pytest.approx(agree["delta"])  # the same judge three times is one judge
    assert seeded_map_ci([good, poor, mid], [base, base, base])["mAP50"] == disagree  # reproducible


def test_scene_maps_equal_cocoeval_on_each_scene_alone():
    """The day / night breakdown of the bench: each scene's mAP (and per-class AP50) from the cached matches equals
    COCOeval run on that scene's images alone; the mean over seeds is the mean of the seeds' values; names that do
    not carry a scene give no breakdown."""
    from ivfuse.bench.stats import add_scene_maps, scene_maps, scene_masks
    from ivfuse.tasks.evaluation import encode_matches

    dets, gts = _random_set(5, n=16)
    names = [f"{i:05d}{'D' if i % 3 else 'N'}" for i in range(16)]
    masks = scene_masks(names)
    assert set(masks) == {"day", "night"} and int(masks["night"].sum()) == 6
    assert scene_masks(names[:-1] + ["FLIR_0001"]) == {} and scene_masks([n for n in names if n.endswith("D")]) == {}
    p = PreparedMatches(detection_map(dets, gts, NAMES, matches=True)["matches"])
    got = scene_maps([p], NAMES, masks)
    for sc, m in masks.items():
        idx = np.flatnonzero(m)
        ref = detection_map([dets[i] for i in idx], [gts[i] for i in idx], NAMES)
        assert got[sc]["n_images"] == len(idx)
        assert got[sc]["mAP50"] == pytest.approx(ref["mAP50"], abs=1e-12)
        assert got[sc]["mAP50_95"] == pytest.approx(ref["mAP50_95"], abs=1e-12)
        for c in NAMES:
            assert got[sc]["per_class_AP50"][c] == pytest.approx(ref["per_class"][c]["AP50"], abs=1e-12)
    assert got["day"]["mAP50"] != got["night"]["mAP50"]
    dets2, _ = _random_set(6, n=16, quality=0.6)  # a second "seed": other detections of the same ground truth
    dets2 = [d if i % 2 else dets[i] for i, d in enumerate(dets2)]
    r1, r2 = (detection_map(d, gts, NAMES, matches=True)["matches"] for d in (dets, dets2))
    two = scene_maps([PreparedMatches(r1), PreparedMatches(r2)], NAMES, masks)
    one2 = scene_maps([PreparedMatches(r2)], NAMES, masks)
    assert two["night"]["mAP50"] == pytest.approx((got["night"]["mAP50"] + one2["night"]["mAP50"]) / 2, abs=1e-12)
    entry = {"names": names, "class_names": list(NAMES), "zero": {"a": {}}, "retrain": {"a": {}}}
    assert add_scene_maps(
        entry, {"zero": {"a": [encode_matches(r1)]}, "retrain": {"a": [encode_matches(r1), encode_matches(r2)]}}
    )
    assert entry["zero"]["a"]["by_scene"]["day"]["mAP50"] == pytest.approx(got["day"]["mAP50"], abs=1e-12)
    assert entry["retrain"]["a"]["by_scene"]["night"]["mAP50"] == pytest.approx(two["night"]["mAP50"], abs=1e-12)

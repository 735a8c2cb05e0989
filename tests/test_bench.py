"""``ivfuse bench``: cache keys, ranking tables, a tiny real bench (fusion, zero, retrain) with cache reuse, and the
HTML report rendered in headless Chromium."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ivfuse.bench import PRESETS, parse_data
from ivfuse.bench.cache import code_hash, method_key, state_hash
from ivfuse.bench.protocols import SourceImage
from ivfuse.bench.report import tables
from ivfuse.cli import main
from ivfuse.errors import InputError

from conftest import need

CHROMIUM = Path("/usr/bin/chromium")


# ------------------------------------------------------------------------------------------------ fast
def test_state_hash_follows_the_weights():
    torch.manual_seed(0)
    a = torch.nn.Conv2d(1, 2, 3)
    b = copy.deepcopy(a)
    assert state_hash(a) == state_hash(b)
    with torch.no_grad():
        b.weight[0, 0, 0, 0] += 1e-6
    assert state_hash(a) != state_hash(b)
    assert state_hash(torch.nn.ReLU()) is None  # nothing to hash: name + options decide
    k1, _ = method_key("laplacian", {"levels": 4}, torch.nn.ReLU())
    k2, _ = method_key("laplacian", {"levels": 5}, torch.nn.ReLU())
    k3, ident = method_key("conv", {}, a)
    assert k1 != k2 and k1.startswith("laplacian-") and len(k1) == len("laplacian-") + 12
    assert ident["weights_sha256"] == state_hash(a) and ident["code_sha256"]


def _hash_of_module_file(path: Path, text: str, monkeypatch) -> str:
    """``code_hash`` of an instance of the class ``Net`` defined by ``text``, written to ``path`` and imported."""
    import importlib.util
    import sys

    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"codehash_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    return code_hash(mod.Net())


def test_code_hash_follows_the_code_not_its_layout(tmp_path, monkeypatch):
    base = '''"""A module."""
import torch


class Net(torch.nn.Module):
    """A net."""

    def forward(self, x):
        return x * 2 + 1
'''
    reformatted = '''"""The same module, documented differently."""
import torch
class Net(torch.nn.Module):
    """Another docstring."""
    def forward(self, x):  # a comment
        """Doubles and adds one."""
        return (x * 2
                + 1)
'''
    changed = base.replace("+ 1", "+ 2")
    h = _hash_of_module_file(tmp_path / "a.py", base, monkeypatch)
    assert h is not None and h == _hash_of_module_file(tmp_path / "b.py", reformatted, monkeypatch)
    assert h != _hash_of_module_file(tmp_path / "c.py", changed, monkeypatch)
    assert code_hash(torch.nn.ReLU()) is not None  # a library class: its own file


def test_code_hash_follows_the_helpers_a_network_imports_from_its_package(tmp_path, monkeypatch):
    """An edit of a helper module the network's file imports from its own package (``from .helper import …``; for
    ivfuse's networks ``models/base.py``, ``models/_fused.py``) changes the key; its docstrings do not; import cycles
    end."""
    import importlib
    import sys

    pkg = tmp_path / "codehash_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text('"""Helper."""\nfrom . import net  # a cycle back\n\n\ndef k():\n    return 2\n')
    (pkg / "net.py").write_text(
        "import torch\nfrom .helper import k\n\n\nclass Net(torch.nn.Module):\n"
        "    def forward(self, x):\n        return x * k()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("codehash_pkg", "codehash_pkg.net", "codehash_pkg.helper"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    net = importlib.import_module("codehash_pkg.net").Net()
    h = code_hash(net)
    helper = (pkg / "helper.py").read_text()
    (pkg / "helper.py").write_text(helper.replace('"""Helper."""', '"""Another docstring."""'))
    assert code_hash(net) == h
    (pkg / "helper.py").write_text(helper.replace("return 2", "return 3"))
    assert code_hash(net) != h


def test_parse_data_splits_and_aliases():
    d = parse_data("msrs:val")
    assert (d.name, d.split, d.train_split) == ("msrs", "dev-val", "dev-train")
    assert parse_data("msrs").split == "dev-val"
    t = parse_data("tno")
    assert (t.split, t.train_split) == ("all", None)
    with pytest.raises(InputError, match="no split 'nope'"):
        parse_data("msrs:nope")


def test_reference_inputs_return_the_sources():
    ir, vis = torch.rand(1, 1, 8, 9), torch.rand(1, 3, 8, 9)
    assert torch.equal(SourceImage("ir")(ir, vis), ir)
    assert torch.equal(SourceImage("vis")(ir, vis), vis)
    with pytest.raises(InputError):
        SourceImage("fused")


def test_presets_are_the_documented_recipes():
    g = PRESETS["gpu"]
    assert (g.epochs, g.batch_size, g.lr, g.imgsz, g.train_pairs) == (8, 8, 0.005, 640, None)
    c = PRESETS["cpu"]
    assert c.imgsz <= 416 and c.epochs <= 5


def test_cli_rejects_unknown_protocol(tmp_path, capsys):
    rc = main(
        ["bench", "--methods", "average", "--data", "tno", "--protocols", "fusion,bogus", "--out", str(tmp_path / "b")]
    )
    assert rc == 2
    assert "unknown protocol(s) bogus" in capsys.readouterr().err
    rc = main(["bench", "--methods", "average", "--data", "tno", "--device", "gpu", "--out", str(tmp_path / "b")])
    assert rc == 2 and "--device gpu: not a torch device" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # nothing written on bad input


def _fake_results() -> dict:
    def fus(en, nabf):
        return {"mean": {"en": en, "nabf": nabf}, "per_image": {"a": {"en": en, "nabf": nabf}}, "n_images": 1}

    det = lambda m50, m95: {  # noqa: E731
        "mAP50": m50,
        "mAP50_95": m95,
        "per_class": {"person": {"AP50": m50, "AP50_95": m95, "n_gt": 3}},
        "n_images": 1,
    }
    return {
        "meta": {
            "methods": ["ir", "vis", "m1", "m2"],
            "references": ["ir", "vis"],
            "metrics": ["en", "nabf"],
            "judge": "yolov5n",
            "seeds": 1,
            "preset": "cpu",
            "recipe": PRESETS["cpu"].as_dict(),
        },
        "datasets": {
            "d:all": {
                "n_pairs": 1,
                "labels": "infrared",
                "class_names": ["person"],
                "train_split": None,
                "n_train": 0,
                "skipped": {},
                "fusion": {"ir": fus(9.0, 0.0), "vis": fus(9.5, 0.0), "m1": fus(6.0, 0.2), "m2": fus(7.0, 0.1)},
                "zero": {"ir": det(0.9, 0.5), "vis": det(0.1, 0.05), "m1": det(0.4, 0.3), "m2": det(0.5, 0.2)},
                "retrain": {},
                "seg": {},
                "speed": {},
            }
        },
    }


def test_ranking_marks_best_fusion_method_not_references():
    ((_, tabs),) = tables(_fake_results())
    fusion, zero = tabs
    rows = {r["method"]: r for r in fusion["rows"]}
    # m2 wins en (higher better) and nabf (lower better); references (higher en) are not ranked
    assert [r["method"] for r in fusion["rows"]] == ["m2", "m1", "ir", "vis"]
    assert rows["m2"]["best"][:2] == [True, True] and not any(rows["ir"]["best"]) and rows["ir"]["ref"]
    assert rows["m2"]["cells"][-1] == "1.00" and rows["m1"]["cells"][-1] == "2.00"  # mean rank
    zrows = {r["method"]: r for r in zero["rows"]}
    assert [r["method"] for r in zero["rows"]][:2] == ["m1", "m2"]  # ranked by mAP50:95
    assert zrows["m2"]["best"] == [True, False, True] and zrows["m1"]["best"] == [False, True, False]


# ------------------------------------------------------------------------------------------------ real bench
ARGS = dict(
    data="msrs:dev-val",
    protocols="fusion,zero,retrain",
    limit=4,
    train_limit=4,
    epochs=1,
    imgsz=160,
    batch_size=4,
    progress=False,
    grid_pairs=2,
)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    need("data/MSRS/labels_det/infrared")
    need("weights")
    from ivfuse.bench import run_bench

    out = tmp_path_factory.mktemp("bench") / "out"
    first = run_bench("average,gff", out=out, **ARGS)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cache" / "fused").rglob("*.png")}
    second = run_bench("average,gff", out=out, **ARGS)
    return out, first, second, stamps


@pytest.mark.realdata
@pytest.mark.slow
def test_bench_results_files(bench_run):
    out, res, _, _ = bench_run
    for f in ("results.json", "results.csv", "results.md", "report.html"):
        assert (out / f).is_file(), f
    strict = json.loads(
        (out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")
    )
    e = strict["datasets"]["msrs:dev-val"]
    assert res["meta"]["methods"] == ["ir", "vis", "average", "gff"] and res["meta"]["references"] == ["ir", "vis"]
    assert e["n_pairs"] == 4 and e["n_train"] == 4 and e["labels"] == "infrared"
    assert "seg" in e["skipped"]  # the shared MSRS copy has no segmentation masks
    for m in ("ir", "vis", "average", "gff"):
        assert set(e["fusion"][m]["per_image"]) == set(e["names"])
        assert 0 <= e["zero"][m]["mAP50_95"] <= e["zero"][m]["mAP50"] <= 1
        assert set(e["zero"][m]["per_class"]) == {"person", "bicycle", "car"}
        run = e["retrain"][m]["seeds"][0]
        assert run["n_train"] == 4 and len(run["loss_per_epoch"]) == 1 and math.isfinite(run["loss_per_epoch"][0])
    assert set(e["speed"]) == {"average", "gff"} and all(
        s["s_per_image"] > 0 and s["params"] == 0 for s in e["speed"].values()
    )
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert csv_rows[0] == "dataset,protocol,method,measure,value,std,n"
    for proto in ("fusion", "zero", "retrain", "speed"):
        assert any(r.startswith(f"msrs:dev-val,{proto},gff,") for r in csv_rows), proto
    md = (out / "results.md").read_text()
    assert "zero: frozen yolov5n" in md and "retrain: yolov5n fine-tuned" in md and "| *ir* (reference) |" in md
    # day / night rows (issue 20): the 4 judged pairs are 3 night + 1 day (MSRS names end in N / D)
    assert e["scenes"] is True and "by scene" in md and "mAP50 night (3)" in md and "mAP50 day (1)" in md
    for proto in ("zero", "retrain"):
        b = e[proto]["ir"]["by_scene"]
        assert (b["night"]["n_images"], b["day"]["n_images"]) == (3, 1)
        assert all(0 <= b[s]["mAP50_95"] <= b[s]["mAP50"] <= 1 for s in b)


@pytest.mark.realdata
@pytest.mark.slow
def test_bench_rows_are_what_they_claim(bench_run, tmp_path):
    """The cached fused images are the method's output, the fusion scores are the metrics of those files, and the
    ``ir`` reference row of ``zero`` is the frozen judge on the raw infrared images."""
    import ivfuse
    from ivfuse.data.images import read_gray_u8
    from ivfuse.evaluate import score_triple
    from ivfuse.tasks import create_detector
    from ivfuse.tasks.downstream import DetectionSet, evaluate_detector

    out, res, _, _ = bench_run
    e = res["datasets"]["msrs:dev-val"]
    ds = ivfuse.load_dataset("msrs", split="dev-val", det_labels="infrared")
    pairs = {n: (ip, vp) for n, ip, vp in ds.pairs}
    name = e["names"][0]
    ip, vp = pairs[name]
    ivfuse.fuse_files(ip, vp, tmp_path / "gff.png", method="gff")
    cached = Path(e["fused_dirs"]["gff"]) / f"{name}.png"
    assert np.array_equal(np.asarray(Image.open(cached)), np.asarray(Image.open(tmp_path / "gff.png")))
    assert np.array_equal(read_gray_u8(Path(e["fused_dirs"]["ir"]) / f"{name}.png"), read_gray_u8(ip))
    direct = score_triple(str(cached), str(ip), str(vp), res["meta"]["metrics"])
    assert e["fusion"]["gff"]["per_image"][name] == pytest.approx(direct, rel=1e-12, nan_ok=True)
    boxes = []
    for n in e["names"]:
        with Image.open(pairs[n][0]) as im:
            boxes.append(ds.read_boxes(n, *im.size))
    raw_ir = DetectionSet(e["names"], [pairs[n][0] for n in e["names"]], boxes, tuple(ds.class_names))
    ref = evaluate_detector(create_detector("yolov5n"), raw_ir, progress=False)
    assert e["zero"]["ir"]["mAP50"] == pytest.approx(ref["mAP50"], abs=1e-9)
    assert e["zero"]["ir"]["mAP50_95"] == pytest.approx(ref["mAP50_95"], abs=1e-9)
    # never trained on the judged images
    judged_dir = Path(e["fused_dirs"]["gff"]).parent  # cache/fused/<data key>/<method key>
    train_names = {p.stem for d in (out / "cache" / "fused").iterdir() if d != judged_dir for p in d.rglob("*.png")}
    assert train_names and not train_names & set(e["names"])


@pytest.mark.realdata
@pytest.mark.slow
def test_bench_rerun_reuses_the_cache(bench_run):
    out, first, second, stamps = bench_run
    c = second["meta"]["cache"]
    assert c["result_misses"] == 0 and c["fused_written"] == 0 and c["result_hits"] > 0
    assert first["meta"]["cache"]["result_misses"] == c["result_hits"]
    assert {p: p.stat().st_mtime_ns for p in (out / "cache" / "fused").rglob("*.png")} == stamps
    a, b = first["datasets"]["msrs:dev-val"], second["datasets"]["msrs:dev-val"]
    for proto in ("fusion", "zero", "retrain", "speed"):
        assert json.dumps(a[proto], sort_keys=True) == json.dumps(b[proto], sort_keys=True), proto  # NaN-safe


@pytest.mark.realdata
@pytest.mark.slow
def test_bench_adds_a_method_computing_only_it(bench_run, tmp_path):
    from ivfuse.bench import run_bench

    out, _, _, _ = bench_run
    copy_ = tmp_path / "out"
    shutil.copytree(out, copy_)
    res = run_bench("average,gff,max", out=copy_, **ARGS)
    c = res["meta"]["cache"]
    assert c["result_misses"] == 4  # max: fusion, speed, zero, retrain (seed 0)
    assert c["fused_written"] == 4 + 4  # its judged and training pairs
    assert "max" in res["datasets"]["msrs:dev-val"]["retrain"]


# ------------------------------------------------------------------------------------------------ browser
@pytest.mark.realdata
@pytest.mark.slow
def test_report_renders_in_chromium_without_broken_images(bench_run, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (Debian package 'chromium')")
    out, _, _, _ = bench_run
    report = out / "report.html"
    page = report.read_text()
    srcs = re.findall(r"<img [^>]*src='([^']+)'", page)
    assert len(srcs) >= 4 + 2 * 2 * 4  # 4 plots, 2 pairs x (IR, VIS, 2 methods) x (full, zoom)
    for s in srcs:  # every image exists and decodes
        with Image.open(out / s) as im:
            im.load()
            assert im.size[0] > 10
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=20000",
    ]
    dom = subprocess.run(
        [str(CHROMIUM), *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=180
    ).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, "chromium returned no DOM"
    attrs = dict(re.findall(r'(data-[a-z]+)="([^"]*)"', body.group(1)))
    assert attrs.get("data-checked") == "yes", "the page's load handler did not run"
    assert int(attrs["data-images"]) == len(srcs)
    assert json.loads(attrs["data-broken"].replace("&quot;", '"')) == []
    shot = tmp_path / "report.png"
    subprocess.run(
        [str(CHROMIUM), *flags, "--window-size=1400,2000", f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=180,
    )
    arr = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert arr.shape == (2000, 1400) and arr.std() > 10  # a rendered page, not a blank one


@pytest.mark.realdata
@pytest.mark.slow
def test_bench_seg_protocol_on_a_masked_layout(tmp_path, monkeypatch):
    """``seg`` where masks exist: an official-layout MSRS copy (train/test folders with Segmentation_labels) of four
    real pairs whose masks mark the hot IR pixels as class 2 ("person"); ESPNetv2 is fine-tuned on the fused train
    pairs and scored on the fused test pairs. The reported numbers are recomputed here, independently: the fine-tuned
    segmenter's predictions on each method's fused test images against the masks written above (numpy counts), so
    they are the IoUs of *these* masks and images, not merely numbers in [0, 1]."""
    from ivfuse.bench import run_bench
    from ivfuse.data.images import read_gray_u8, read_vis
    from ivfuse.tasks import downstream

    judged = []  # (fine-tuned segmenter, its test set, the scores it got) per method
    evaluate = downstream.evaluate_segmenter

    def spy(segmenter, data, *a, **kw):
        out = evaluate(segmenter, data, *a, **kw)
        judged.append((copy.deepcopy(segmenter).eval(), data, out))
        return out

    src = need("data/MSRS")
    need("weights")
    names = sorted(p.stem for p in (src / "ir").glob("*.png"))[:4]
    root = tmp_path / "MSRS"
    for split, part in (("train", names[:2]), ("test", names[2:])):
        for sub in ("ir", "vi", "Segmentation_labels"):
            (root / split / sub).mkdir(parents=True)
        for n in part:
            shutil.copy(src / "ir" / f"{n}.png", root / split / "ir" / f"{n}.png")
            shutil.copy(src / "vi" / f"{n}.png", root / split / "vi" / f"{n}.png")
            ir = read_gray_u8(src / "ir" / f"{n}.png")
            Image.fromarray(np.where(ir > np.percentile(ir, 90), 2, 0).astype(np.uint8)).save(
                root / split / "Segmentation_labels" / f"{n}.png"
            )
    monkeypatch.setattr(downstream, "evaluate_segmenter", spy)
    res = run_bench(
        "average",
        f"msrs:test@{root}",
        protocols="fusion,seg",
        out=tmp_path / "out",
        progress=False,
        speed=False,
        seg_epochs=1,
        seg_crop=128,
    )
    e = res["datasets"]["msrs:test"]
    assert "seg" not in e["skipped"] and e["train_split"] == "train" and e["n_train"] == 2
    assert len(judged) == 3  # one fine-tuned judge per method (ir, vis, average)
    gt = {
        n: np.where(
            read_gray_u8(src / "ir" / f"{n}.png") > np.percentile(read_gray_u8(src / "ir" / f"{n}.png"), 90), 2, 0
        )
        for n in names[2:]
    }
    for seg, data, out in judged:
        assert sorted(data.names) == names[2:]  # scored on the test split's pairs only
        tp, pred_n, gt_n, correct = np.zeros(9), np.zeros(9), np.zeros(9), 0
        for n, ip in zip(data.names, data.images):
            with torch.no_grad():
                pred = seg(read_vis(ip)[None]).argmax(1)[0].numpy()
            g = gt[n]
            assert pred.shape == g.shape
            for c in range(9):
                tp[c] += ((pred == c) & (g == c)).sum()
                pred_n[c] += (pred == c).sum()
                gt_n[c] += (g == c).sum()
            correct += (pred == g).sum()
        union = pred_n + gt_n - tp
        iou = {c: tp[c] / union[c] for c in range(9) if union[c] > 0}
        assert out["mIoU"] == pytest.approx(float(np.mean(list(iou.values()))), abs=1e-12)
        assert out["pixel_acc"] == pytest.approx(correct / gt_n.sum(), abs=1e-12)
        assert out["per_class"]["person"] == pytest.approx(iou[2], abs=1e-12)  # class 2 is in the masks: scored
        assert gt_n[2] > 0.05 * gt_n.sum()
    by_method = {m: e["seg"][m] for m in ("ir", "vis", "average")}
    assert sorted(round(r["mIoU"], 12) for r in by_method.values()) == sorted(round(o["mIoU"], 12) for *_, o in judged)
    for m, r in by_method.items():
        run = r["seeds"][0]
        assert run["n_images"] == 2 and len(run["loss_per_epoch"]) == 1 and math.isfinite(run["loss_per_epoch"][0])
    assert "seg: ESPNetv2 fine-tuned" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.realdata
@pytest.mark.slow
def test_bench_seg_protocol_with_a_pseudo_mask_folder(tmp_path):
    """``seg_masks=DIR`` (``--seg-masks``): the shared MSRS copy has no masks, a folder of ``<pair>.png`` class maps
    stands in for both splits; the masks' content is part of the cache key, and a missing mask or folder is named."""
    from ivfuse.bench import run_bench
    from ivfuse.data import load_dataset
    from ivfuse.data.images import read_gray_u8

    need("data/MSRS")
    need("weights")
    masks = tmp_path / "masks"
    masks.mkdir()
    pairs = [p for split in ("dev-train", "dev-val") for p in sorted(load_dataset("msrs", split=split).pairs)[:2]]
    for n, ip, _ in pairs:
        ir = read_gray_u8(ip)
        Image.fromarray(np.where(ir > np.percentile(ir, 90), 2, 0).astype(np.uint8)).save(masks / f"{n}.png")
    kw = dict(
        protocols="seg",
        out=tmp_path / "out",
        progress=False,
        speed=False,
        references=False,
        limit=2,
        train_limit=2,
        seg_epochs=1,
        seg_crop=128,
        seg_masks=masks,
    )
    res = run_bench("average", "msrs:dev-val", **kw)
    e = res["datasets"]["msrs:dev-val"]
    assert "seg" not in e["skipped"] and e["n_train"] == 2 and res["meta"]["seg_masks"] == str(masks)
    run = e["seg"]["average"]["seeds"][0]
    assert run["n_images"] == 2 and 0.0 <= e["seg"]["average"]["mIoU"] <= 1.0
    assert run["per_class"]["person"] is not None  # the hot pixels' class
    md = (tmp_path / "out" / "results.md").read_text()
    assert f"pseudo-masks {masks}" in md and "IoU person" in md
    assert res["meta"]["cache"]["result_misses"] == 1
    assert run_bench("average", "msrs:dev-val", **kw)["meta"]["cache"]["result_hits"] == 1
    # the Cityscapes network kept whole, its classes merged into MSRS' (TSJNet's guide), judged frozen
    res = run_bench("average", "msrs:dev-val", **{**kw, "seg_judge": "merged", "seg_epochs": 0})
    r = res["datasets"]["msrs:dev-val"]["seg"]["average"]
    assert res["meta"]["cache"]["result_misses"] == 1 and r["seeds"][0]["loss_per_epoch"] == [] and 0 <= r["mIoU"] <= 1
    assert "seg: ESPNetv2 (Cityscapes, classes merged) frozen" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(InputError, match="unknown seg judge 'city'"):
        run_bench("average", "msrs:dev-val", **{**kw, "seg_judge": "city"})
    # seg overrides leave the retrain results cached (their key holds the detection fields only)
    rk = {**kw, "protocols": "retrain", "epochs": 1, "imgsz": 160, "batch_size": 2}
    del rk["seg_epochs"], rk["seg_crop"], rk["seg_masks"]
    assert run_bench("average", "msrs:dev-val", **rk)["meta"]["cache"]["result_misses"] == 1
    again = run_bench("average", "msrs:dev-val", **{**rk, "seg_epochs": 0, "seg_lr": 0.01})["meta"]["cache"]
    assert again["result_hits"] == 1 and again["result_misses"] == 0
    assert run_bench("average", "msrs:dev-val", **{**rk, "lr": 0.01})["meta"]["cache"]["result_misses"] == 1
    n0 = pairs[0][0]
    Image.fromarray(np.zeros((480, 640), np.uint8)).save(masks / f"{n0}.png")  # new masks: recomputed
    assert run_bench("average", "msrs:dev-val", **kw)["meta"]["cache"]["result_misses"] == 1
    (masks / f"{n0}.png").unlink()
    with pytest.raises(InputError, match=f"no mask for {n0}"):
        run_bench("average", "msrs:dev-val", **kw)
    with pytest.raises(InputError, match="folder not found"):
        run_bench("average", "msrs:dev-val", **{**kw, "seg_masks": tmp_path / "nope"})

"""Bring your own method to ``ivfuse bench``: a folder of fused images (``dir:``), an in-process model (``py:``) and
third-party packages registering methods through the ``ivfuse.methods`` entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from ivfuse.bench.methods import parse_method
from ivfuse.bench.protocols import DataSpec, open_dataset
from ivfuse.bench.runner import run_bench
from ivfuse.cli import main
from ivfuse.errors import InputError, UnknownNameError

from conftest import need

pytestmark = pytest.mark.realdata

SMALL = dict(data="msrs:val", limit=3, train_limit=4, epochs=1, imgsz=160, speed=False, progress=False, report=False)


def _pairs(split: str, n: int) -> list[tuple[str, str, str]]:
    need("data/MSRS")
    return open_dataset(DataSpec("msrs", split), split, None, limit=n).pairs


def _fuse_with_cli(method: str, pairs, out: Path, work: Path) -> None:
    """``ivfuse fuse --method M`` on a folder of (linked) pairs, as a user would make their fused images."""
    ir, vi = work / "ir", work / "vi"
    for d in (ir, vi):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for n, ip, vp in pairs:
        os.symlink(ip, ir / f"{n}.png")
        os.symlink(vp, vi / f"{n}.png")
    assert main(["fuse", "--ir", str(ir), "--vis", str(vi), "-o", str(out), "--method", method, "-q"]) == 0


@pytest.mark.slow
def test_a_folder_of_gff_images_scores_exactly_the_gff_rows(tmp_path):
    mine = tmp_path / "mine"
    _fuse_with_cli("gff", _pairs("dev-val", 3), mine / "dev-val", tmp_path / "in")
    _fuse_with_cli("gff", _pairs("dev-train", 4), mine / "dev-train", tmp_path / "in")
    res = run_bench(
        f"gff,mine=dir:{mine}",
        protocols="fusion,zero,retrain",
        out=tmp_path / "b",
        seeds=1,
        references=False,
        baseline="gff",
        **SMALL,
    )
    e = res["datasets"]["msrs:dev-val"]
    assert e["fusion"]["mine"]["per_image"] == e["fusion"]["gff"]["per_image"]
    for p in ("zero", "retrain"):
        for k in ("mAP50", "mAP50_95"):
            assert e[p]["mine"][k] == e[p]["gff"][k], p
        assert e[p]["mine"]["vs_baseline"]["mAP50"]["delta"] == 0.0
    assert e["fusion"]["mine"]["vs_baseline"]["qabf"]["ci"] == [0.0, 0.0]
    ident = res["meta"]["methods_identity"]["mine"]
    assert ident["folder"] == str(mine.resolve()) and len(ident["files_sha256"]) == 64
    # the cache key is the files' hash: changing one image gives a new key (no stale rows)
    before = parse_method(f"mine=dir:{mine}").key
    f = mine / "dev-val" / f"{_pairs('dev-val', 1)[0][0]}.png"
    im = Image.open(f).convert("RGB")
    im.putpixel((0, 0), (0, 0, 0) if im.getpixel((0, 0)) != (0, 0, 0) else (255, 255, 255))
    im.save(f)
    assert parse_method(f"mine=dir:{mine}").key != before


def test_a_folder_missing_a_pair_is_one_error_before_anything_is_computed(tmp_path):
    pairs = _pairs("dev-val", 3)
    mine = tmp_path / "mine"
    mine.mkdir()
    for n, ip, _ in pairs[:2]:  # flat layout: <pair>.png for the judged split, gray images
        Image.open(ip).convert("L").save(mine / f"{n}.png")
    out = tmp_path / "b"
    with pytest.raises(InputError, match=rf"{mine}: no fused image for pair {pairs[2][0]}") as ei:
        run_bench(f"mine=dir:{mine}", protocols="fusion", out=out, references=False, baseline=None, **SMALL)
    assert "\n" not in str(ei.value)
    assert not (out / "results.json").exists() and not any((out / "cache").rglob("*.json"))
    # a wrong size, and an unreadable file, are refused the same way
    Image.open(pairs[2][1]).convert("L").resize((64, 48)).save(mine / f"{pairs[2][0]}.png")
    with pytest.raises(InputError, match=r"is 64x48 but pair .* is 640x480"):
        run_bench(f"mine=dir:{mine}", protocols="fusion", out=out, references=False, baseline=None, **SMALL)
    (mine / f"{pairs[2][0]}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(InputError, match=rf"unreadable fused image for pair {pairs[2][0]}"):
        run_bench(f"mine=dir:{mine}", protocols="fusion", out=out, references=False, baseline=None, **SMALL)
    # retrain needs the training split in <folder>/<split>/
    Image.open(pairs[2][1]).convert("L").save(mine / f"{pairs[2][0]}.png")
    with pytest.raises(InputError, match=r"no folder dev-train/"):
        run_bench(f"mine=dir:{mine}", protocols="retrain", out=out, references=False, baseline=None, **SMALL)
    with pytest.raises(InputError, match="folder of fused images not found"):
        parse_method(f"mine=dir:{tmp_path / 'nope'}")


def test_py_methods_factory_and_function(tmp_path, monkeypatch):
    (tmp_path / "my_fusion.py").write_text(
        textwrap.dedent("""
        import torch
        from ivfuse.models import create_model

        def average(ir, vis):                      # a plain function (ir, vis) -> fused
            return (ir + vis) / 2

        def build():                               # a factory returning a FusionModel
            return create_model("average")

        def wrong_size(ir, vis):
            return ir[..., :4, :4]
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    need("data/TNO")
    res = run_bench(
        "average,fn=py:my_fusion:average,fac=py:my_fusion:build",
        protocols="fusion",
        out=tmp_path / "b",
        references=False,
        **{**SMALL, "data": "tno"},
    )
    e = res["datasets"]["tno:all"]["fusion"]
    assert e["fac"]["per_image"] == e["average"]["per_image"]  # the registered method, built by the user's factory
    for n, v in e["fn"]["per_image"].items():  # TNO is gray: the function is the registered average exactly
        assert v["qabf"] == pytest.approx(e["average"]["per_image"][n]["qabf"], abs=1e-9)
    assert e["fn"]["vs_baseline"]["en"]["delta"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(InputError, match="must return a B×C×H×W tensor of the input size"):
        parse_method("bad=py:my_fusion:wrong_size").model(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(InputError, match="has no attribute nope"):
        parse_method("x=py:my_fusion:nope")
    with pytest.raises(InputError, match="cannot import"):
        parse_method("x=py:not_a_module_anywhere:f")
    with pytest.raises(InputError, match="given twice"):
        run_bench("fn=py:my_fusion:average,fn=py:my_fusion:build", protocols="fusion", out=tmp_path / "c", **SMALL)


def test_method_options_after_a_question_mark():
    plain, five = parse_method("laplacian"), parse_method("l5=laplacian?levels=5")
    assert five.model.levels == 5 and plain.model.levels != 5
    assert five.key != plain.key and five.identity["options"] == {"levels": 5}
    assert parse_method("laplacian?levels=5").key == five.key  # the label does not enter the key
    with pytest.raises(UnknownNameError, match="unknown option 'levle' for method 'laplacian'; did you mean 'levels'"):
        parse_method("laplacian?levle=5")
    with pytest.raises(InputError, match="is not of the form key=value"):
        parse_method("laplacian?levels")
    with pytest.raises(InputError, match="reference row 'ir' takes no options"):
        parse_method("ir?x=1")


@pytest.mark.slow
def test_entry_point_plugin_is_listed_and_benched(tmp_path):
    """A third-party package declaring ``[project.entry-points."ivfuse.methods"]``, installed with pip."""
    pkg = tmp_path / "src_pkg"
    (pkg / "ivfuse_plugin_demo").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "ivfuse-plugin-demo"
        version = "0.0.1"
        [project.entry-points."ivfuse.methods"]
        darker = "ivfuse_plugin_demo:Darker"
        average = "ivfuse_plugin_demo:Darker"
    """)
    )
    (pkg / "ivfuse_plugin_demo" / "__init__.py").write_text(
        textwrap.dedent('''
        from ivfuse.models import FusionModel

        class Darker(FusionModel):
            """Half of the pixel average (a plugin made in a test)."""

            def fuse_luma(self, ir, y):
                return (ir + y) / 4
    ''')
    )
    site = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(pkg),
        ],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "200"}
    ls = subprocess.run([sys.executable, "-m", "ivfuse", "list", "methods"], capture_output=True, text=True, env=env)
    assert ls.returncode == 0, ls.stderr
    assert "darker" in ls.stdout and "ivfuse-plugin-demo" in ls.stdout
    # a plugin may not shadow a built-in: it is skipped with a one-line warning naming it
    assert "plugin 'average' of ivfuse-plugin-demo is skipped" in " ".join(ls.stderr.split())
    out = tmp_path / "b"
    code = (
        "import json, sys; from ivfuse.bench.runner import run_bench; "
        f"r = run_bench('average,darker', 'msrs:val', protocols='fusion', out={str(out)!r}, limit=2, speed=False, "
        "progress=False, report=False, references=False); "
        "e = r['datasets']['msrs:dev-val']['fusion']; "
        "print(json.dumps([e['darker']['mean']['en'], e['average']['mean']['en'], "
        "e['darker']['vs_baseline']['sd']['delta']]))"
    )
    b = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert b.returncode == 0, b.stderr[-2000:]
    en_dark, en_avg, d_sd = json.loads(b.stdout.strip().splitlines()[-1])
    assert en_dark < en_avg and d_sd < 0  # darker halves the contrast: lower entropy and SD than the average

"""The command line: fuse (pair and folder), eval (json/csv/md), list, and the bad-input table."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import need
from ivfuse.cli import main


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_fuse_pair_keeps_colour_and_size(capsys, pair_dirs, tmp_path):
    ir, vis = pair_dirs
    rc, out, _ = run(
        capsys,
        "fuse",
        "--ir",
        ir / "p0.png",
        "--vis",
        vis / "p0.png",
        "-o",
        tmp_path / "f.png",
        "--method",
        "laplacian",
    )
    assert rc == 0 and "wrote" in out
    im = Image.open(tmp_path / "f.png")
    assert im.mode == "RGB" and im.size == (80, 64)
    # the pixels are the API's, and the visible colour survives (the three channels differ)
    from ivfuse.fusion import fuse_files

    fuse_files(ir / "p0.png", vis / "p0.png", tmp_path / "api.png", "laplacian")
    cli, api = np.asarray(im, np.int16), np.asarray(Image.open(tmp_path / "api.png"), np.int16)
    assert np.array_equal(cli, api)
    assert np.abs(cli[..., 0] - cli[..., 2]).max() > 0


def test_fuse_folder_then_eval(capsys, pair_dirs, tmp_path):
    ir, vis = pair_dirs
    rc, _, _ = run(capsys, "fuse", "--ir", ir, "--vis", vis, "-o", tmp_path / "out", "--method", "average", "-q")
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png", "p1.png", "p2.png"]
    for ext in ("json", "csv", "md"):
        rc, out, _ = run(
            capsys,
            "eval",
            "--ir",
            ir,
            "--vis",
            vis,
            "--fused",
            tmp_path / "out",
            "--metrics",
            "en,qabf,mse",
            "--out",
            tmp_path / f"r.{ext}",
            "--workers",
            "1",
            "-q",
        )
        assert rc == 0 and "mean" in out
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res) == {"per_image", "mean"} and set(res["per_image"]) == {"p0", "p1", "p2"}
    assert res["mean"]["qabf"] == pytest.approx(np.mean([v["qabf"] for v in res["per_image"].values()]))
    rows = list(csv.reader((tmp_path / "r.csv").open()))
    assert rows[0] == ["image", "en", "qabf", "mse"] and rows[-1][0] == "mean" and len(rows) == 5
    assert float(rows[-1][2]) == pytest.approx(res["mean"]["qabf"])
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("| image | en ↑ | qabf ↑ | mse ↓ |")


def test_method_options(capsys, pair_dirs, tmp_path):
    ir, vis = pair_dirs
    rc, _, _ = run(
        capsys,
        "fuse",
        "--ir",
        ir / "p1.png",
        "--vis",
        vis / "p1.png",
        "-o",
        tmp_path / "f.png",
        "--method",
        "laplacian",
        "--opt",
        "levels=2",
    )
    assert rc == 0
    from ivfuse.fusion import fuse_files

    # the option reaches the model: the CLI image is the API's with levels=2, and not the default's
    fuse_files(ir / "p1.png", vis / "p1.png", tmp_path / "api2.png", "laplacian", levels=2)
    fuse_files(ir / "p1.png", vis / "p1.png", tmp_path / "api_default.png", "laplacian")
    cli, api2, default = (
        np.asarray(Image.open(tmp_path / n), np.int16) for n in ("f.png", "api2.png", "api_default.png")
    )
    assert np.array_equal(cli, api2)
    assert np.abs(cli - default).max() > 0


def test_list(capsys):
    for what, item in (
        ("methods", "gff"),
        ("metrics", "qcb"),
        ("datasets", "msrs"),
        ("detectors", "yolov5n"),
        ("segmenters", "espnetv2"),
    ):
        rc, out, _ = run(capsys, "list", what)
        assert rc == 0 and item in out


def _write(path, arr):
    if path.suffix == ".tif":
        tifffile.imwrite(path, arr)
    else:
        Image.fromarray(arr).save(path)
    return path


def test_bad_input_table(capsys, tmp_path, pair_dirs):
    """One case per row of docs/bad_input.md: one-line error naming the file, exit 2, nothing written."""
    ir_d, vis_d = pair_dirs
    g = np.full((64, 80), 120, np.uint8)
    ok_ir = _write(tmp_path / "ok_ir.png", g)
    ok_vis = _write(tmp_path / "ok_vis.png", np.stack([g] * 3, -1))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    small = _write(tmp_path / "small.png", np.zeros((20, 20), np.uint8))
    small_v = _write(tmp_path / "small_v.png", np.zeros((20, 20), np.uint8))
    big = _write(tmp_path / "big.png", np.zeros((70, 80), np.uint8))
    nan = np.ones((64, 80), np.float32)
    nan[5, 5] = np.inf
    nan_tif = _write(tmp_path / "nan.tif", nan)
    unp = tmp_path / "unpaired"
    (unp / "ir").mkdir(parents=True)
    (unp / "vi").mkdir()
    _write(unp / "ir" / "a.png", g)
    _write(unp / "vi" / "b.png", g)
    out = tmp_path / "res"
    cases = [
        (
            ["fuse", "--ir", tmp_path / "missing.png", "--vis", ok_vis, "-o", out / "f.png"],
            "missing.png: file not found",
        ),
        (["fuse", "--ir", corrupt, "--vis", ok_vis, "-o", out / "f.png"], "corrupt.png: cannot be read as an image"),
        (["fuse", "--ir", ok_ir, "--vis", big, "-o", out / "f.png"], "big.png: visible image is 80x70 but infrared"),
        (["fuse", "--ir", unp / "ir", "--vis", unp / "vi", "-o", out], "only in"),
        (
            ["fuse", "--ir", small, "--vis", small_v, "-o", out / "f.png", "--method", "laplacian"],
            "small.png: image 20x20 is smaller than the 32x32 minimum of 'laplacian'",
        ),
        (["fuse", "--ir", nan_tif, "--vis", ok_vis, "-o", out / "f.png"], "nan.tif: contains NaN or inf"),
        (["fuse", "--ir", ok_ir, "--vis", ok_vis, "-o", out / "f.png", "--method", "gfff"], "did you mean 'gff'"),
        (["fuse", "--ir", ok_ir, "--vis", ok_vis, "-o", out / "f.gif"], "unsupported output extension"),
        (["eval", "--ir", ir_d, "--vis", vis_d, "--fused", ir_d, "--metrics", "qabff"], "did you mean 'qabf'"),
        (["eval", "--ir", ir_d, "--vis", vis_d, "--fused", unp / "ir"], "no fused image"),
        (
            ["eval", "--ir", ir_d, "--vis", vis_d, "--fused", ir_d, "--out", out / "r.xlsx"],
            "unsupported results format",
        ),
        (["fuse", "--ir", ok_ir, "--vis", ok_vis, "-o", out / "f.png", "--device", "gpu"], "did you mean 'cuda'"),
        (
            ["fuse", "--ir", ok_ir, "--vis", ok_vis, "-o", out / "f.png", "--method", "laplacian", "--opt", "level=5"],
            "did you mean 'levels'",
        ),
        (
            [
                "fuse",
                "--ir",
                ok_ir,
                "--vis",
                ok_vis,
                "-o",
                out / "f.png",
                "--method",
                "laplacian",
                "--opt",
                "levels=five",
            ],
            "option 'levels' of method 'laplacian' must be int, got 'five'",
        ),
        (
            ["fuse", "--ir", ok_ir, "--vis", ok_vis, "-o", out / "f.png", "--method", "gff", "--weights", ok_ir],
            "method 'gff' has no learned weights",
        ),
        (["downstream", "detect", "--images", ir_d, "--labels", unp], "unpaired: no label files (.txt/.xml) found"),
        (
            ["eval", "--ir", ir_d, "--vis", vis_d, "--fused", ir_d, "--names", tmp_path / "nonames.txt"],
            "names file not found",
        ),
    ]
    if not __import__("torch").cuda.is_available():
        cases.append(
            (
                ["fuse", "--ir", ok_ir, "--vis", ok_vis, "-o", out / "f.png", "--device", "cuda"],
                "--device cuda: no CUDA GPU is available",
            )
        )
    for args, msg in cases:
        rc, _, err = run(capsys, *args)
        assert rc == 2, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ivfuse: error: ") and msg in lines[0], (args, err)
        assert not out.exists() or not any(out.rglob("*")), f"output left behind for {args}"
    # a bad pair in the middle of a folder leaves nothing behind
    bad = tmp_path / "badfolder"
    (bad / "ir").mkdir(parents=True)
    (bad / "vi").mkdir()
    for n in ("a", "b", "c"):
        _write(bad / "ir" / f"{n}.png", g)
        _write(bad / "vi" / f"{n}.png", g)
    (bad / "vi" / "b.png").write_bytes((bad / "vi" / "b.png").read_bytes()[:60])  # truncated data
    rc, _, err = run(capsys, "fuse", "--ir", bad / "ir", "--vis", bad / "vi", "-o", out, "-q")
    assert rc == 2 and "b.png" in err
    assert not out.exists() or not any(out.rglob("*"))


def test_accepted_odd_inputs(capsys, tmp_path):
    """RGBA and palette visible images, 16-bit and float TIFF infrared are fused (rows 'accepted')."""
    rng = np.random.default_rng(0)
    ir16 = _write(tmp_path / "ir16.tif", rng.integers(7000, 9000, (64, 80)).astype(np.uint16))
    irf = _write(tmp_path / "irf.tif", rng.normal(20, 5, (64, 80)).astype(np.float32))
    rgba = _write(tmp_path / "rgba.png", rng.integers(0, 256, (64, 80, 4)).astype(np.uint8))
    pal = Image.fromarray(rng.integers(0, 4, (64, 80)).astype(np.uint8), "P")
    pal.putpalette(list(range(12)) + [0] * 756)
    pal.save(tmp_path / "pal.png")
    for ir, vis in ((ir16, rgba), (irf, tmp_path / "pal.png")):
        rc, _, err = run(capsys, "fuse", "--ir", ir, "--vis", vis, "-o", tmp_path / f"{ir.stem}.png")
        assert rc == 0, err
        assert Image.open(tmp_path / f"{ir.stem}.png").size == (80, 64)


def test_entry_point_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ivfuse.cli", "list", "metricz"], capture_output=True, text=True)
    assert r.returncode == 2 and "did you mean 'metrics'" in r.stderr


@pytest.mark.realdata
@pytest.mark.slow
def test_real_tno_and_msrs(capsys, tmp_path):
    tno = need("data/TNO")
    msrs = need("data/MSRS")
    rc, _, _ = run(
        capsys,
        "fuse",
        "--ir",
        msrs / "ir" / "00004N.png",
        "--vis",
        msrs / "vi" / "00004N.png",
        "-o",
        tmp_path / "m.png",
    )
    assert rc == 0
    im = Image.open(tmp_path / "m.png")
    assert im.mode == "RGB" and im.size == (640, 480)
    sub = tmp_path / "tno"
    for d in ("ir", "vi"):
        (sub / d).mkdir(parents=True)
        for n in ("01", "02", "03"):
            (sub / d / f"{n}.png").write_bytes((tno / d / f"{n}.png").read_bytes())
    rc, _, _ = run(
        capsys, "fuse", "--ir", sub / "ir", "--vis", sub / "vi", "-o", tmp_path / "f", "--method", "gff", "-q"
    )
    assert rc == 0
    rc, out, _ = run(
        capsys,
        "eval",
        "--ir",
        sub / "ir",
        "--vis",
        sub / "vi",
        "--fused",
        tmp_path / "f",
        "--out",
        tmp_path / "r.json",
        "-q",
    )
    res = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0 and len(res["per_image"]) == 3 and 0.3 < res["mean"]["qabf"] < 0.9


def test_cli_logging_levels_and_one_line_records(capsys):
    """#21 item 5: the library logs to the ``ivfuse`` logger; the CLI prints each record as one ``ivfuse: ...`` line
    (warnings tagged), INFO by default, notices (resume) and warnings with ``-q`` (also after ``train``'s items),
    DEBUG with ``-v``."""
    import logging

    from ivfuse.cli import _setup_logging, build_parser

    log = logging.getLogger("ivfuse")
    fuse = ["fuse", "--ir", "a.png", "--vis", "b.png", "-o", "c.png"]
    from ivfuse.utils import NOTICE

    for extra, level in (([], logging.INFO), (["-q"], NOTICE), (["-v"], logging.DEBUG)):
        _setup_logging(build_parser().parse_args(fuse + extra))
        assert log.level == level and sum(type(h).__name__ == "_TqdmHandler" for h in log.handlers) == 1
    _setup_logging(build_parser().parse_args(["train", "lite", "epochs=1", "-q"]))
    assert log.level == NOTICE
    capsys.readouterr()
    log.info("[train] epoch 1/2: hidden by -q")
    log.log(NOTICE, "resuming from %s after %s", "run/last.pt", "stage train epoch 1")
    log.warning("resume=force: continuing %s", "run")
    assert capsys.readouterr().err.splitlines() == [
        "ivfuse: resuming from run/last.pt after stage train epoch 1",
        "ivfuse: warning: resume=force: continuing run",
    ]
    _setup_logging(build_parser().parse_args(["train", "lite", "epochs=1"]))
    log.info("[train] epoch 1/2 (0.1 s): loss=1")
    log.debug("not shown at INFO")
    assert capsys.readouterr().err.splitlines() == ["ivfuse: [train] epoch 1/2 (0.1 s): loss=1"]

"""Faults injected on purpose (issue 25): hostile and broken input files, fuzzed label and config parsers, torn or
corrupted bench-cache entries, two benches on one output folder, SIGKILL during training and during folder fusion.

``docs/reliability.md`` has the table of faults -> behaviour -> test; ``benchmarks/fault_injection.py`` repeats the
kill/resume checks at many random points.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ivfuse.cli import main
from ivfuse.errors import InputError, IvfuseError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    """Environment for a child ``python -m ivfuse``: this checkout's source, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _cli(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in this process; ``err`` without progress bars (tqdm's ``\\r`` lines)."""
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    err = "".join(line for line in out.err.splitlines(keepends=True) if "\r" not in line and "%|" not in line)
    return rc, out.out, err


# -- hostile and broken image files ----------------------------------------------------------------------------------


def _png(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "PNG")
    return b.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(w: int, h: int, idat: bytes = b"") -> bytes:
    """A PNG whose header says ``w x h`` gray 8-bit, with ``idat`` as its compressed data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", idat or zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=1)
def _bomb() -> bytes:
    """A real decompression bomb: 9800 x 9800 (96 M pixels, above Pillow's 89 M limit) of zeros in ~100 kB."""
    w = h = 9800
    z = zlib.compressobj(9)
    row = b"\0" * (w + 1)  # filter byte + pixels
    data = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    assert len(data) < 200_000
    return _png_claiming(w, h, data)


def _truncated_png() -> bytes:
    data = _png(np.random.default_rng(0).integers(0, 256, (64, 80), dtype=np.uint8))
    return data[: len(data) // 2]


def _truncated_jpeg() -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(b, "JPEG")
    return b.getvalue()[: len(b.getvalue()) // 2]


HOSTILE = {  # name -> (file name, bytes, what the one-line error must say)
    "decompression_bomb": ("p1.png", _bomb, "exceeds the limit of"),
    "zero_bytes": ("p1.png", lambda: b"", "cannot be read as an image"),
    "truncated_png": ("p1.png", _truncated_png, "cannot be read as an image"),
    "truncated_jpeg": ("p1.jpg", _truncated_jpeg, "cannot be read as an image"),
    "header_100k_x_100k": ("p1.png", lambda: _png_claiming(100_000, 100_000), "exceeds the limit of"),
    "tiff_header_100k_x_100k": ("p1.tif", None, "exceeds the limit of"),
}


def _huge_tiff(path: Path) -> None:
    """A TIFF whose header claims 100k x 100k (its strip is absent): written with tifffile's shaped empty file."""
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=True) as tw:  # a sparse file: no 10 GB are written
        tw.write(shape=(100_000, 100_000), dtype=np.uint8, compression=None)
    with open(path, "r+b") as f:  # keep only the header (a few hundred bytes), drop the 10 GB of zeros
        f.truncate(4096)


def _pairs(root: Path, n: int = 3) -> tuple[Path, Path]:
    ir, vi = root / "ir", root / "vi"
    ir.mkdir(parents=True)
    vi.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 64), dtype=np.uint8)).save(ir / f"p{i}.png")
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(vi / f"p{i}.png")
    return ir, vi


def _hostile(kind: str, folder: Path) -> Path:
    name, make, _ = HOSTILE[kind]
    bad = folder / name
    if make is None:
        _huge_tiff(bad)
    else:
        bad.write_bytes(make())
    return bad


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_image_is_an_input_error_naming_it(kind, tmp_path):
    from ivfuse.data import load_dataset
    from ivfuse.data.images import read_ir, read_vis

    says = HOSTILE[kind][2]
    bad = _hostile(kind, tmp_path)
    for read in (read_ir, read_vis):
        with pytest.raises(InputError, match=says) as e:
            read(bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)
    ir, vi = _pairs(tmp_path / "d")  # load_dataset: the error names the file when the sample is read
    (ir / "p1.png").unlink()
    bad.rename(ir / bad.name)
    ds = load_dataset("folder", root=tmp_path / "d")
    with pytest.raises(InputError, match=says) as e:
        ds[ds.names.index("p1")]
    assert str(ir / bad.name) in str(e.value)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_image_in_ivfuse_fuse_folder_is_a_one_line_error_and_nothing_is_written(kind, tmp_path, capsys):
    name, _, says = HOSTILE[kind]
    bad = _hostile(kind, tmp_path)
    ir, vi = _pairs(tmp_path / "d")  # a hostile pair: both files alike, so the header check of the sizes passes
    for d in (ir, vi):
        (d / "p1.png").unlink()
        (d / name).write_bytes(bad.read_bytes())
    out = tmp_path / "out"
    try:
        rc, _, err = _cli(capsys, "fuse", "--ir", ir, "--vis", vi, "-o", out, "--method", "average")
    finally:
        assert not out.exists() or not any(out.iterdir())  # every pair is decoded before the first is written
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("ivfuse: error: ") and str(ir / name) in err and says in err, err


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_fused_image_in_ivfuse_eval_is_a_one_line_error(kind, tmp_path, capsys):
    name, _, says = HOSTILE[kind]
    ir, vi = _pairs(tmp_path / "e")
    fused = tmp_path / "fused"
    fused.mkdir()
    for i in (0, 2):
        (fused / f"p{i}.png").write_bytes((vi / f"p{i}.png").read_bytes())
    _hostile(kind, fused)
    res = tmp_path / "r.json"
    rc, _, err = _cli(capsys, "eval", "--ir", ir, "--vis", vi, "--fused", fused, "--metrics", "en", "--out", res)
    assert rc == 2 and err.count("\n") == 1 and str(fused / name) in err and says in err, err
    assert not res.exists()


def test_image_just_above_the_pixel_limit_is_refused_and_the_limit_can_be_raised(tmp_path, monkeypatch):
    """Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; ivfuse refuses there too, before decoding,
    and honours a raised limit."""
    from ivfuse.data.images import read_array

    p = tmp_path / "big.png"
    p.write_bytes(_png_claiming(200, 100, zlib.compress(b"\0" * (201 * 100))))
    assert read_array(p).shape == (100, 200)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15_000)  # 20 000 pixels: a warning in Pillow, an error here
    with pytest.raises(InputError, match=r"big.png: image of 20000 pixels exceeds the limit of 15000"):
        read_array(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 25_000)
    assert read_array(p).shape == (100, 200)


def test_symlink_loop_and_broken_link_in_a_dataset_folder(tmp_path, capsys):
    from ivfuse.data import load_dataset

    ir, vi = _pairs(tmp_path / "d")
    (ir / "sub").symlink_to(".")  # a folder loop: never followed
    (ir / "loop.png").symlink_to("loop.png")  # an image name that loops
    with pytest.raises(InputError, match=r"loop.png: is a symbolic-link loop"):
        load_dataset("folder", root=tmp_path / "d")
    rc, _, err = _cli(capsys, "fuse", "--ir", ir, "--vis", vi, "-o", tmp_path / "out", "--method", "average")
    assert rc == 2 and err.count("\n") == 1 and "loop.png: is a symbolic-link loop" in err
    assert not (tmp_path / "out").exists()
    (ir / "loop.png").unlink()
    (ir / "gone.png").symlink_to("nowhere.png")
    with pytest.raises(InputError, match=r"gone.png: is a broken symbolic link \(target nowhere.png\)"):
        load_dataset("folder", root=tmp_path / "d")
    (ir / "gone.png").unlink()
    assert len(load_dataset("folder", root=tmp_path / "d")) == 3  # the folder loop alone is harmless


def test_non_utf8_file_name_is_a_one_line_error(tmp_path, capsys):
    from ivfuse.data import load_dataset

    ir, vi = _pairs(tmp_path / "d")
    for d in (ir, vi):
        (Path(os.fsdecode(os.fsencode(d) + b"/caf\xe9.png"))).write_bytes((d / "p0.png").read_bytes())
    with pytest.raises(InputError, match=r"caf\\xe9.png: file name is not valid UTF-8"):
        load_dataset("folder", root=tmp_path / "d")
    rc, _, err = _cli(capsys, "fuse", "--ir", ir, "--vis", vi, "-o", tmp_path / "out", "--method", "average")
    assert rc == 2 and err.count("\n") == 1 and "caf\\xe9.png: file name is not valid UTF-8" in err, err
    assert not (tmp_path / "out").exists()


BAD_YOLO = {
    "0 nan 0.5 0.1 0.1": "NaN or infinite",
    "0 0.5 0.5 inf 0.1": "NaN or infinite",
    "0 -0.5 0.5 0.1 0.1": "outside the image",
    "0 0.5 0.5 3 0.1": "outside the image",
    "0 0.5 0.5 0 0.1": "non-positive size",
    "0 0.5 0.5 0.1 -0.1": "non-positive size",
    "-1 0.5 0.5 0.1 0.1": "class id -1",
    "1.5 0.5 0.5 0.1 0.1": "expected an integer",
    "nan 0.5 0.5 0.1 0.1": "expected an integer",
}


@pytest.mark.parametrize("line", sorted(BAD_YOLO))
def test_bad_yolo_box_is_an_error_naming_the_label_file(line, tmp_path):
    from ivfuse.data import load_dataset

    _pairs(tmp_path / "d")
    lab = tmp_path / "d" / "labels"
    lab.mkdir()
    (lab / "p0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (lab / "p1.txt").write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    ds = load_dataset("folder", root=tmp_path / "d")
    assert len(ds[0]["boxes"]) == 1
    with pytest.raises(InputError, match=BAD_YOLO[line]) as e:
        ds[1]
    assert str(lab / "p1.txt") in str(e.value) and "line 2" in str(e.value)


@pytest.mark.parametrize(
    "box,says",
    [
        ("<xmin>nan</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax>", "NaN or infinite"),
        ("<xmin>-20</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax>", "outside the 64x48 image"),
        ("<xmin>1</xmin><ymin>1</ymin><xmax>640</xmax><ymax>10</ymax>", "outside the 64x48 image"),
        ("<xmin>10</xmin><ymin>1</ymin><xmax>5</xmax><ymax>10</ymax>", "non-positive size"),
    ],
)
def test_bad_voc_box_is_an_error_naming_the_label_file(box, says, tmp_path):
    from ivfuse.data import load_dataset

    root = tmp_path / "m3fd"
    ir, vi = _pairs(root)
    ir.rename(root / "Ir")
    vi.rename(root / "Vis")
    ann = root / "Annotation"
    ann.mkdir()
    head = "<annotation><size><width>64</width><height>48</height></size>"
    good = (
        "<object><name>People</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox>"
        "</object>"
    )
    for i in range(3):
        (ann / f"p{i}.xml").write_text(head + good + "</annotation>")
    (ann / "p2.xml").write_text(head + good + f"<object><name>Car</name><bndbox>{box}</bndbox></object></annotation>")
    ds = load_dataset("m3fd", root=root)
    assert len(ds[0]["boxes"]) == 1
    with pytest.raises(InputError, match=says) as e:
        ds[2]
    assert str(ann / "p2.xml") in str(e.value) and "object 2" in str(e.value)


def test_yaml_config_with_a_python_tag_is_refused_by_safe_loading(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'epochs: !!python/object/apply:os.system ["touch {marker}"]\n')
    rc, _, err = _cli(capsys, "train", "lite", f"config={evil}", f"out={tmp_path / 'run'}")
    assert rc == 2 and err.count("\n") == 1 and str(evil) in err and "could not determine a constructor" in err, err
    assert not marker.exists() and not (tmp_path / "run").exists()
    # the same tag as a key=value override is a plain string, which the type check refuses
    rc, _, err = _cli(
        capsys, "train", "lite", 'epochs=!!python/object/apply:os.system ["true"]', f"out={tmp_path / 'run'}"
    )
    assert rc == 2 and "config key 'epochs'" in err and not (tmp_path / "run").exists(), err


# -- fuzzing the label and config parsers ----------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
_TMP = tempfile.TemporaryDirectory(prefix="ivfuse-fuzz-")


def _tmpfile(name: str, data: bytes) -> Path:
    p = Path(_TMP.name) / name
    p.write_bytes(data)
    return p


def _valid_boxes(b, size: tuple[float, float] | None = None) -> None:
    """What a successful parse promises: finite boxes of positive size inside the image (with the tolerance)."""
    from ivfuse.data.labels import BOX_TOLERANCE

    xy = b.xyxy.double()
    assert xy.shape[1] == 4 and len(b.labels) == len(xy)
    assert bool(xy.isfinite().all())
    assert bool((xy[:, 2] >= xy[:, 0]).all()) and bool((xy[:, 3] >= xy[:, 1]).all())
    if size is not None and len(xy):
        w, h = size
        assert (
            xy[:, 0].min() >= -max(1, BOX_TOLERANCE * w) - 1e-3
            and xy[:, 2].max() <= w + max(1, BOX_TOLERANCE * w) + 1e-3
        )
        assert (
            xy[:, 1].min() >= -max(1, BOX_TOLERANCE * h) - 1e-3
            and xy[:, 3].max() <= h + max(1, BOX_TOLERANCE * h) + 1e-3
        )


_num = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.integers(-5, 5).map(str),
    st.sampled_from(["0.5", "1", "0", "-0", "1e400", "nan", "inf", "0x10", "", "1_0", "½", "٣"]),
    st.text(max_size=4),
)
_yolo_line = st.lists(_num, min_size=0, max_size=7).map(" ".join)


@FUZZ
@given(st.one_of(st.lists(_yolo_line, max_size=5).map("\n".join).map(str.encode), st.binary(max_size=64)))
def test_fuzz_yolo_parser(data):
    from ivfuse.data.labels import read_yolo

    p = _tmpfile("y.txt", data)
    try:
        b = read_yolo(p, 64, 48, ("person", "car", "bike"))
    except InputError as e:
        assert str(p) in str(e) and "\n" not in str(e)
        return
    _valid_boxes(b, (64, 48))
    assert bool((b.labels >= 0).all()) and bool((b.labels < 3).all())


_xml_val = st.one_of(_num, st.just("<x/>"), st.just("&amp;"), st.just("]]>"))
_xml_obj = st.builds(
    lambda name, tags, vals, drop: (
        "<object><name>"
        + name
        + "</name><bndbox>"
        + "".join(f"<{t}>{v}</{t}>" for t, v, d in zip(tags, vals, drop) if not d)
        + "</bndbox></object>"
    ),
    st.sampled_from(["People", "Car", "car", "Nope", "", "&lt;"]),
    st.just(["xmin", "ymin", "xmax", "ymax"]),
    st.lists(_xml_val, min_size=4, max_size=4),
    st.lists(st.booleans(), min_size=4, max_size=4).map(lambda d: [x and i == 0 for i, x in enumerate(d)]),
)
_xml_size = st.one_of(
    st.just(""), st.builds(lambda w, h: f"<size><width>{w}</width><height>{h}</height></size>", _num, _num)
)


@FUZZ
@given(
    st.one_of(
        st.builds(
            lambda s, objs: ("<annotation>" + s + "".join(objs) + "</annotation>").encode(),
            _xml_size,
            st.lists(_xml_obj, max_size=3),
        ),
        st.binary(max_size=64),
    )
)
def test_fuzz_voc_parser(data):
    from ivfuse.data.labels import read_voc

    p = _tmpfile("v.xml", data)
    try:
        b = read_voc(p, ("People", "Car"))
    except InputError as e:
        assert str(p) in str(e) and "\n" not in str(e)
        return
    _valid_boxes(b)


_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3)
)
_json = st.recursive(
    _json_leaf,
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=3), c, max_size=3)),
    max_leaves=10,
)
_coco_num = st.one_of(st.integers(-10, 100), st.floats(allow_nan=True, allow_infinity=True), st.just("1"), st.none())
_coco = st.fixed_dictionaries(
    {
        "images": st.lists(
            st.fixed_dictionaries(
                {
                    "id": st.one_of(st.integers(0, 3), st.just("a")),
                    "file_name": st.one_of(st.just("a/x.png"), st.integers()),
                },
                optional={"width": _coco_num, "height": _coco_num},
            ),
            max_size=3,
        ),
        "annotations": st.lists(
            st.fixed_dictionaries(
                {
                    "image_id": st.one_of(st.integers(0, 4), st.just("a")),
                    "category_id": st.one_of(st.integers(0, 3), st.none()),
                    "bbox": st.one_of(st.lists(_coco_num, min_size=3, max_size=5), _json),
                },
                optional={"iscrowd": _json_leaf, "id": _json},
            ),
            max_size=4,
        ),
        "categories": st.lists(
            st.fixed_dictionaries(
                {"id": st.one_of(st.integers(0, 3), st.just("c")), "name": st.one_of(st.text(max_size=3), st.none())}
            ),
            max_size=3,
        ),
    },
    optional={"x": _json},
)


@FUZZ
@given(
    st.one_of(
        _coco.map(lambda d: json.dumps(d).encode()), _json.map(lambda d: json.dumps(d).encode()), st.binary(max_size=40)
    )
)
def test_fuzz_coco_parser(data):
    from ivfuse.data.labels import read_coco

    p = _tmpfile("c.json", data)
    try:
        boxes, names = read_coco(p)
    except InputError as e:
        assert str(p) in str(e) and "\n" not in str(e)
        return
    d = json.loads(data)
    sizes = {im["id"]: (im.get("width"), im.get("height")) for im in d["images"]}
    for im in d["images"]:
        w, h = sizes[im["id"]]
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in (w, h))
        _valid_boxes(boxes[Path(im["file_name"]).stem], (w, h) if ok else None)
    for b in boxes.values():
        assert b.names == names and bool((b.labels >= 0).all()) and bool((b.labels < max(1, len(names))).all())


_item = st.one_of(
    st.builds(
        lambda k, v: f"{k}={v}",
        st.sampled_from(
            [
                "epochs",
                "lr",
                "crop",
                "data",
                "loss.ssim",
                "teacher.method",
                "loss",
                "val.max",
                "x",
                "",
                " ",
                "epochs.x",
                "seed",
                ".",
            ]
        ),
        st.one_of(
            _num,
            st.text(max_size=8),
            st.sampled_from(
                [
                    "[1, 2]",
                    "{a: 1}",
                    "{ssim: x}",
                    "[",
                    "!!binary x",
                    "!!python/name:os.system",
                    "*a",
                    "&a 1",
                    "null",
                    "2001-01-01",
                    "{ssim: 1, x: 2}",
                ]
            ),
        ),
    ),
    st.text(max_size=10),
)


@FUZZ
@given(st.lists(_item, max_size=4))
def test_fuzz_key_value_config_parser(items):
    """``key=value`` overrides of a real recipe config: a checked config or a one-line ivfuse error (InputError, or
    its sibling UnknownNameError for an unknown key with its "did you mean"), never another exception."""
    from ivfuse.config import apply_overrides, parse_items
    from ivfuse.engine.config import load_config

    if not _LITE_CFG:
        _LITE_CFG.update(load_config("lite", "cpu"))
    base = _LITE_CFG
    try:
        parse_items(items)
        cfg = apply_overrides(base, items)
    except IvfuseError as e:
        assert "\n" not in str(e)
        return
    assert set(cfg) == set(base)
    json.dumps(cfg, default=str)


_LITE_CFG: dict = {}


def test_fuzzers_are_not_vacuous():
    """The parsers above do accept good input and refuse bad input (so the fuzz tests exercise both branches)."""
    from ivfuse.data.labels import read_coco, read_voc, read_yolo

    assert len(read_yolo(_tmpfile("g.txt", b"1 0.5 0.5 0.2 0.2\n"), 64, 48, ("a", "b"))) == 1
    assert (
        len(
            read_voc(
                _tmpfile(
                    "g.xml",
                    b"<annotation><object><name>Car</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                    b"<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>",
                ),
                ("Car",),
            )
        )
        == 1
    )
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
        "categories": [{"id": 3, "name": "c"}],
        "annotations": [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}],
    }
    assert len(read_coco(_tmpfile("g.json", json.dumps(coco).encode()))[0]["a"]) == 1
    coco["annotations"][0]["bbox"] = [1, 1, 50, 5]
    with pytest.raises(InputError, match="outside the 10x10 image"):
        read_coco(_tmpfile("g.json", json.dumps(coco).encode()))
    coco["annotations"][0]["bbox"] = [1, 1, float("nan"), 5]
    with pytest.raises(InputError, match="NaN"):
        read_coco(_tmpfile("g.json", json.dumps(coco).encode()))


# -- the bench cache: damaged entries, two benches on one --out ------------------------------------------------------


def test_cache_result_entries_are_checked_and_old_entries_stay_valid(tmp_path, caplog):
    from ivfuse.bench.cache import CHECKSUM_KEY, BenchCache

    c = BenchCache(tmp_path / "cache")
    value = {"mean": {"en": 6.5, "qabf": float("nan")}, "per_image": {"a": {"en": 6.5}}, "n_images": 1, "ids": {1: 2}}
    c.put("fusion", "d", "m", value)
    p = c.result_path("fusion", "d", "m")
    assert CHECKSUM_KEY in json.loads(p.read_text()) and CHECKSUM_KEY not in value
    got = c.get("fusion", "d", "m")
    assert json.dumps(got, sort_keys=True) == json.dumps(json.loads(json.dumps(value)), sort_keys=True) and c.hits == 1
    good = p.read_text()
    damaged = {
        "truncated": good[: len(good) // 2],
        "a digit changed (still valid JSON)": good.replace("6.5", "7.5", 1),
        "not an object": "[1, 2]\n",
        "empty": "",
        "binary": "\udcff\udcfe",
    }
    for what, text in damaged.items():
        p.write_bytes(text.encode("utf-8", "surrogateescape"))
        caplog.clear()
        with caplog.at_level("WARNING", logger="ivfuse"):
            assert c.get("fusion", "d", "m") is None, what
        assert len(caplog.records) == 1 and str(p) in caplog.records[0].getMessage() and "recomputing" in caplog.text
    # an entry written by the code before checksums (no checksum key): trusted when it parses
    old = {"mean": {"en": 6.5}, "n_images": 1}
    p.write_text(json.dumps(old, indent=1) + "\n")
    assert c.get("fusion", "d", "m") == old
    # the keys and paths are those of the code before (a long benchmark's cache depends on them)
    assert p == tmp_path / "cache" / "results" / "fusion" / "d" / "m.json"
    assert c.result_path("zero", "d", "m", "x") == tmp_path / "cache" / "results" / "zero" / "d" / "m-x.json"
    assert c.fused_dir("d", "m") == tmp_path / "cache" / "fused" / "d" / "m"


def test_cache_deletes_damaged_fused_pngs(tmp_path, caplog):
    from ivfuse.bench.cache import BenchCache

    c = BenchCache(tmp_path / "cache")
    d = c.fused_dir("d", "m")
    d.mkdir(parents=True)
    png = _png(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0x10
    files = {
        "ok.png": png,
        "trunc.png": png[: len(png) // 2],
        "zero.png": b"",
        "noiend.png": png[:-12],
        "flip.png": bytes(flipped),
    }
    for n, b in files.items():
        (d / n).write_bytes(b)
    with caplog.at_level("WARNING", logger="ivfuse"):
        assert c.fused_dir("d", "m") == d
    assert sorted(p.name for p in d.iterdir()) == ["ok.png"] and (d / "ok.png").read_bytes() == png
    assert len(caplog.records) == 1 and "4 damaged cached fused image(s)" in caplog.text


BENCH = [
    "--methods",
    "average",
    "--data",
    "msrs:dev-val",
    "--protocols",
    "fusion,zero",
    "--limit",
    "2",
    "--no-speed",
    "--no-references",
    "-q",
]


def _untimed(x):
    """``x`` without wall-clock fields (``seconds``, ``*_s``, ``*time*``): they differ between equal runs."""
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if not (k == "seconds" or k.endswith("_s") or "time" in k)}
    if isinstance(x, list):
        return [_untimed(v) for v in x]
    return x


def _digest(out: Path) -> dict:
    """What a bench computed: its result entries (without the checksum) and fused images, by relative path."""
    from ivfuse.bench.cache import CHECKSUM_KEY

    res = {}
    for p in sorted((out / "cache").rglob("*")):
        if p.suffix == ".json":
            d = json.loads(p.read_text())
            d.pop(CHECKSUM_KEY, None)
            res[str(p.relative_to(out))] = json.dumps(_untimed(d), sort_keys=True)
        elif p.suffix == ".png":
            res[str(p.relative_to(out))] = p.read_bytes()
    return res


def test_two_benches_on_one_out_then_damaged_cache_is_recomputed(tmp_path):
    """Two real ``ivfuse bench`` processes on the same ``--out`` at once: both succeed and every cache entry checks out
    (result checksums, PNG CRCs), with no temporary file left. Then damaged entries (a torn result file, a truncated
    fused PNG) are recomputed by the next run, exactly those, to the same values."""
    import subprocess

    from conftest import need

    from ivfuse.bench import run_bench
    from ivfuse.bench.cache import CHECKSUM_KEY, _checksum, valid_png

    need("data/MSRS/labels_det/infrared")
    need("weights")
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "ivfuse", "bench", *BENCH, "--out", str(out)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(2)
    ]
    for p in procs:
        _, e = p.communicate(timeout=600)
        assert p.returncode == 0, e[-2000:]
    results, images = sorted((out / "cache").rglob("*.json")), sorted((out / "cache").rglob("*.png"))
    assert len(results) == 2 and len(images) == 2  # fusion + zero of one method; its two fused pairs
    for r in results:
        d = json.loads(r.read_text())
        assert d.pop(CHECKSUM_KEY) == _checksum(d), r
    assert all(valid_png(p) for p in images)
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary file left behind
    rj = json.loads((out / "results.json").read_text())
    assert rj["datasets"]["msrs:dev-val"]["fusion"]["average"]["n_images"] == 2
    ref = _digest(out)
    # damage one result entry and one fused image, rerun: exactly those are recomputed, to the same values
    res = sorted((out / "cache" / "results" / "fusion").rglob("*.json"))[0]
    res.write_text(res.read_text()[:100])
    img = images[0]
    img.write_bytes(img.read_bytes()[:1000])
    r = run_bench(
        "average",
        data="msrs:dev-val",
        protocols="fusion,zero",
        out=out,
        limit=2,
        speed=False,
        references=False,
        progress=False,
    )
    c = r["meta"]["cache"]
    assert c["fused_written"] == 1 and c["result_misses"] == 1 and c["result_hits"] == 1, c
    assert _digest(out) == ref


# -- training: SIGKILL at any point, resume, the same weights --------------------------------------------------------

#: a tiny lite run: 4 epochs of 2 batches of 2 crops of 64 x 64, fusion losses only (no teacher), no validation
LITE = [
    "epochs=4",
    "max_batches=2",
    "batch=2",
    "crop=[64, 64]",
    "val.max=0",
    "teacher.method=null",
    "loss.ssim=1",
    "loss.gradient=10",
]


def _train_cmd(method: str, out: Path, items: list[str]) -> list[str]:
    return [sys.executable, "-m", "ivfuse", "train", method, "-q", f"out={out}", *items]


def _train_proc(method: str, out: Path, items: list[str], **env):
    import subprocess

    return subprocess.run(_train_cmd(method, out, items), capture_output=True, text=True, env=_env(**env), timeout=600)


def _modules(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["modules"]


def _bitwise_equal(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(
        a[m].keys() == b[m].keys() and all(torch.equal(a[m][k], b[m][k]) for k in a[m]) for m in a
    )


def test_checkpoint_seal_detects_damage_and_falls_back_to_the_previous(tmp_path, caplog):
    import torch

    from ivfuse.checkpoint import load_checkpoint, previous_of, save_checkpoint

    p = tmp_path / "last.pt"
    save_checkpoint(p, {"w": torch.zeros(1000), "epoch": 1}, keep_previous=True)
    assert not previous_of(p).exists()  # nothing to keep yet
    save_checkpoint(p, {"w": torch.ones(1000), "epoch": 2}, keep_previous=True)
    assert load_checkpoint(previous_of(p))["epoch"] == 1 and load_checkpoint(p)["epoch"] == 2
    assert torch.load(p, weights_only=True)["epoch"] == 2  # a sealed file is an ordinary torch checkpoint
    good = p.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01  # inside the tensor data: torch.load alone would not notice
    for what, data in {
        "flipped": bytes(flipped),
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "seal cut": good[:-10],
    }.items():
        p.write_bytes(data)
        caplog.clear()
        with caplog.at_level("WARNING", logger="ivfuse"):
            ck = load_checkpoint(p)
        assert ck["epoch"] == 1 and torch.equal(ck["w"], torch.zeros(1000)), what
        assert len(caplog.records) == 1 and "using the previous checkpoint" in caplog.text and str(p) in caplog.text, (
            what
        )
    previous_of(p).unlink()
    p.write_bytes(bytes(flipped))
    with pytest.raises(InputError, match=r"last.pt: damaged checkpoint \(checksum mismatch\)"):
        load_checkpoint(p)
    unsealed = tmp_path / "old.pt"  # written before the seal (or by torch.save): loads as before
    torch.save({"epoch": 7}, unsealed)
    assert load_checkpoint(unsealed) == {"epoch": 7}


@pytest.mark.realdata
def test_lite_training_killed_anywhere_resumes_to_the_same_weights(tmp_path, capsys):
    """``ivfuse train lite`` killed during a torn first write of ``last.pt`` (half a file renamed over it, as a power
    loss can leave), rerun: the damaged ``last.pt`` is detected and the previous one (the run's starting state) used
    with a one-line warning; that rerun SIGKILLed inside its 3rd checkpoint write (half a temporary file), rerun
    again: the final weights equal an uninterrupted run's bit for bit."""
    import torch
    from conftest import need

    need("data/MSRS")
    ref = tmp_path / "ref"
    p = _train_proc("lite", ref, LITE)  # the reference in a child too: same threads (1) as the killed runs
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "run"
    p = _train_proc("lite", run, LITE, IVFUSE_FAULT_WRITE="last.pt:1:torn")
    assert p.returncode == -9, p.stderr[-2000:]  # SIGKILL
    assert not (run / "final.pt").exists() and (run / "last.pt").stat().st_size < (ref / "last.pt").stat().st_size
    p = _train_proc("lite", run, LITE, IVFUSE_FAULT_WRITE="last.pt:3:kill")
    assert p.returncode == -9, p.stderr[-2000:]
    warn = [line for line in p.stderr.splitlines() if "warning" in line]
    assert len(warn) == 1 and f"{run / 'last.pt'}: " in warn[0], p.stderr
    assert f"using the previous checkpoint {run / 'last.prev.pt'}" in warn[0] and "resuming from" in p.stderr
    assert not (run / "final.pt").exists() and [f.name for f in run.glob(".last.pt.*")]  # the torn temporary file
    p = _train_proc("lite", run, LITE)
    assert p.returncode == 0 and "warning" not in p.stderr and "resuming from" in p.stderr, p.stderr[-2000:]
    assert _bitwise_equal(_modules(run / "final.pt"), _modules(ref / "final.pt"))
    # the 3rd epoch's rows were logged just before the kill in its checkpoint write: the resume cut them, so log.csv
    # has every row once, as the uninterrupted run's (times aside)
    assert _log_rows(run) == _log_rows(ref) and len(_log_rows(ref)) > 3
    changed = _modules(ref / "final.pt")  # the comparison can fail: one weight one ulp away is not equal
    t = changed["net"]["stem.weight"].view(-1)
    t[0] = torch.nextafter(t[0], torch.tensor(1.0))
    assert not _bitwise_equal(_modules(run / "final.pt"), changed)


def _log_rows(run):
    """log.csv's rows without the wall-clock columns (time, and each epoch's seconds)."""
    rows = [line.split(",", 1)[1] for line in (run / "log.csv").read_text().splitlines()[1:]]
    return [r for r in rows if r.split(",")[2] != "seconds"]


#: a tiny MetaFusion run (the stages pretrain_f, det_1, mfe_1 with an inner update), detector from scratch
METAFUSION = [
    "mode=metafusion",
    "fusion.width=0.125",
    "mfe.mid=4",
    "data.crop=[48, 48]",
    "data.det_crop=96",
    "data.batch=2",
    "data.det_batch=2",
    "data.max_batches=2",
    "epochs.pretrain=2",
    "epochs.det=1",
    "epochs.mfe=2",
    "inner.every=2",
    "inner.updates=1",
    "rounds=1",
    "val.max=0",
    "data.train=[{name: msrs, split: train}]",
    "detector.weights=scratch",
]


@pytest.mark.realdata
def test_metafusion_training_killed_in_a_torn_write_resumes_to_the_same_weights(tmp_path, capsys):
    """``ivfuse train metafusion`` killed in a torn 4th write of ``last.pt`` (inside det_1/mfe_1), rerun: the previous
    checkpoint is used with one warning and the final weights of F, MFE and the detector equal an uninterrupted
    run's bit for bit."""
    from conftest import need

    need("data/MSRS")
    ref = tmp_path / "ref"
    p = _train_proc("metafusion", ref, METAFUSION)  # the reference in a child too: same threads as the killed runs
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "run"
    p = _train_proc("metafusion", run, METAFUSION, IVFUSE_FAULT_WRITE="last.pt:4:torn")
    assert p.returncode == -9 and not (run / "final.pt").exists(), p.stderr[-2000:]
    p = _train_proc("metafusion", run, METAFUSION)
    assert p.returncode == 0, p.stderr[-2000:]
    warn = [line for line in p.stderr.splitlines() if "warning" in line]
    assert len(warn) == 1 and f"using the previous checkpoint {run / 'last.prev.pt'}" in warn[0], p.stderr
    got, want = _modules(run / "final.pt"), _modules(ref / "final.pt")
    assert set(want) >= {"F", "MFE"} and _bitwise_equal(got, want)


def _bench_recipes() -> dict[str, list[str]]:
    """The tiny runs of tim, occo and tsjnet: ``benchmarks/fault_injection.py``'s ``RECIPES`` (one definition;
    ``{tmp}``: the test's folder, where the first run caches OCCO's MobileSAM masks and TSJNet's pseudo-masks for the
    others)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_injection.py"
    spec = importlib.util.spec_from_file_location("fault_injection", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.RECIPES


RECIPES = {k: v for k, v in _bench_recipes().items() if k in ("tim", "occo", "tsjnet")}

#: the faults of each recipe's test, one killed run each, in order; the n-th write counts in that run (a resumed run
#: starts counting again). TIM's writes of last.pt: search epochs 1-2, search end, derive end, meta_init epochs 1-2,
#: meta_init end, train epochs 1-2, train end; OCCO's and TSJNet's: epochs 1-3, end.
KILLS = {
    "tim": ["last.pt:5:torn", "last.pt:3:kill"],  # torn in meta_init (back to the derive end), killed at its end
    "occo": ["last.pt:2:torn", "last.pt:2:kill"],
    "tsjnet": ["last.pt:2:kill", "last.pt:1:torn"],  # the torn write is the resumed run's first
}

NEEDS = {
    "tim": ["data/MSRS", "data/LLVIP_sample", "data/TNO", "weights/yolov5n_coco_v6.1_state_dict.pt"],
    "occo": ["data/MSRS", "weights/mobile_sam.pt", "weights/vgg16_features_imagenet_fp16.pth"],
    "tsjnet": ["data/MSRS", "weights/yolov5n_coco_v6.1_state_dict.pt", "weights/espnetv2_s2.0_cityscapes_1024x512.pth"],
}


@pytest.mark.realdata
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_training_killed_in_checkpoint_writes_resumes_to_the_same_weights(recipe, tmp_path):
    """``ivfuse train tim|occo|tsjnet`` on a tiny config, SIGKILLed twice (one torn write of ``last.pt``, one kill
    inside the temporary file of a write; see ``KILLS``), each time rerun into the same folder: every rerun resumes
    (after a torn write: from ``last.prev.pt``, with one warning), and the final weights of every module equal an
    uninterrupted run's bit for bit (TIM: including the network derived after the search and the restored
    architecture weights; TSJNet: including the LR schedule on a plateau)."""
    from conftest import need

    for rel in NEEDS[recipe]:
        need(rel)
    items = [i.replace("{tmp}", str(tmp_path)) for i in RECIPES[recipe]]
    ref = tmp_path / "ref"
    p = _train_proc(recipe, ref, items)  # the reference in a child too: same threads (1) as the killed runs
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "run"
    torn_before = False
    for i, fault in enumerate(KILLS[recipe]):
        p = _train_proc(recipe, run, items, IVFUSE_FAULT_WRITE=fault)
        assert p.returncode == -9, (fault, p.stderr[-2000:])  # SIGKILL
        assert not (run / "final.pt").exists()
        warn = [line for line in p.stderr.splitlines() if "warning" in line and "last.pt" in line]
        if torn_before:
            assert len(warn) == 1 and f"using the previous checkpoint {run / 'last.prev.pt'}" in warn[0], p.stderr
        else:
            assert not warn, p.stderr
        assert ("resuming from" in p.stderr) == (i > 0), p.stderr[-2000:]
        torn_before = fault.endswith(":torn")
    p = _train_proc(recipe, run, items)
    assert p.returncode == 0 and "resuming from" in p.stderr, p.stderr[-2000:]
    assert ("using the previous checkpoint" in p.stderr) == torn_before, p.stderr[-2000:]
    got, want = _modules(run / "final.pt"), _modules(ref / "final.pt")
    assert want and all(want.values()) and _bitwise_equal(got, want)


def _torchrun_cmd(out: Path, items: list[str]) -> list[str]:
    """``torchrun --standalone --nproc_per_node 2 --max-restarts 1 -m ivfuse train lite``: gloo on the CPU."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--max-restarts",
        "1",
        "-m",
        "ivfuse",
        "train",
        "lite",
        "-q",
        f"out={out}",
        *items,
    ]


def _workers(tag: str) -> dict[int, str]:
    """pid -> ``RANK`` of the torchrun workers whose environment holds ``IVFUSE_TEST_TAG=tag`` (not the agent)."""
    found = {}
    for d in Path("/proc").iterdir():
        try:
            env = (d / "environ").read_bytes().split(b"\0") if d.name.isdigit() else []
        except OSError:
            continue
        if f"IVFUSE_TEST_TAG={tag}".encode() in env:
            rank = [e[5:].decode() for e in env if e.startswith(b"RANK=")]
            if rank:
                found[int(d.name)] = rank[0]
    return found


@pytest.mark.realdata
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the torchrun workers through /proc")
def test_torchrun_worker_killed_mid_epoch_restarts_and_resumes_to_the_same_weights(tmp_path):
    """``torchrun --nproc_per_node 2 --max-restarts 1 -m ivfuse train lite`` (gloo, CPU): rank 1 SIGKILLed once the
    first epoch's checkpoint exists (in the next epoch). torchrun stops rank 0, restarts both, they resume from
    ``last.pt`` and the final weights equal an uninterrupted 2-process run's bit for bit. Before the restart store of
    ``ivfuse.engine.distributed`` the restarted workers hung in gloo's connection (stale keys in torchrun's store)."""
    import signal
    import subprocess
    import time
    import uuid

    from conftest import need

    need("data/MSRS")
    items = [*LITE, "epochs=6", "max_batches=4"]  # longer epochs: the kill lands inside one
    ref, run = tmp_path / "ref", tmp_path / "run"
    p = subprocess.run(_torchrun_cmd(ref, items), capture_output=True, text=True, env=_env(), timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(
        _torchrun_cmd(run, items),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(IVFUSE_TEST_TAG=tag),
    )
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and not (run / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        victims = [pid for pid, rank in _workers(tag).items() if rank == "1"]
        assert proc.poll() is None and len(victims) == 1, "the run ended before its first checkpoint"
        os.kill(victims[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert f"local_rank: 1 (pid: {victims[0]})" in err and "exitcode: -9" in err, err[-3000:]  # torchrun saw the kill
    resumed = [line for line in err.splitlines() if line.startswith(f"ivfuse: resuming from {run / 'last.pt'}")]
    assert len(resumed) == 1, err[-3000:]
    assert 1 <= int(resumed[0].rsplit(" ", 1)[1]) < 6, resumed  # "... after stage train epoch N": killed mid-run
    assert _bitwise_equal(_modules(run / "final.pt"), _modules(ref / "final.pt"))
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2


# -- folder fusion: SIGKILL mid-folder, resume with --skip-existing ---------------------------------------------------


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.mark.parametrize("victim", ["p3.png"])
def test_fuse_folder_killed_midway_resumes_with_skip_existing_to_the_same_bytes(victim, tmp_path, capsys):
    """``ivfuse fuse`` on a folder of 6 pairs, SIGKILLed inside the write of one image (half its temporary file
    written): ``OUT`` holds only complete images, each equal to an uninterrupted run's; a rerun with
    ``--skip-existing`` fuses the rest (not the finished ones again), removes the killed run's staging folder, and
    every output equals the uninterrupted run's bytes."""
    import subprocess

    from ivfuse.bench.cache import valid_png

    ir, vi = _pairs(tmp_path / "d", n=6)
    ref = tmp_path / "ref"
    args = ["fuse", "--ir", str(ir), "--vis", str(vi), "--method", "laplacian", "-q"]
    rc, _, _ = _cli(capsys, *args, "-o", ref)
    assert rc == 0 and len(_outputs(ref)) == 6
    want = _outputs(ref)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ivfuse", *args, "-o", str(out)]
    p = subprocess.run(
        cmd, capture_output=True, text=True, env=_env(IVFUSE_FAULT_WRITE=f"{victim}:1:kill"), timeout=600
    )
    assert p.returncode == -9, p.stderr[-2000:]
    done = _outputs(out) if out.is_dir() else {}
    assert len(done) == int(victim[1]), sorted(done)  # the pairs are fused in name order
    assert all(valid_png(out / n) and b == want[n] for n, b in done.items())  # never a partial image in OUT
    before = {n: (out / n).stat().st_mtime_ns for n in done}
    p = subprocess.run([*cmd, "--skip-existing"], capture_output=True, text=True, env=_env(), timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert _outputs(out) == want
    assert {n: (out / n).stat().st_mtime_ns for n in done} == before  # the finished ones were not fused again
    assert not [x for x in out.iterdir() if x.name.startswith(".")]  # the staging folder of the killed run is gone


# -- a full disk: RLIMIT_FSIZE in a child process, and ENOSPC in the middle of a training ----------------------------


def _fsize_limit(limit: int):
    """``preexec_fn`` of a child whose files cannot grow past ``limit`` bytes: a write beyond fails with ``EFBIG``
    (``SIGXFSZ`` ignored, as a full disk's ``ENOSPC`` fails a write instead of killing the process)."""

    def limit_child() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_child


def _ivfuse_proc(*args, limit: int | None = None, **env):
    """``python -m ivfuse ARGS`` in a child (one thread), its files limited to ``limit`` bytes when given."""
    import subprocess

    cmd = [sys.executable, "-m", "ivfuse", *map(str, args)]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=600,
        preexec_fn=_fsize_limit(limit) if limit else None,
    )


def _disk_full_error(stderr: str, path: Path) -> str:
    """The one error line of a run stopped by a full disk, naming ``path``; no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("ivfuse: error: ")]
    assert len(lines) == 1 and stderr.rstrip().endswith(lines[0]), stderr[-3000:]
    assert lines[0].startswith(f"ivfuse: error: {path}: cannot be written (") and "free space and rerun" in lines[0], (
        lines
    )
    return lines[0]


def _hidden(folder: Path) -> list[str]:
    """Temporary files and staging folders (``.name*``) left anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def test_disk_full_in_fuse_folder_is_a_one_line_error_and_a_rerun_completes(tmp_path):
    """``ivfuse fuse`` on a folder whose third output cannot be written (its PNG is larger than the file-size limit,
    the first two are small): exit status 2 and one line naming ``OUT/p2.png`` and the two finished images kept;
    ``OUT`` holds only those two, complete and equal to an uninterrupted run's, no temporary file or staging folder.
    A rerun without the limit (``--skip-existing``) completes and every output equals the uninterrupted run's."""
    ir, vi = tmp_path / "d" / "ir", tmp_path / "d" / "vi"
    ir.mkdir(parents=True)
    vi.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):  # p0, p1 flat (fused PNG ~100 bytes), p2 noise (~9 kB)
        a = rng.integers(0, 256, (48, 64), dtype=np.uint8) if i == 2 else np.full((48, 64), 40 * i, np.uint8)
        Image.fromarray(a).save(ir / f"p{i}.png")
        Image.fromarray(np.stack([a] * 3, -1)).save(vi / f"p{i}.png")
    args = ["fuse", "--ir", ir, "--vis", vi, "--method", "average", "-q"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    p = _ivfuse_proc(*args, "-o", ref)
    assert p.returncode == 0, p.stderr
    want = _outputs(ref)
    assert len(want) == 3 and max(len(want[n]) for n in ("p0.png", "p1.png")) < 2000 < len(want["p2.png"])
    p = _ivfuse_proc(*args, "-o", out, limit=2000)
    assert p.returncode == 2
    err = _disk_full_error(p.stderr, out / "p2.png")
    assert "File too large" in err and f"2 finished images kept in {out} (resume with --skip-existing)" in err
    assert _outputs(out) == {n: want[n] for n in ("p0.png", "p1.png")} and not _hidden(out)
    p = _ivfuse_proc(*args, "-o", out, "--skip-existing")
    assert p.returncode == 0, p.stderr
    assert _outputs(out) == want and not _hidden(out)


@pytest.mark.realdata
def test_disk_full_in_bench_is_a_one_line_error_and_a_rerun_completes(tmp_path):
    """``ivfuse bench`` (``average`` on 2 MSRS dev-val pairs) with files limited to 20 kB: the first fused image
    (~300 kB) cannot be cached; then, its cache complete, limited to 70 kB: a figure of the report (~80 kB) cannot be
    written. Each time exit status 2, one line naming the file, no temporary file, every cache entry that exists
    checks out. A rerun without the limit completes with a ``results.json`` equal to an uninterrupted run's (apart
    from timings)."""
    from conftest import need

    from ivfuse.bench.cache import CHECKSUM_KEY, _checksum, valid_png

    need("data/MSRS")
    args = [
        "bench",
        "--methods",
        "average",
        "--data",
        "msrs:dev-val",
        "--limit",
        "2",
        "--protocols",
        "fusion",
        "--no-speed",
        "--no-references",
        "-q",
    ]
    ref, out = tmp_path / "ref", tmp_path / "out"
    p = _ivfuse_proc(*args, "--out", ref)
    assert p.returncode == 0, p.stderr[-2000:]

    def results(folder: Path) -> dict:
        r = json.loads((folder / "results.json").read_text().replace(str(folder), "OUT"))  # fused_dirs
        for k in ("command", "cache", "wall_seconds", "finished"):  # how, where and when it ran
            r["meta"].pop(k)
        return _untimed(r)

    def check_cache() -> None:
        for r in (out / "cache").rglob("*.json"):
            d = json.loads(r.read_text())
            assert d.pop(CHECKSUM_KEY) == _checksum(d), r
        assert all(valid_png(q) for q in (out / "cache").rglob("*.png"))
        assert not _hidden(out), _hidden(out)

    p = _ivfuse_proc(*args, "--out", out, limit=20_000)
    assert p.returncode == 2
    pngs = sorted((out / "cache" / "fused").rglob("*"))
    assert "File too large" in _disk_full_error(p.stderr, pngs[-1] / "00016N.png")  # the first pair in name order
    assert not list((out / "cache").rglob("*.png")) and not (out / "results.json").exists()
    check_cache()
    p = _ivfuse_proc(*args, "--out", out)
    assert p.returncode == 0, p.stderr[-2000:]
    assert results(out) == results(ref)
    (out / "report.html").unlink()
    shutil.rmtree(out / "assets")
    p = _ivfuse_proc(*args, "--out", out, limit=70_000)  # cached results reused; the report's box plot is ~80 kB
    assert p.returncode == 2
    _disk_full_error(p.stderr, out / "assets" / "msrs_dev-val_fusion_box.png")
    check_cache()
    assert results(out) == results(ref) and not (out / "report.html").exists()
    p = _ivfuse_proc(*args, "--out", out)
    assert p.returncode == 0 and (out / "report.html").is_file(), p.stderr[-2000:]


@pytest.mark.realdata
def test_disk_full_in_training_is_a_one_line_error_and_a_rerun_resumes_to_the_same_weights(tmp_path):
    """``ivfuse train lite`` (tiny): with files limited to 20 kB the first checkpoint (the starting state,
    ``last.prev.pt``, ~100 kB) cannot be written: exit status 2, one line naming it, only ``config.json`` left. With
    the disk filling up inside the 3rd write of ``last.pt`` (``IVFUSE_FAULT_WRITE=last.pt:3:enospc``: half of the
    temporary file written, then ``ENOSPC``): one line naming ``last.pt``, its temporary file removed, ``last.pt``
    the intact epoch-2 checkpoint. A rerun resumes from it and ends bitwise equal to an uninterrupted run."""
    from conftest import need

    from ivfuse.checkpoint import load_checkpoint

    need("data/MSRS")
    ref, run = tmp_path / "ref", tmp_path / "run"
    p = _ivfuse_proc("train", "lite", "-q", f"out={run}", *LITE, limit=20_000)
    assert p.returncode == 2
    assert "File too large" in _disk_full_error(p.stderr, run / "last.prev.pt")
    assert sorted(f.name for f in run.iterdir()) == ["config.json"]
    p = _ivfuse_proc("train", "lite", "-q", f"out={run}", *LITE, IVFUSE_FAULT_WRITE="last.pt:3:enospc")
    assert p.returncode == 2
    assert "No space left on device" in _disk_full_error(p.stderr, run / "last.pt")
    assert not _hidden(run) and not (run / "final.pt").exists()
    assert load_checkpoint(run / "last.pt")["progress"]["done"] == {"train": 2}
    p = _train_proc("lite", ref, LITE)
    assert p.returncode == 0, p.stderr[-2000:]
    p = _train_proc("lite", run, LITE)
    assert p.returncode == 0 and "resuming from" in p.stderr and "warning" not in p.stderr, p.stderr[-2000:]
    assert _bitwise_equal(_modules(run / "final.pt"), _modules(ref / "final.pt"))

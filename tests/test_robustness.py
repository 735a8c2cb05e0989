"""Issue 7: a fresh install passes; labels that match no image, duplicate union boxes, interrupted folder fusion,
one-line errors for devices and method options, eval subsets, and what the package advertises."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import need
from ivfuse.cli import main
from ivfuse.data.labels import Boxes, merge_boxes
from ivfuse.errors import InputError, IvfuseWarning
from ivfuse.fusion import FusionInterrupted, fuse_folder

REPO = Path(__file__).resolve().parents[1]
MSRS_NAMES = ("person", "bicycle", "car")


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------------------------------ 1. fresh install / CI
def _optional_imports(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``try: ... except ImportError`` (optional by design: the code works without them)."""
    out = set()
    for t in ast.walk(tree):
        if isinstance(t, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in t.handlers
        ):
            out |= {id(n) for stmt in t.body for n in ast.walk(stmt)}
    return out


def _third_party_imports() -> set[str]:
    mods = set()
    for f in (REPO / "src" / "ivfuse").rglob("*.py"):
        tree = ast.parse(f.read_text())
        optional = _optional_imports(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "ivfuse"}


def test_every_imported_package_is_a_declared_dependency():
    """A module the package imports but pyproject.toml does not declare (cv2 was one) breaks a fresh install."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    dists = metadata.packages_distributions()
    undeclared = {}
    for mod in sorted(_third_party_imports()):
        owners = {d.lower().replace("_", "-") for d in dists.get(mod, [])}
        assert owners, f"module {mod} is imported by ivfuse but not installed (is it declared in pyproject.toml?)"
        if not owners & declared:
            undeclared[mod] = sorted(owners)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def _fake_python(tmp: Path, log: Path, pytest_rc: int) -> Path:
    """A stand-in for python3 whose ``-m venv DIR`` makes a venv whose pip/python only log what they are asked."""
    fake = tmp / "fake_python3"
    python_stub = (
        '#!/usr/bin/env bash\\nif [ "$1" = "-c" ]; then echo "$VIRTUAL_ENV"; exit 0; fi\\n'
        f'echo "venv-python $*" >> {log}\\n[ "$*" = "-m pytest -q" ] && exit {pytest_rc}\\nexit 0\\n'
    )
    fake.write_text(
        textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "system-python $*" >> {log}
        [ "$1 $2" = "-m venv" ] || exit 9
        d="$(pwd)/$3"; mkdir -p "$d/bin"
        printf 'export VIRTUAL_ENV=%s\\nexport PATH=%s/bin:$PATH\\n' "$d" "$d" > "$d/bin/activate"
        printf '{python_stub}' > "$d/bin/python"
        printf '#!/usr/bin/env bash\\necho "venv-pip $*" >> {log}\\n' > "$d/bin/pip"
        printf '#!/usr/bin/env bash\\necho "venv-ruff $*" >> {log}\\n' > "$d/bin/ruff"
        chmod +x "$d/bin/python" "$d/bin/pip" "$d/bin/ruff"
        """)
    )
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("pytest_rc, want_rc", [(0, 0), (1, 1), (5, 1)])
def test_ci_run_installs_into_a_fresh_venv(tmp_path, pytest_rc, want_rc):
    """.ci/run creates its own venv and runs the README's command inside it, then the venv's ruff (after a passing
    suite); 'no tests collected' (5) fails."""
    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    (clone / ".ci" / "run").write_text((REPO / ".ci" / "run").read_text())
    (clone / ".ci-venv").mkdir()
    (clone / ".ci-venv" / "stale").write_text("left from an earlier run")
    log = tmp_path / "log"
    env = {**os.environ, "PYTHON": str(_fake_python(tmp_path, log, pytest_rc))}
    r = subprocess.run(["bash", str(clone / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == want_rc, r.stdout + r.stderr
    calls = log.read_text().splitlines()
    readme_cmd = 'pip install -e ".[test]" && python -m pytest -q'
    assert readme_cmd in (REPO / "README.md").read_text()
    lint = ["venv-ruff check src tests benchmarks"] if pytest_rc in (0, 5) else []
    assert (
        calls
        == [
            "system-python -m venv .ci-venv",
            "venv-python -m pip install -q --upgrade pip",
            "venv-pip install -e .[test]",
            "venv-python -m pytest -q",
        ]
        + lint
    )
    assert not (clone / ".ci-venv" / "stale").exists(), "the venv must be fresh, not reused"
    assert "/.ci-venv/" in (REPO / ".gitignore").read_text().splitlines()


# ------------------------------------------------------------------------------- 2. labels that match no image
def _label_tree(tmp: Path, images: list[str], labels: list[str]) -> tuple[Path, Path]:
    img_d, lab_d = tmp / "images", tmp / "labels"
    img_d.mkdir()
    lab_d.mkdir()
    for n in images:
        Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(img_d / f"{n}.png")
    for n in labels:
        (lab_d / f"{n}.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (lab_d / "classes.txt").write_text("person\nbicycle\ncar\n")
    return img_d, lab_d


def test_labels_matching_no_image_are_an_error(tmp_path):
    from ivfuse.tasks.downstream import load_detection_set

    img_d, lab_d = _label_tree(tmp_path, ["a", "b"], ["x", "y", "z"])
    with pytest.raises(InputError, match=r"labels: none of its 3 label files matches an image in .*images"):
        load_detection_set(img_d, lab_d)
    parent = tmp_path / "labels_det"
    (parent / "infrared").mkdir(parents=True)
    (parent / "classes.txt").write_text("person\n")
    with pytest.raises(InputError, match="labels_det: no label files .*sub-folders infrared"):
        load_detection_set(img_d, parent)


def test_images_without_labels_and_labels_without_images_are_reported(tmp_path):
    from ivfuse.tasks.downstream import load_detection_set

    img_d, lab_d = _label_tree(tmp_path, ["a", "b", "c"], ["a", "q"])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        data = load_detection_set(img_d, lab_d)
    msgs = [str(w.message) for w in rec if issubclass(w.category, IvfuseWarning)]
    assert any("2 of 3 images have no label file" in m and "b, c" in m for m in msgs), msgs
    assert any("1 of 2 label files have no image" in m and "q" in m for m in msgs), msgs
    assert [len(b) for b in data.boxes] == [1, 0, 0]


def test_cli_downstream_with_a_wrong_label_folder(capsys, tmp_path):
    img_d, lab_d = _label_tree(tmp_path, ["a"], ["b"])
    rc, _, err = run(capsys, "downstream", "detect", "--images", img_d, "--labels", lab_d, "-q")
    assert rc == 2 and err.count("\n") == 1 and "none of its 1 label files matches an image" in err


def test_segmentation_masks_are_matched_too(tmp_path):
    from ivfuse.tasks.downstream import load_segmentation_set

    img_d, _ = _label_tree(tmp_path, ["a", "b"], [])
    m = tmp_path / "masks"
    m.mkdir()
    for n in ("x", "y"):
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(m / f"{n}.png")
    with pytest.raises(InputError, match="masks: none of its 2 mask images matches an image"):
        load_segmentation_set(img_d, m)
    for n in ("a", "b"):
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(m / f"{n}.png")
    with pytest.warns(IvfuseWarning, match="2 of 4 masks have no image"):
        assert len(load_segmentation_set(img_d, m)) == 2


# ------------------------------------------------------------------------------------ 3. union without duplicates
def test_merge_boxes_hand_case():
    ir = Boxes(torch.tensor([[10.0, 10, 50, 90], [100, 100, 200, 160]]), torch.tensor([0, 2]), MSRS_NAMES)
    vis = Boxes(
        torch.tensor(
            [
                [14.0, 12, 54, 92],  # same person, IoU 0.75 -> merged into the infrared box
                [10, 10, 50, 90],  # same place, but a bicycle: another object
                [150, 100, 250, 160],  # the car moved half its width: IoU 1/3 -> kept
                [300, 300, 320, 340],  # only in the visible set
            ]
        ),
        torch.tensor([0, 1, 2, 0]),
        MSRS_NAMES,
    )
    out = merge_boxes(ir, vis, 0.5)
    assert out.labels.tolist() == [0, 2, 1, 2, 0]
    assert torch.equal(out.xyxy[:2], ir.xyxy), "the infrared boxes are kept as drawn"
    assert torch.equal(out.xyxy[2:], vis.xyxy[1:])
    assert len(merge_boxes(ir, vis, 0.3)) == 4  # IoU 1/3 > 0.3: the car merges too
    assert len(merge_boxes(ir, vis, None)) == len(ir.union(vis)) == 6
    assert len(merge_boxes(ir, vis, 0.79)) == 6
    half_a = Boxes(torch.tensor([[0.0, 0, 30, 10]]), torch.tensor([2]), MSRS_NAMES)
    half_b = Boxes(torch.tensor([[10.0, 0, 40, 10]]), torch.tensor([2]), MSRS_NAMES)  # IoU exactly 0.5
    assert len(merge_boxes(half_a, half_b, 0.5)) == 2, "IoU must exceed the threshold, not equal it"
    assert len(merge_boxes(half_a, half_b, 0.49)) == 1
    # one-to-one: two infrared people cannot both absorb one visible box
    two = Boxes(torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11]]), torch.tensor([0, 0]), MSRS_NAMES)
    one = Boxes(torch.tensor([[0.0, 0, 10, 10.5]]), torch.tensor([0]), MSRS_NAMES)
    assert len(merge_boxes(two, one)) == 2
    with pytest.raises(InputError):
        merge_boxes(ir, vis, 1.5)


@pytest.mark.realdata
def test_msrs_union_merges_the_duplicate_boxes():
    """The issue's count: 466 of the 1184 infrared boxes of the 241 test pairs have a same-class visible box with
    IoU > 0.5; the merged union drops one visible box per one-to-one match, and the CLI path agrees."""
    from torchvision.ops import box_iou

    from ivfuse.data import load_dataset
    from ivfuse.tasks.downstream import load_detection_set

    root = need("data/MSRS")
    sets = {k: load_dataset("msrs", root=root, split="test", det_labels=k) for k in ("infrared", "visible", "union")}
    concat = load_dataset("msrs", root=root, split="test", det_labels="union", union_iou=None)
    n_dup = n_ir = n_vis = n_union = n_concat = 0
    for i, (key, ip, _) in enumerate(sets["infrared"].pairs):
        w, h = Image.open(ip).size
        a, b = (sets[k].read_boxes(key, w, h) for k in ("infrared", "visible"))
        u = sets["union"].read_boxes(key, w, h)
        n_ir, n_vis, n_union, n_concat = (
            n_ir + len(a),
            n_vis + len(b),
            n_union + len(u),
            n_concat + len(concat.read_boxes(key, w, h)),
        )
        assert torch.equal(u.xyxy[: len(a)], a.xyxy), "every infrared box is kept"
        if len(a) and len(b):
            m = box_iou(a.xyxy, b.xyxy) * (a.labels[:, None] == b.labels[None]).float()
            n_dup += int((m > 0.5).any(1).sum())
            dropped = len(a) + len(b) - len(u)
            assert dropped <= int((m > 0.5).any(0).sum()) and dropped <= int((m > 0.5).any(1).sum())
            kept_vis = u.xyxy[len(a) :]
            for j in range(len(b)):  # a visible box is dropped only if it duplicates an infrared box
                if not (kept_vis == b.xyxy[j]).all(1).any():
                    assert (m[:, j] > 0.5).any()
    assert len(sets["infrared"]) == 241 and (n_ir, n_dup) == (1184, 466)
    assert n_concat == n_ir + n_vis == 1833
    assert n_union == 1368  # 465 one-to-one matches (one visible box is the best match of two infrared people)
    cli = load_detection_set(root / "ir", [root / "labels_det" / "infrared", root / "labels_det" / "visible"])
    by = dict(zip(cli.names, cli.boxes))
    assert sum(len(by[k]) for k in sets["union"].names) == n_union


@pytest.mark.realdata
def test_union_iou_option_is_checked(tmp_path, capsys):
    root = need("data/MSRS")
    from ivfuse.data import load_dataset

    with pytest.raises(InputError, match="union_iou"):
        load_dataset("msrs", root=root, split="test", det_labels="union", union_iou=2)
    rc, _, err = run(
        capsys,
        "downstream",
        "detect",
        "--images",
        root / "vi",
        "--labels",
        root / "labels_det" / "infrared",
        "--labels",
        root / "labels_det" / "visible",
        "--merge-iou",
        "-1",
    )
    assert rc == 2 and "--merge-iou -1.0: must lie in [0, 1]" in err


# ------------------------------------------------------------------------------------ 4. interrupted folder fusion
def _pairs(tmp: Path, n: int, size=(48, 64)) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    ir, vi = tmp / "ir", tmp / "vi"
    ir.mkdir()
    vi.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(ir / f"{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(vi / f"{i:02d}.png")
    return ir, vi


def test_stale_staging_folders_are_removed(tmp_path):
    ir, vi = _pairs(tmp_path, 2)
    out = tmp_path / "out"
    legacy, dead = out / ".ivfuse-k3j2x9", out / ".ivfuse-999999999-abc"
    for d in (legacy, dead):
        d.mkdir(parents=True)
        (d / "00.png").write_bytes(b"\x89PNG partial")
    live = out / f".ivfuse-{os.getppid()}-xyz"  # a run of a process that still exists is left alone
    live.mkdir()
    with pytest.warns(IvfuseWarning, match="removed 2 staging folder"):
        written = fuse_folder(ir, vi, out, "average", progress=False)
    assert len(written) == 2 and not legacy.exists() and not dead.exists() and live.exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["00.png", "01.png"]


def test_corrupt_pair_is_found_before_anything_is_written(tmp_path):
    ir, vi = _pairs(tmp_path, 4)
    data = (vi / "03.png").read_bytes()
    (vi / "03.png").write_bytes(data[: len(data) // 2])  # header intact, pixel data truncated
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"vi/03.png"):
        fuse_folder(ir, vi, out, "average", progress=False)
    assert not out.exists()


def test_continue_on_error_and_skip_existing(capsys, tmp_path):
    ir, vi = _pairs(tmp_path, 4)
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(vi / "01.png")  # wrong size
    out = tmp_path / "out"
    rc, stdout, err = run(
        capsys, "fuse", "--ir", ir, "--vis", vi, "-o", out, "--method", "average", "--continue-on-error", "-q"
    )
    assert rc == 1
    assert "vi/01.png: visible image is 64x40" in err and "1 of 4 pairs failed: 01" in err
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "02.png", "03.png"]
    # resume: only the missing outputs are made; existing ones are not rewritten
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(vi / "01.png")
    (out / "03.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    time.sleep(0.01)
    rc, stdout, _ = run(
        capsys, "fuse", "--ir", ir, "--vis", vi, "-o", out, "--method", "average", "--skip-existing", "-q"
    )
    assert rc == 0 and "fused 2 pairs" in stdout and "2 already there, skipped" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png", "02.png", "03.png"]


def test_ctrl_c_keeps_the_finished_images(tmp_path, monkeypatch):
    import ivfuse.fusion as fusion

    ir, vi = _pairs(tmp_path, 5)
    real, calls = fusion._fuse_pair, []

    def interrupted_at_third(*a, **k):
        calls.append(a[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(fusion, "_fuse_pair", interrupted_at_third)
    out = tmp_path / "out"
    with pytest.raises(FusionInterrupted, match="2 of 5 fused images are in .*skip-existing"):
        fuse_folder(ir, vi, out, "average", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png"]  # no staging folder left
    assert Image.open(out / "01.png").size == (64, 48)


_SLOW_FUSE = """
import sys, time
import ivfuse.fusion as f
real = f._fuse_pair
def slow(*a, **k):
    time.sleep(0.4)
    return real(*a, **k)
f._fuse_pair = slow
from ivfuse.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start_and_wait(args: list[str], out: Path, n_done: int) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", _SLOW_FUSE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        done = [f for f in out.glob("*.png")] if out.exists() else []
        if len(done) >= n_done:
            return p
        if p.poll() is not None:
            pytest.fail(f"fusion ended early: {p.communicate()}")
        time.sleep(0.05)
    p.kill()
    pytest.fail("fusion made no progress")


@pytest.mark.slow
def test_sigterm_and_kill_9_mid_run_then_resume(tmp_path):
    ir, vi = _pairs(tmp_path, 12)
    out = tmp_path / "out"
    args = ["fuse", "--ir", str(ir), "--vis", str(vi), "-o", str(out), "--method", "average", "-q"]
    p = _start_and_wait(args, out, 2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130 and "interrupted" in err and "--skip-existing" in err
    names = sorted(f.name for f in out.iterdir())
    assert 2 <= len(names) < 12 and all(not n.startswith(".") for n in names), names  # staging folder removed
    for n in names:
        Image.open(out / n).load()  # every file left is a complete image
    p = _start_and_wait(args + ["--skip-existing"], out, len(names) + 2)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    done = {f.name: f.stat().st_mtime_ns for f in out.glob("*.png")}
    r = subprocess.run(
        [sys.executable, "-m", "ivfuse.cli", *args, "--skip-existing"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert f"{len(done)} already there, skipped" in r.stdout
    assert sorted(f.name for f in out.iterdir()) == [f"{i:02d}.png" for i in range(12)]  # no .ivfuse-* left
    assert {n: (out / n).stat().st_mtime_ns for n in done} == done


# --------------------------------------------------------------------------------- 6. one-line errors, not tracebacks
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: --device cuda is valid here")
@pytest.mark.parametrize("mode", ["fuse", "downstream", "detect", "segment"])
@pytest.mark.parametrize(
    "device, msg",
    [
        ("cuda", "--device cuda: no CUDA GPU is available"),
        ("gpu", "--device gpu: not a torch device .*did you mean 'cuda'"),
    ],
)
def test_device_without_gpu(capsys, tmp_path, pair_dirs, mode, device, msg):
    ir, vi = pair_dirs
    args = {
        "fuse": ["fuse", "--ir", ir / "p0.png", "--vis", vi / "p0.png", "-o", tmp_path / "f.png"],
        "downstream": ["downstream", "detect", "--images", vi, "--labels", tmp_path],
        "detect": ["detect", "--images", vi, "-o", tmp_path / "d"],
        "segment": ["segment", "--images", vi, "-o", tmp_path / "s"],
    }[mode]
    rc, _, err = run(capsys, *args, "--device", device)
    assert rc == 2 and err.count("\n") == 1 and re.search(msg, err), err
    assert not (tmp_path / "f.png").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "opts, msg",
    [
        (
            ["--method", "laplacian", "--opt", "level=5"],
            "unknown option 'level' for method 'laplacian'; did you mean 'levels'?",
        ),
        (
            ["--method", "laplacian", "--opt", "levels=five"],
            "option 'levels' of method 'laplacian' must be int, got 'five'",
        ),
        (["--method", "laplacian", "--opt", "levels=0"], "method 'laplacian': levels must be >= 1"),
        (["--method", "gff", "--opt", "eps1=small"], "option 'eps1' of method 'gff' must be float, got 'small'"),
        (["--method", "gff", "--weights", "f.pt"], "method 'gff' has no learned weights"),
        (["--method", "average", "--opt", "levels=2"], "method 'average' takes no options"),
    ],
)
def test_method_option_errors(capsys, tmp_path, pair_dirs, opts, msg):
    ir, vi = pair_dirs
    rc, _, err = run(capsys, "fuse", "--ir", ir, "--vis", vi, "-o", tmp_path / "o", *opts)
    assert rc == 2 and err.count("\n") == 1 and msg in err, err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ 7. eval subsets
def test_eval_names_file_and_only_fused(capsys, tmp_path):
    ir, vi = _pairs(tmp_path, 4)
    out = tmp_path / "out"
    fuse_folder(ir, vi, out, "average", progress=False)
    full = tmp_path / "full.json"
    assert (
        run(
            capsys,
            "eval",
            "--ir",
            ir,
            "--vis",
            vi,
            "--fused",
            out,
            "--metrics",
            "en,qabf",
            "--workers",
            "1",
            "-q",
            "--out",
            full,
        )[0]
        == 0
    )
    full = json.loads(full.read_text())["per_image"]
    names = tmp_path / "names.txt"
    names.write_text("02.png\n00\n")
    res = tmp_path / "r.json"
    rc, _, _ = run(
        capsys,
        "eval",
        "--ir",
        ir,
        "--vis",
        vi,
        "--fused",
        out,
        "--metrics",
        "en,qabf",
        "--names",
        names,
        "--workers",
        "1",
        "-q",
        "--out",
        res,
    )
    r = json.loads(res.read_text())
    assert rc == 0 and list(r["per_image"]) == ["02", "00"]
    assert r["per_image"]["02"] == full["02"] and r["mean"]["en"] == pytest.approx(
        (full["00"]["en"] + full["02"]["en"]) / 2
    )
    (out / "01.png").unlink()
    (out / "03.png").unlink()
    rc, _, err = run(
        capsys,
        "eval",
        "--ir",
        ir,
        "--vis",
        vi,
        "--fused",
        out,
        "--metrics",
        "en",
        "--only-fused",
        "--workers",
        "1",
        "-q",
        "--out",
        res,
    )
    assert (
        rc == 0 and "ivfuse: warning:" in err and "2 of 4 source pairs have no fused image" in err and "01, 03" in err
    )
    assert list(json.loads(res.read_text())["per_image"]) == ["00", "02"]
    names.write_text("01\n")
    rc, _, err = run(capsys, "eval", "--ir", ir, "--vis", vi, "--fused", out, "--names", names, "-q")
    assert rc == 2 and "01 (no fused image)" in err


def test_eval_ir_norm_reads_16_bit_infrared_like_fuse(capsys, tmp_path):
    import tifffile

    from ivfuse.data.images import read_gray_u8, read_ir
    from ivfuse.metrics import create_metric

    ir, vi = _pairs(tmp_path, 2)
    ir16 = tmp_path / "ir16"
    ir16.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        tifffile.imwrite(ir16 / f"{i:02d}.tif", rng.integers(7000, 9000, (48, 64)).astype(np.uint16))
    out = tmp_path / "out"
    fuse_folder(ir16, vi, out, "average", ir_norm="percentile", progress=False)
    rc, _, err = run(
        capsys, "eval", "--ir", ir16, "--vis", vi, "--fused", out, "--metrics", "mi", "-q", "--workers", "1"
    )
    assert rc == 2 and "expect 8-bit" in err and "--ir-norm" in err
    res = tmp_path / "r.json"
    rc, _, err = run(
        capsys,
        "eval",
        "--ir",
        ir16,
        "--vis",
        vi,
        "--fused",
        out,
        "--metrics",
        "mi",
        "--ir-norm",
        "percentile",
        "-q",
        "--workers",
        "1",
        "--out",
        res,
    )
    assert rc == 0, err
    a = np.round(read_ir(ir16 / "00.tif", "percentile")[0].numpy().astype(np.float64) * 255)
    f, b = read_gray_u8(out / "00.png"), read_gray_u8(vi / "00.png")
    assert json.loads(res.read_text())["per_image"]["00"]["mi"] == pytest.approx(create_metric("mi").compute(f, a, b))


# ---------------------------------------------------------------------------------------------------- 8. smaller
def test_package_summary_names_only_existing_methods():
    from ivfuse.models import list_models

    import ivfuse

    methods = [
        "MetaFusion",
        "TSJNet",
        "TIM",
        "OCCO",
        "SeAFusion",
        "TarDAL",
        "IFCNN",
        "DIDFuse",
        "U2Fusion",
        "DenseFuse",
    ]
    summary = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["description"]
    texts = {
        "pyproject description": summary,
        "ivfuse docstring": ivfuse.__doc__,
        "README summary": (REPO / "README.md").read_text().split("## Command line")[0],
    }
    for where, text in texts.items():
        for m in methods:
            if re.search(rf"\b{m}\b", text):
                assert m.lower() in list_models(), f"{where} advertises {m}, which is not implemented"


def test_list_detectors_and_segmenters(capsys):
    rc, out, _ = run(capsys, "list", "detectors")
    assert rc == 0 and "yolov5n (default)" in out and "fasterrcnn_resnet50_fpn" in out
    rc, out, _ = run(capsys, "list", "segmenters")
    assert rc == 0 and "espnetv2" in out and "deeplabv3plus" in out


@pytest.mark.realdata
@pytest.mark.slow
def test_downstream_json_names_the_default_weights(capsys, tmp_path):
    root = need("data/MSRS")
    need("weights/yolov5n_coco_v6.1_state_dict.pt")
    img = tmp_path / "img"
    img.mkdir()
    for n in ("00004N", "00010N"):
        os.symlink((root / "vi" / f"{n}.png").resolve(), img / f"{n}.png")
    res = tmp_path / "r.json"
    rc, _, err = run(
        capsys,
        "downstream",
        "detect",
        "--images",
        img,
        "--labels",
        root / "labels_det" / "infrared",
        "--labels",
        root / "labels_det" / "visible",
        "-q",
        "--out",
        res,
    )
    assert "ivfuse: warning: " in err and "273 of 275 label files have no image" in err
    r = json.loads(res.read_text())
    assert rc == 0 and r["weights"] is not None and Path(r["weights"]).is_file()
    assert Path(r["weights"]).name == "yolov5n_coco_v6.1_state_dict.pt" and r["merge_iou"] == 0.5


@pytest.mark.realdata
@pytest.mark.slow
def test_segment_output_has_a_class_legend(capsys, tmp_path):
    from ivfuse.tasks.segmenters import CITYSCAPES_PALETTE

    src = need("data/MSRS/vi/00004N.png")
    need("weights/espnetv2_s2.0_cityscapes_1024x512.pth")
    rc, _, _ = run(capsys, "segment", "--images", src, "-o", tmp_path, "-q")
    assert rc == 0
    out = np.asarray(Image.open(tmp_path / "00004N.png").convert("RGB"))
    w = Image.open(src).size[0]
    assert out.shape[1] > 2 * w + 60, "a legend panel beside image | overlay"
    legend = out[:, 2 * w :].reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(legend, axis=0).tolist()}
    swatches = [tuple(c) for c in CITYSCAPES_PALETTE if tuple(c) in colours]
    assert len(swatches) >= 2, "swatches of the classes present are drawn in their palette colours"
    assert (legend == 255).all(1).mean() > 0.5, "white legend background"

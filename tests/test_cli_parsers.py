"""#21 item 4, one source of truth for the CLI: the options' defaults and choices come from the API (patch the API and
the parser follows), one device check and one AMP check for every mode and the library, one form of method options
(``--opt KEY=VALUE``) on every mode that builds a method, and every mode's ``--help`` shows each default. Parsers
only: nothing here fuses or trains."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

import ivfuse.cli as C
from ivfuse.cli import build_parser, main
from ivfuse.errors import InputError


def _sub(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser([argv[0]]).parse_args(list(argv))


def _blocks(text: str) -> dict[str, str]:
    """``--help`` text -> {first option string or positional name: its entry, whitespace collapsed}."""
    out: dict[str, list[str]] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("  ") and not line.startswith("   ") and line.strip():
            key = line.split()[0].rstrip(",")
            out[key] = [line]
        elif key and line.startswith("   "):
            out[key].append(line)
        else:
            key = None
    return {k: " ".join(" ".join(v).split()) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------ --help


@pytest.mark.parametrize("mode", list(C.MODES))
def test_every_mode_help_shows_every_default(mode, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    sp = _sub(build_parser([mode]))[mode]
    blocks = _blocks(sp.format_help())
    checked = 0
    for a in sp._actions:
        if a.nargs == 0 or a.default in (None, argparse.SUPPRESS):
            continue
        key = a.option_strings[0] if a.option_strings else (a.metavar or a.dest)
        assert key in blocks, (mode, key, sorted(blocks))
        shown = ",".join(a.default) if isinstance(a.default, (list, tuple)) else a.default
        assert f"(default: {shown})" in blocks[key], (mode, key, blocks[key])
        checked += 1
    assert checked or mode in ("eval", "list", "train")  # the modes whose options all default to None
    assert {"-q", "-v"} <= set(sp._option_string_actions), f"{mode}: -q/-v on every mode"
    assert ("--opt" in sp._option_string_actions) == (mode in ("fuse", "export", "train", "bench")), mode


def test_help_formatter_sees_a_default_added_later(monkeypatch):
    """The check above is not vacuous: an option with a default and no text gets ``(default: X)``; a flag does not."""
    p = argparse.ArgumentParser(formatter_class=C._Help)
    p.add_argument("--x", default=7, help="x")
    p.add_argument("--flag", action="store_true", help="a flag")
    b = _blocks(p.format_help())
    assert b["--x"].endswith("x (default: 7)") and "default" not in b["--flag"]


def test_ivfuse_help_imports_no_torch():
    """``ivfuse --help`` (and a mistyped mode) builds no mode's options, so it imports neither torch nor the API."""
    code = (
        "import sys\nfrom ivfuse.cli import main\n"
        "for argv in (['--help'], ['fusee']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "False", r.stdout + r.stderr
    assert "did you mean 'fuse'" in r.stderr


# ------------------------------------------------------------------------------------------------ API defaults


def test_defaults_and_choices_follow_the_api(monkeypatch):
    import ivfuse.data.images
    import ivfuse.export
    import ivfuse.fusion
    import ivfuse.masks
    import ivfuse.tasks.detectors
    import ivfuse.tasks.downstream
    import ivfuse.tasks.segmenters
    import ivfuse.utils

    monkeypatch.setattr(ivfuse.fusion, "DEFAULT_METHOD", "gff")
    monkeypatch.setitem(ivfuse.fusion.fuse_folder.__kwdefaults__, "batch", 3)
    monkeypatch.setattr(ivfuse.data.images, "IR_NORMS", ("minmax", "scale"))
    monkeypatch.setattr(ivfuse.utils, "AMP_MODES", ("none", "bf16"))
    a = _parse("fuse", "--ir", "i", "--vis", "v", "-o", "o")
    assert (a.method, a.batch, a.ir_norm, a.device) == ("gff", 3, "minmax", "cpu")
    fuse = _sub(build_parser(["fuse"]))["fuse"]._option_string_actions
    assert fuse["--ir-norm"].choices == ("minmax", "scale") and fuse["--amp"].choices == ("none", "bf16")

    monkeypatch.setattr(ivfuse.tasks.detectors, "DEFAULT_DETECTOR", "yolov5s")
    monkeypatch.setattr(ivfuse.tasks.detectors, "DETECT_CONF", 0.5)
    monkeypatch.setattr(ivfuse.tasks.segmenters, "DEFAULT_SEGMENTER", "deeplabv3plus")
    a = _parse("detect", "--images", "i", "-o", "o")
    assert (a.model, a.conf) == ("yolov5s", 0.5)
    assert _parse("segment", "--images", "i", "-o", "o").model == "deeplabv3plus"
    from ivfuse.cli.downstream import default_model

    assert (default_model("detect"), default_model("segment")) == ("yolov5s", "deeplabv3plus")

    monkeypatch.setitem(ivfuse.masks.generate_masks.__kwdefaults__, "conf", 0.4)
    monkeypatch.setitem(ivfuse.masks.generate_masks.__kwdefaults__, "detector", "yolov5m")
    monkeypatch.setitem(ivfuse.masks.generate_masks.__kwdefaults__, "classes", ("car",))
    monkeypatch.setitem(ivfuse.masks.generate_seg_masks.__kwdefaults__, "source", "mean")
    a = _parse("masks", "--ir", "i", "--vis", "v", "-o", "o")
    assert (a.conf, a.prompt_detector, a.classes, a.seg_source) == (0.4, "yolov5m", "car", "mean")

    monkeypatch.setitem(ivfuse.export.export_onnx.__kwdefaults__, "opset", 18)
    assert _parse("export", "gff", "-o", "x.onnx").opset == 18
    monkeypatch.setitem(ivfuse.tasks.downstream.load_detection_set.__kwdefaults__, "merge_iou", 0.7)
    assert _parse("downstream", "detect", "--images", "i").merge_iou == 0.7


def test_the_api_defaults_are_the_shared_constants():
    """The library's own signatures use the constants the CLI reads (no second literal to drift)."""
    import inspect

    from ivfuse.bench.runner import run_bench
    from ivfuse.masks import generate_masks
    from ivfuse.tasks.detectors import DEFAULT_DETECTOR, DETECT_CONF
    from ivfuse.tasks.pseudo import MaskGenerator

    for fn in (generate_masks, MaskGenerator.__init__):
        p = inspect.signature(fn).parameters
        assert (p["detector"].default, p["conf"].default) == (DEFAULT_DETECTOR, DETECT_CONF)
    assert inspect.signature(run_bench).parameters["judge"].default == DEFAULT_DETECTOR


def test_bench_defaults_follow_run_bench_and_opt_reaches_every_registered_method(monkeypatch, capsys, tmp_path):
    import ivfuse.bench.runner

    seen = {}

    def fake(
        methods,
        data,
        protocols=("fusion",),
        out="elsewhere",
        device="cpu",
        seeds=2,
        preset="gpu",
        labels="union",
        judge="yolov5s",
        seg_judge="merged",
        baseline="gff",
        grid_pairs=4,
        workers=3,
        **kw,
    ):
        seen.update(methods=methods, protocols=protocols, seeds=seeds, judge=judge, baseline=baseline)
        return {"meta": {"cache": {"result_hits": 0, "result_misses": 0, "fused_written": 0}, "wall_seconds": 0}}

    monkeypatch.setattr(ivfuse.bench.runner, "run_bench", fake)
    a = _parse("bench", "--methods", "m", "--data", "d")
    assert (
        a.protocols,
        a.out,
        a.seeds,
        a.preset,
        a.labels,
        a.judge,
        a.seg_judge,
        a.baseline,
        a.grid_pairs,
        a.workers,
    ) == ("fusion", "elsewhere", 2, "gpu", "union", "yolov5s", "merged", "gff", 4, 3)
    methods = f"laplacian,x=laplacian@w.pt?eps=1,ir,mine=dir:{tmp_path}"
    assert main(["bench", "--methods", methods, "--data", "tno", "--opt", "levels=2", "--opt", "two-words=a"]) == 0
    assert seen["methods"] == (
        f"laplacian?levels=2&two_words=a,x=laplacian@w.pt?eps=1&levels=2&two_words=a,ir,mine=dir:{tmp_path}"
    )
    assert main(["bench", "--methods", "gff", "--data", "tno", "--opt", "levels=1,2"]) == 2
    assert "cannot hold ','" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ --opt on train


def test_train_takes_opt_before_or_after_the_method_and_bare_items(monkeypatch, capsys, tmp_path):
    import ivfuse.engine

    seen = {}

    def fake_train(name, cfg, out, export=None, progress=True, resume="new"):
        seen.update(name=name, cfg=cfg, out=out, resume=resume, progress=progress)
        return {"epoch_s": 0.0, "metrics": {}, "export": None}

    monkeypatch.setattr(ivfuse.engine, "train", fake_train)
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--opt",
            "width=4",
            "lite",
            "teacher.weight=2.0",
            "--opt",
            "judge.epochs=3",
            "--opt=judge.batch=2",
            f"out={out}",
            "-q",
        ]
    )
    assert rc == 0
    cfg = seen["cfg"]
    assert (cfg["width"], cfg["teacher"]["weight"], cfg["judge"]["epochs"], cfg["judge"]["batch"]) == (4, 2.0, 3, 2)
    assert (seen["out"], seen["resume"], seen["progress"]) == (str(out), "new", False)  # resume: train()'s default
    assert main(["train", "lite", "--fast"]) == 2 and "unknown option '--fast'" in capsys.readouterr().err
    assert main(["train", "lite", "--opt"]) == 2 and "--opt needs a KEY=VALUE" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ one device check


@pytest.mark.parametrize(
    "argv",
    [
        ["fuse", "--ir", "i.png", "--vis", "v.png", "-o", "o.png"],
        ["downstream", "detect", "--images", "i", "--labels", "l"],
        ["detect", "--images", "i", "-o", "o"],
        ["segment", "--images", "i", "-o", "o"],
        ["bench", "--methods", "average", "--data", "tno"],
        ["masks", "--ir", "i", "--vis", "v", "-o", "o"],
    ],
)
def test_every_mode_checks_its_device_once_with_the_one_check(argv, monkeypatch, capsys):
    import ivfuse.utils

    calls = []

    def check(device, option="--device"):
        calls.append((device, option))
        raise InputError(f"{option} {device}: sentinel")

    monkeypatch.setattr(ivfuse.utils, "check_device", check)
    assert main([*argv, "--device", "tpu"]) == 2
    assert calls == [("tpu", "--device")] and "ivfuse: error: --device tpu: sentinel" in capsys.readouterr().err


def test_bench_api_uses_the_one_device_check():
    from ivfuse.bench.runner import run_bench

    from ivfuse.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match=r"--device gpu: not a torch device .*did you mean 'cuda'"):
        run_bench("average", "tno", device="gpu")


# ------------------------------------------------------------------------------------------------ one AMP check


@pytest.mark.parametrize(
    "amp, device, text",
    [
        ("fp32", "cpu", "must be one of none, bf16, fp16"),
        ("fp16", "cpu", "fp16 needs a CUDA device"),
        ("bf16", "mps", "mixed precision runs on cpu and cuda"),
    ],
)
def test_fusion_and_training_refuse_the_same_amp_settings(amp, device, text):
    """:class:`ivfuse.fusion.Runner` (``--amp``) and training (config key ``amp``) share one check: the same settings
    are refused for the same reason, each message naming the setting as its user wrote it."""
    from ivfuse.engine.step import set_precision
    from ivfuse.fusion import Runner
    from ivfuse.models import create_model

    with pytest.raises(InputError, match=text) as fuse_err:
        Runner(create_model("average"), device, amp)
    with pytest.raises(InputError, match=text) as train_err:
        set_precision(amp, device)
    said = str(train_err.value)
    assert str(fuse_err.value).startswith("--amp") and (said.startswith("amp=") or "config key 'amp'" in said)
    assert Runner(create_model("average"), "cpu", "bf16").dtype is not None
    assert Runner(create_model("average")).dtype is None

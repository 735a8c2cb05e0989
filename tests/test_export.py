"""Deployment paths of folder fusion (batch / AMP / channels_last flags) and ONNX export + onnxruntime parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ivfuse
from conftest import need
from test_contract import build_or_skip
from ivfuse.cli import main
from ivfuse.errors import InputError, IvfuseError
from ivfuse.fusion import fuse, fuse_folder

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'ivfuse[deploy]')")
pytest.importorskip("onnx", reason="onnx not installed (pip install 'ivfuse[deploy]')")

from ivfuse.export import export_onnx, onnx_parity
from ivfuse.models.onnx import OnnxFusionModel


def _mixed_folder(tmp_path, n_small=3, n_big=2, gray_vis=1):
    """Pairs of two sizes, one with a gray visible image: batches must be grouped by size and channels."""
    rng = np.random.default_rng(1)
    ir_d, vi_d = tmp_path / "ir", tmp_path / "vi"
    ir_d.mkdir()
    vi_d.mkdir()
    for i in range(n_small + n_big):
        h, w = (48, 64) if i < n_small else (56, 72)
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(ir_d / f"{i:02d}.png")
        vis = rng.integers(0, 256, (h, w) if i < gray_vis else (h, w, 3), dtype=np.uint8)
        Image.fromarray(vis).save(vi_d / f"{i:02d}.png")
    return ir_d, vi_d


def _read(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("method", ["average", "metafusion"])
def test_batched_folder_fusion_equals_one_at_a_time(tmp_path, method):
    ir, vi = _mixed_folder(tmp_path)
    one = fuse_folder(ir, vi, tmp_path / "b1", method, progress=False)
    many = fuse_folder(ir, vi, tmp_path / "b4", method, progress=False, batch=4, workers=2)
    assert len(one) == len(many) == 5
    a, b = _read(tmp_path / "b1"), _read(tmp_path / "b4")
    assert list(a) == list(b) and a["00.png"].ndim == 2 and a["01.png"].shape == (48, 64, 3)
    for k in a:  # conv kernels may differ slightly with batch size: at most one 8-bit level
        assert a[k].shape == b[k].shape
        assert np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1, k


def test_batched_folder_keeps_robustness(tmp_path):
    """--batch with a bad pair: continue_on_error fuses the rest, skip_existing resumes, nothing partial."""
    ir, vi = _mixed_folder(tmp_path)
    (vi / "03.png").write_bytes(b"not a png")
    with pytest.raises(IvfuseError, match="03.png"):
        fuse_folder(ir, vi, tmp_path / "o", "average", progress=False, batch=3)
    assert not (tmp_path / "o").exists()  # validated before anything was written
    res = fuse_folder(ir, vi, tmp_path / "o", "average", progress=False, batch=3, continue_on_error=True)
    assert sorted(p.name for p in res) == ["00.png", "01.png", "02.png", "04.png"] and list(res.failed) == ["03"]
    res2 = fuse_folder(
        ir, vi, tmp_path / "o", "average", progress=False, batch=3, skip_existing=True, continue_on_error=True
    )
    assert len(res2) == 0 and len(res2.skipped) == 4
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["00.png", "01.png", "02.png", "04.png"]


def test_amp_and_channels_last_on_cpu(pair_dirs):
    ir = ivfuse.read_ir(next(pair_dirs[0].iterdir()))[None]
    vis = ivfuse.read_vis(next(pair_dirs[1].iterdir()))[None]
    ref = fuse(ir, vis, "metafusion")
    bf = fuse(ir, vis, "metafusion", amp="bf16")
    cl = fuse(ir, vis, "metafusion", channels_last=True)
    assert bf.dtype == torch.float32 and 0 < float((bf - ref).abs().max()) < 0.05  # bf16 really ran, and is close
    assert float((cl - ref).abs().max()) < 1e-5
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        fuse(ir, vis, "metafusion", amp="fp16")


def test_cli_batch_and_amp_flags(pair_dirs, tmp_path, capsys):
    """The flags reach the model: a probe method records, for every forward pass, the batch size, whether the
    visible batch is in channels-last memory format and the CPU autocast dtype; and the images are written."""
    from ivfuse.models.base import MODELS, FusionModel, register_model

    seen: list[tuple] = []

    class FlagProbe(FusionModel):
        def forward(self, ir, vis):
            cl = vis.is_contiguous(memory_format=torch.channels_last) and not vis.is_contiguous()
            amp = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            seen.append((vis.shape[0], cl, amp))
            return super().forward(ir, vis)

        def fuse_luma(self, ir, y):
            return (ir + y) / 2

    register_model("flag_probe")(FlagProbe)
    ir, vi = pair_dirs
    try:
        assert (
            main(
                [
                    "fuse",
                    "--ir",
                    str(ir),
                    "--vis",
                    str(vi),
                    "-o",
                    str(tmp_path / "o"),
                    "--method",
                    "flag_probe",
                    "--batch",
                    "2",
                    "--amp",
                    "bf16",
                    "--channels-last",
                    "-q",
                ]
            )
            == 0
        )
        assert sorted(seen) == [(1, True, torch.bfloat16), (2, True, torch.bfloat16)]  # 3 pairs in batches of 2
        seen.clear()
        assert (
            main(["fuse", "--ir", str(ir), "--vis", str(vi), "-o", str(tmp_path / "n"), "--method", "flag_probe", "-q"])
            == 0
        )
        assert seen == [(1, False, None)] * 3  # without the flags: one pair at a time, fp32, contiguous
    finally:
        MODELS._items.pop("flag_probe", None)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["p0.png", "p1.png", "p2.png"]
    for name in ("p0.png", "p1.png", "p2.png"):  # bf16 moved the average by at most a couple of 8-bit levels
        a = np.asarray(Image.open(tmp_path / "o" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "n" / name)).astype(int)
        assert a.shape == b.shape == (64, 80, 3) and np.abs(a - b).max() <= 3
    assert main(["fuse", "--ir", str(ir), "--vis", str(vi), "-o", str(tmp_path / "p"), "--amp", "fp16", "-q"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    assert main(["fuse", "--ir", str(ir), "--vis", str(vi), "-o", str(tmp_path / "p"), "--batch", "0", "-q"]) == 2


def _exportable():
    """Every registered method whose default instance can be created. A method is left out only when a default
    weights file it needs is *absent* (test_contract.build_or_skip); a file that is there but does not load raises."""
    from ivfuse.models.base import method_options

    out = []
    for name in ivfuse.list_models():
        try:
            build_or_skip(name)
        except pytest.skip.Exception:
            continue  # a default weights file is absent here
        out.append((name, "weights" in (method_options(name) or {})))
    return out


#: methods that load but cannot be exported, and why (docs/deployment.md); the test checks the one-line refusal
NOT_EXPORTABLE = {  # method -> what its one-line refusal must say
    "csf": "amplifies float round-off",  # a softmax of gradient differences / 0.00015: ORT differs by ~1e-3
}


@pytest.mark.parametrize("name,learned", _exportable())
def test_onnx_export_matches_pytorch(tmp_path, name, learned):
    if name in NOT_EXPORTABLE:
        with pytest.raises(IvfuseError, match=f"method '{name}' cannot be exported to ONNX: .*{NOT_EXPORTABLE[name]}"):
            export_onnx(name, tmp_path / f"{name}.onnx")
        assert not (tmp_path / f"{name}.onnx").exists()
        return
    path = export_onnx(name, tmp_path / f"{name}.onnx")  # export itself checks one size; test two more + gray
    model = ivfuse.create_model(name)
    diff = onnx_parity(model, OnnxFusionModel(path), sizes=((1, 96, 128), (2, 120, 160)))
    assert diff <= 1e-4, f"{name}: max |torch - onnxruntime| = {diff}"


def test_tsjnet_onnx_runs_at_any_size(tmp_path):
    """TSJNet's neighbourhood attention (tiles from ``arange`` of the map size) and its padding to the NAT stride
    trace with dynamic sizes: a size that is no multiple of the stride (padded inside the graph) matches PyTorch."""
    path = export_onnx("tsjnet", tmp_path / "tsjnet.onnx")
    diff = onnx_parity(ivfuse.create_model("tsjnet"), OnnxFusionModel(path), sizes=((1, 77, 101),))
    assert diff <= 1e-4, f"tsjnet: max |torch - onnxruntime| = {diff}"


def test_every_learned_method_with_weights_is_covered():
    learned = {n for n, lrn in _exportable() if lrn}
    assert {"metafusion", "lite", "tim"} <= learned  # the shipped weights are always exported


@pytest.mark.realdata
def test_peers_with_shared_weights_are_covered():
    need("weights/peers")
    learned = {n for n, lrn in _exportable() if lrn}
    assert {"ifcnn", "seafusion"} <= learned  # official peer weights from ../shared are exported too


def test_onnx_method_through_cli(pair_dirs, tmp_path, capsys):
    ir, vi = pair_dirs
    onnx_path = tmp_path / "mf.onnx"
    assert main(["export", "metafusion", "--format", "onnx", "-o", str(onnx_path)]) == 0
    assert main(["fuse", "--ir", str(ir), "--vis", str(vi), "-o", str(tmp_path / "a"), "-q"]) == 0
    assert (
        main(
            [
                "fuse",
                "--ir",
                str(ir),
                "--vis",
                str(vi),
                "-o",
                str(tmp_path / "b"),
                "-q",
                "--batch",
                "3",
                "--method",
                f"onnx:{onnx_path}",
            ]
        )
        == 0
    )
    pair = next(ir.iterdir())
    assert (
        main(
            [
                "fuse",
                "--ir",
                str(pair),
                "--vis",
                str(vi / pair.name),
                "-o",
                str(tmp_path / "c.png"),
                "--method",
                f"onnx:{onnx_path}",
            ]
        )
        == 0
    )
    a, b = _read(tmp_path / "a"), _read(tmp_path / "b")
    for k in a:
        assert np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c.png")), b[pair.name])
    assert (
        main(
            [
                "fuse",
                "--ir",
                str(ir),
                "--vis",
                str(vi),
                "-o",
                str(tmp_path / "d"),
                "-q",
                "--method",
                f"onnx:{tmp_path / 'missing.onnx'}",
            ]
        )
        == 2
    )
    assert "missing.onnx: ONNX file not found" in capsys.readouterr().err
    assert main(["export", "metafusion", "-o", str(tmp_path / "m.txt")]) == 2

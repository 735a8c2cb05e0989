"""Video fusion (``ivfuse fuse --ir a.mp4 --vis b.mp4 -o f.mp4``) and the streaming ``ivfuse.Fuser`` API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import need
from PIL import Image

import ivfuse
from ivfuse.cli import main
from ivfuse.errors import InputError, PairingError

av = pytest.importorskip("av", reason="PyAV not installed (pip install 'ivfuse[deploy]')")


def _write_video(path, frames, rate=10, fmt="rgb24"):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt, s.options = "yuv420p", {"crf": "0"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format=fmt)):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _read_video(path):
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)], st.codec_context.name, float(st.average_rate)


def _msrs_frames(n=4, size=(160, 120)):
    root = need("data/MSRS")
    names = sorted(p.name for p in (root / "ir").iterdir())[:n]
    ir = [np.asarray(Image.open(root / "ir" / k).convert("RGB").resize(size)) for k in names]
    vi = [np.asarray(Image.open(root / "vi" / k).convert("RGB").resize(size)) for k in names]
    return ir, vi


def test_fuser_numpy_and_tensor_frames_match_fuse():
    rng = np.random.default_rng(0)
    ir = rng.integers(0, 256, (40, 56), dtype=np.uint8)
    vis = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    fuser = ivfuse.Fuser("metafusion", device="cpu")
    out = fuser(ir, vis)
    assert out.dtype == np.uint8 and out.shape == (40, 56, 3)
    ref = ivfuse.fuse(
        torch.from_numpy(ir)[None].float() / 255,
        torch.from_numpy(vis).permute(2, 0, 1).float() / 255,
        method="metafusion",
    )
    assert np.abs(out.astype(int) - np.round(ref.permute(1, 2, 0).numpy() * 255).astype(int)).max() <= 1
    gray = fuser(ir, vis[..., 1])
    assert gray.shape == (40, 56) and gray.dtype == np.uint8
    t = fuser(torch.from_numpy(ir)[None].float() / 255, torch.from_numpy(vis).permute(2, 0, 1).float() / 255)
    assert t.shape == (3, 40, 56) and torch.allclose(t, ref, atol=1e-6)
    ir3 = np.repeat(ir[..., None], 3, 2)  # IR stored as RGB video frames: same result as the gray frame
    assert np.array_equal(fuser(ir3, vis), out)
    with pytest.raises(InputError, match="uint8"):
        fuser(ir.astype(np.float32), vis)
    with pytest.raises(PairingError, match="differ in size"):
        fuser(ir[:30], vis)


@pytest.mark.realdata
def test_video_fusion_of_msrs_frames(tmp_path, capsys):
    ir, vi = _msrs_frames()
    _write_video(tmp_path / "ir.mp4", ir)
    _write_video(tmp_path / "vis.mp4", vi)
    out = tmp_path / "fused.mp4"
    assert (
        main(
            [
                "fuse",
                "--ir",
                str(tmp_path / "ir.mp4"),
                "--vis",
                str(tmp_path / "vis.mp4"),
                "-o",
                str(out),
                "--method",
                "metafusion",
                "-q",
            ]
        )
        == 0
    )
    assert "4 frames" in capsys.readouterr().out
    frames, codec, rate = _read_video(out)
    assert codec == "h264" and rate == 10 and len(frames) == 4 and frames[0].shape == (120, 160, 3)
    # each output frame is the fusion of the decoded input frames (up to H.264 loss at crf 18)
    ir_dec, _, _ = _read_video(tmp_path / "ir.mp4")
    vi_dec, _, _ = _read_video(tmp_path / "vis.mp4")
    fuser = ivfuse.Fuser("metafusion")
    for k in (0, 3):
        ref = fuser(np.round(ir_dec[k].astype(float) @ [0.299, 0.587, 0.114]).astype(np.uint8), vi_dec[k])
        err = np.abs(frames[k].astype(float) - ref).mean()
        other = np.abs(frames[k].astype(float) - fuser(ir_dec[3 - k][..., 0], vi_dec[3 - k])).mean()
        assert err < 4 and err < other / 2, (k, err, other)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.realdata
def test_video_frame_mismatches_are_refused(tmp_path, capsys):
    ir, vi = _msrs_frames(4)
    _write_video(tmp_path / "ir.mp4", ir)
    _write_video(tmp_path / "short.mp4", vi[:3])
    _write_video(tmp_path / "fast.mp4", vi, rate=25)
    for other, msg in (("short.mp4", "3 frames but infrared ir.mp4 has 4"), ("fast.mp4", "frame rate 25.000 differs")):
        assert (
            main(
                [
                    "fuse",
                    "--ir",
                    str(tmp_path / "ir.mp4"),
                    "--vis",
                    str(tmp_path / other),
                    "-o",
                    str(tmp_path / "f.mp4"),
                    "--method",
                    "average",
                    "-q",
                ]
            )
            == 2
        )
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "f.mp4").exists()
    assert (
        main(
            [
                "fuse",
                "--ir",
                str(tmp_path / "ir.mp4"),
                "--vis",
                str(tmp_path / "short.mp4"),
                "-o",
                str(tmp_path / "f.png"),
                "--method",
                "average",
                "-q",
            ]
        )
        == 2
    )
    assert "must end in .mp4" in capsys.readouterr().err

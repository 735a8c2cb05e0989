"""Video fusion and a streaming API for cameras.

>>> fuser = ivfuse.Fuser("lite", device="cpu")                      # any method, options as create_model's
>>> fused = fuser(ir_frame, vis_frame)                               # numpy uint8 H×W / H×W×3 RGB, or tensors
>>> ivfuse.video.fuse_video("ir.mp4", "vis.mp4", "fused.mp4", method="lite")   # CLI: ivfuse fuse --ir ir.mp4 ...

Video I/O is PyAV (``pip install 'ivfuse[deploy]'``; its wheels bundle FFmpeg with libx264). Frames are paired
in decoding order (frame *k* of the IR video with frame *k* of the visible video): both streams must have the same
frame rate (within 0.1 %), the same frame size and — when the containers state it — the same number of frames,
checked before anything is decoded; a stream that still ends early is an error naming the shorter file. The output
is H.264 (libx264, yuv420p, no audio) at the input's rate, written to a temporary file beside the output and
renamed into place only when complete. IR frames stored as colour video are read as BT.601 luma.
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError, IvfuseError, PairingError

__all__ = ["VIDEO_EXTENSIONS", "Fuser", "fuse_video", "is_video"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


class Fuser:
    """A loaded fusion method for frame-by-frame use: ``fuser(ir_frame, vis_frame) -> fused_frame``.

    Args:
        method: method name (``ivfuse list methods``), ``"onnx:FILE"`` or a model instance (default: the shipped
            default method).
        device: torch device.
        amp, channels_last, compile: speed settings (:class:`ivfuse.fusion.Runner`).
        tile, tile_overlap: fuse each frame in overlapping ``tile``×``tile`` windows (:func:`ivfuse.tiling.fuse_tiled`)
            — for frames larger than memory allows; ``None``: whole frames.
        **options: method options (e.g. ``weights="f.safetensors"``).

    Frames: NumPy ``uint8`` ``H×W`` (gray) or ``H×W×3`` (RGB) → NumPy ``uint8`` in the visible frame's layout;
    or float tensors in [0, 1] ``C×H×W`` / ``B×C×H×W`` (uint8 tensors are scaled by 1/255) → a tensor of the
    visible input's dtype and layout, on its device. A colour IR frame is reduced to BT.601 luma.
    """

    def __init__(
        self,
        method: Any = None,
        device: str | torch.device = "cpu",
        *,
        amp: str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        tile: int | None = None,
        tile_overlap: int | None = None,
        **options: Any,
    ) -> None:
        from .fusion import Runner, get_model

        self.model = get_model(method, device, **options)
        self.runner = Runner(self.model, device, amp, channels_last, compile, tile, tile_overlap)
        self.name = self.model.name

    @staticmethod
    def _to_tensor(frame: Any, what: str, ir: bool) -> tuple[torch.Tensor, dict]:
        kind: dict = {}
        if isinstance(frame, np.ndarray):
            if frame.dtype != np.uint8:
                raise InputError(f"{what} frame: NumPy frames must be uint8, got {frame.dtype}")
            if frame.ndim == 3 and frame.shape[2] == 1:
                frame = frame[..., 0]
            if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
                raise InputError(f"{what} frame: expected H×W or H×W×3 uint8, got shape {frame.shape}")
            t = torch.from_numpy(np.ascontiguousarray(frame)).float().div_(255)
            t = (t[None] if t.ndim == 2 else t.permute(2, 0, 1))[None]
            kind = {"type": "numpy", "gray": frame.ndim == 2}
        elif isinstance(frame, torch.Tensor):
            if frame.ndim not in (3, 4):
                raise InputError(f"{what} frame: expected a C×H×W or B×C×H×W tensor, got shape {tuple(frame.shape)}")
            kind = {"type": "tensor", "ndim": frame.ndim, "dtype": frame.dtype, "device": frame.device}
            t = frame if frame.ndim == 4 else frame[None]
            t = t.float() / 255 if frame.dtype == torch.uint8 else t.float()
        else:
            raise InputError(
                f"{what} frame: expected a NumPy uint8 array or a torch tensor, got {type(frame).__name__}"
            )
        if ir and t.shape[1] == 3:
            t = 0.299 * t[:, :1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3]
        return t, kind

    def __call__(self, ir_frame: Any, vis_frame: Any):
        ir, _ = self._to_tensor(ir_frame, "infrared", ir=True)
        vis, kind = self._to_tensor(vis_frame, "visible", ir=False)
        if ir.shape[0] != vis.shape[0] or ir.shape[-2:] != vis.shape[-2:]:
            raise PairingError(
                f"infrared frame {ir.shape[-1]}x{ir.shape[-2]} and visible frame "
                f"{vis.shape[-1]}x{vis.shape[-2]} differ in size"
            )
        fused = self.runner(ir, vis).cpu()
        if kind["type"] == "numpy":
            u8 = fused[0].mul(255).round_().clamp_(0, 255).to(torch.uint8)
            return u8[0].numpy() if kind["gray"] else u8.permute(1, 2, 0).contiguous().numpy()
        out = fused if kind["ndim"] == 4 else fused[0]
        if kind["dtype"] == torch.uint8:
            out = out.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        elif kind["dtype"].is_floating_point:
            out = out.to(kind["dtype"])
        return out.to(kind["device"])


def _av():
    try:
        import av
    except ImportError:
        raise IvfuseError("video fusion needs PyAV; install it with: pip install 'ivfuse[deploy]'") from None
    return av


def _open(path: Path):
    av = _av()
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        c = av.open(str(path))
    except Exception as e:  # noqa: BLE001 - FFmpeg errors are many
        raise InputError(f"{path}: cannot be opened as a video ({' '.join(str(e).split())[:120]})") from None
    if not c.streams.video:
        c.close()
        raise InputError(f"{path}: has no video stream")
    return c


def video_info(path: str | os.PathLike) -> dict:
    """``{"frames", "rate", "width", "height"}`` of the first video stream (``frames`` 0 when not stated)."""
    p = Path(path)
    c = _open(p)
    try:
        s = c.streams.video[0]
        return {
            "frames": int(s.frames or 0),
            "rate": Fraction(s.average_rate or s.guessed_rate or 0),
            "width": s.codec_context.width,
            "height": s.codec_context.height,
        }
    finally:
        c.close()


def fuse_video(
    ir_path: str | os.PathLike,
    vis_path: str | os.PathLike,
    out_path: str | os.PathLike,
    method: Any = None,
    device: str = "cpu",
    *,
    amp: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    tile: int | None = None,
    tile_overlap: int | None = None,
    crf: int = 18,
    progress: bool = True,
    **options: Any,
) -> dict:
    """Fuse two frame-synchronised videos into an H.264 ``out_path`` (see module docstring).

    Returns ``{"frames", "seconds", "fps", "rate", "size", "output"}`` (``fps`` = fused frames per wall second,
    decoding and encoding included).
    """
    import time

    from tqdm.auto import tqdm

    av = _av()
    ir_p, vis_p, out = Path(ir_path), Path(vis_path), Path(out_path)
    if out.suffix.lower() not in (".mp4", ".mkv", ".mov"):
        raise InputError(f"{out}: video output must end in .mp4, .mkv or .mov (H.264)")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give a video file name")
    a, b = video_info(ir_p), video_info(vis_p)
    if (a["width"], a["height"]) != (b["width"], b["height"]):
        raise PairingError(
            f"{vis_p}: visible video is {b['width']}x{b['height']} but infrared {ir_p.name} is "
            f"{a['width']}x{a['height']}"
        )
    if not a["rate"] or not b["rate"] or abs(float(a["rate"]) / float(b["rate"]) - 1) > 1e-3:
        raise PairingError(
            f"{vis_p}: frame rate {float(b['rate']):.3f} differs from {float(a['rate']):.3f} of {ir_p.name} "
            "(frames are paired one to one; resample one video first)"
        )
    if a["frames"] and b["frames"] and a["frames"] != b["frames"]:
        raise PairingError(
            f"{vis_p}: {b['frames']} frames but infrared {ir_p.name} has {a['frames']} "
            "(frames are paired one to one; trim the longer video)"
        )
    fuser = Fuser(
        method,
        device,
        amp=amp,
        channels_last=channels_last,
        compile=compile,
        tile=tile,
        tile_overlap=tile_overlap,
        **options,
    )
    w, h = a["width"], a["height"]
    if min(w, h) < fuser.model.min_size:
        raise InputError(f"{ir_p}: frames {w}x{h} are smaller than the minimum of '{fuser.name}'")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}-", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    n, t0 = 0, time.perf_counter()
    ci, cv = _open(ir_p), _open(vis_p)
    try:
        with av.open(tmp, "w") as oc:
            rate = Fraction(a["rate"]).limit_denominator(100000)
            st = oc.add_stream("libx264", rate=rate)
            st.width, st.height, st.pix_fmt = w + (w % 2), h + (h % 2), "yuv420p"  # yuv420p needs even sizes
            st.options = {"crf": str(crf), "preset": "veryfast"}
            fi, fv = ci.decode(video=0), cv.decode(video=0)
            with tqdm(
                total=a["frames"] or None, desc=f"fuse video[{fuser.name}]", unit="frame", disable=not progress
            ) as bar:
                while True:
                    x, y = next(fi, None), next(fv, None)
                    if x is None or y is None:
                        if x is not None or y is not None:
                            short = ir_p if x is None else vis_p
                            raise PairingError(f"{short}: ended after {n} frames while the other video goes on")
                        break
                    fused = fuser(x.to_ndarray(format="gray"), y.to_ndarray(format="rgb24"))
                    if fused.shape[:2] != (st.height, st.width):
                        fused = np.pad(fused, ((0, st.height - h), (0, st.width - w), (0, 0)), mode="edge")
                    for pkt in st.encode(av.VideoFrame.from_ndarray(fused, format="rgb24")):
                        oc.mux(pkt)
                    n += 1
                    bar.update(1)
            for pkt in st.encode():
                oc.mux(pkt)
        if n == 0:
            raise InputError(f"{ir_p}: no frames decoded")
        os.replace(tmp, out)
    finally:
        ci.close()
        cv.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
    secs = time.perf_counter() - t0
    return {
        "frames": n,
        "seconds": secs,
        "fps": n / secs if secs else 0.0,
        "rate": float(a["rate"]),
        "size": (w, h),
        "output": out,
    }

"""Fusing tensors, file pairs and folders with any registered method.

>>> fused = ivfuse.fuse(ir, vis, method="gff")                 # tensors B×C×H×W in [0, 1]
>>> ivfuse.fuse_files("ir.png", "vis.png", "fused.png")         # colour kept, original size
>>> ivfuse.fuse_folder("IR_DIR", "VIS_DIR", "OUT_DIR")          # pairs matched by file stem

Outputs are written atomically. In folder mode every pair is read and checked (readable, same size, large enough
for the method) before the first one is fused, so bad input fails before anything is written. Each fused image is
written into a hidden staging folder ``OUT/.ivfuse-<pid>-*`` and renamed into ``OUT`` as soon as it is finished:
an interrupted run (Ctrl-C, SIGTERM, ``kill -9``) or a pair that fails late leaves only complete images in ``OUT``,
never a partial file, and ``skip_existing=True`` (``--skip-existing``) resumes it. Staging folders left by killed
runs are removed by the next run into the same folder. ``continue_on_error=True`` (``--continue-on-error``) fuses
every good pair and reports the bad ones at the end instead of stopping at the first.

Speed (``docs/deployment.md``): ``batch=N`` (``--batch``) reads pairs in DataLoader worker processes
(``workers``, ``--workers``) and fuses equal-size pairs N at a time (pairs are grouped by size, so folders of mixed
sizes work; a group smaller than N makes a smaller batch); ``amp="bf16"|"fp16"`` (``--amp``) runs under
``torch.autocast`` (CUDA: both; CPU: bf16 only — fp16 on CPU is refused); ``channels_last`` and ``compile``
(``torch.compile``) are optional. ``method="onnx:FILE"`` runs an exported ONNX graph with onnxruntime
(:mod:`ivfuse.export`).

Large images (:mod:`ivfuse.tiling`): ``tile=N`` (``--tile N``, optional ``tile_overlap``/``--tile-overlap``) fuses
``N × N`` windows blended without seams, in bounded memory. Before every forward pass the memory it needs is
estimated and compared with the memory available: a pair that would not fit is refused with a one-line
:class:`InputError` naming the file, its size and ``--tile 1024`` (or ``--batch 1``), before anything is allocated
(pair and folder modes check the image headers before decoding).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from .allocator import tune as tune_allocator
from .data.images import IMAGE_EXTENSIONS, image_size, read_pair, write_image
from .data.pairing import pair_by_stem
from .errors import InputError, IvfuseError, OutputError, PairingError, warn
from .models import FusionModel, create_model
from .models.base import to_channels_last
from .tiling import check_memory, check_tile, fuse_tiled
from .utils import check_amp, check_device, write_error

__all__ = [
    "AMP_DTYPES",
    "DEFAULT_METHOD",
    "FolderResult",
    "FusionInterrupted",
    "Runner",
    "fuse",
    "fuse_files",
    "fuse_folder",
    "get_model",
]

#: method used when none is named
DEFAULT_METHOD = "metafusion"


def get_model(
    method: str | FusionModel | None = None, device: str | torch.device = "cpu", **options: Any
) -> FusionModel:
    """A ready (eval-mode) model: an instance is returned as is, a name is created with ``options``."""
    if isinstance(device, str):
        check_device(device, "device")
    if isinstance(method, FusionModel):
        return method.to(device).eval()
    if isinstance(method, str) and method.lower().startswith("onnx:"):
        from .models.onnx import load_onnx_model

        if options:
            raise InputError(f"method '{method}': an ONNX model takes no options (got {', '.join(options)})")
        return load_onnx_model(method)
    return create_model(method or DEFAULT_METHOD, **options).to(device).eval()


#: ``--amp`` names (:data:`ivfuse.utils.AMP_MODES`, checked by :func:`ivfuse.utils.check_amp`) -> autocast dtypes
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Runner:
    """A model with its device and speed settings, called as ``runner(ir, vis)`` on ``B×C×H×W`` batches
    (any device/dtype in; float32 fused out, on the runner's device, in [0, 1]).

    Args:
        amp: ``None``/``"none"`` (off, fp32; as the training config key ``amp``), ``"bf16"`` or ``"fp16"``:
            ``torch.autocast`` around the forward pass. CUDA takes both; on the CPU bf16 autocast is used as PyTorch
            provides it and fp16 is refused (CPU autocast has no fp16 kernels worth using).
        channels_last: convert the model and inputs to ``torch.channels_last`` memory format.
        compile: wrap the model in ``torch.compile`` (first call compiles; later calls of the same size are fast).
        tile, tile_overlap: fuse in ``tile × tile`` windows overlapping by ``tile_overlap`` pixels (default
            ``tile // 8``), blended without seams (:func:`ivfuse.tiling.fuse_tiled`); ``None``/0: whole images.

    Every call first checks that the forward pass fits in the available memory (:func:`ivfuse.tiling.check_memory`:
    the whole image, or one window with ``tile``) and raises a one-line :class:`InputError` otherwise.
    """

    def __init__(
        self,
        model: FusionModel,
        device: str | torch.device = "cpu",
        amp: str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        tile: int | None = None,
        tile_overlap: int | None = None,
    ) -> None:
        self.model, self.device = model, torch.device(device)
        self.name, self.min_size = model.name, model.min_size
        tune_allocator()  # full-resolution maps reuse freed memory instead of faulting in new pages
        tiling = check_tile(tile, tile_overlap, model.min_size, model.name)
        self.tile, self.tile_overlap = tiling if tiling else (None, None)
        self.dtype = AMP_DTYPES.get(check_amp(amp, self.device))  # None: fp32
        onnx = type(model).__name__ == "OnnxFusionModel"
        if onnx and (self.dtype is not None or compile):
            raise InputError(f"{model.name}: --amp and --compile apply to PyTorch methods, not to ONNX models")
        self.channels_last = bool(channels_last) and not onnx
        if self.channels_last:
            to_channels_last(model)
        self.fn = torch.compile(model) if compile else model

    def check_memory(self, height: int, width: int, batch: int = 1, channels: int = 3) -> None:
        """One-line :class:`InputError` if ``batch`` images of ``height × width`` would not fit in memory."""
        check_memory(self.model, height, width, batch, channels, self.tile, self.device)

    def _forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        """One forward pass (a whole batch or one window) with the speed settings; float32 out."""
        if self.channels_last:
            ir, vis = (
                ir.contiguous(memory_format=torch.channels_last),
                vis.contiguous(memory_format=torch.channels_last),
            )
        amp = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()
        with amp:
            return self.fn(ir, vis).float()

    def __call__(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        if ir.ndim == 4 and vis.ndim == 4:  # other shapes: the model's own one-line error
            self.check_memory(ir.shape[-2], ir.shape[-1], ir.shape[0], vis.shape[1])
        ir, vis = ir.to(self.device, torch.float32), vis.to(self.device, torch.float32)
        with torch.inference_mode():
            if self.tile and ir.ndim == 4 and vis.ndim == 4:
                out = fuse_tiled(self._forward, ir, vis, self.tile, self.tile_overlap)
            else:
                out = self._forward(ir, vis)
        return out.clamp(0, 1).contiguous()


def _runner(model: FusionModel | Runner, device: str | torch.device = "cpu") -> Runner:
    return model if isinstance(model, Runner) else Runner(model, device)


@torch.inference_mode()
def fuse(
    ir: torch.Tensor,
    vis: torch.Tensor,
    method: str | FusionModel | None = None,
    device: str | torch.device | None = None,
    *,
    amp: str | None = None,
    channels_last: bool = False,
    tile: int | None = None,
    tile_overlap: int | None = None,
    **options: Any,
) -> torch.Tensor:
    """Fuse ``ir`` (B×1×H×W or 1×H×W) with ``vis`` (B×{1,3}×H×W or {1,3}×H×W); returns the same layout
    (float32 on the CPU). ``amp``/``channels_last``/``tile``/``tile_overlap``: see :class:`Runner`."""
    single = ir.ndim == 3
    if single:
        ir, vis = ir[None], vis[None]
    device = device or ir.device
    runner = Runner(
        get_model(method, device, **options), device, amp, channels_last, tile=tile, tile_overlap=tile_overlap
    )
    out = runner(ir, vis).cpu()
    return out[0] if single else out


def _check_pair_files(
    ir_path: Path, vis_path: Path, min_size: int, method: str, runner: Runner | None = None, batch: int = 1
) -> tuple[int, int]:
    """Header checks (sizes equal, >= ``min_size``, and with ``runner`` the memory guard for ``batch`` such pairs);
    returns ``(width, height)``."""
    wi, hi = image_size(ir_path)
    wv, hv = image_size(vis_path)
    if (wi, hi) != (wv, hv):
        raise PairingError(f"{vis_path}: visible image is {wv}x{hv} but infrared {ir_path.name} is {wi}x{hi}")
    if min(wi, hi) < min_size:
        raise InputError(f"{ir_path}: image {wi}x{hi} is smaller than the {min_size}x{min_size} minimum of '{method}'")
    if runner is not None:
        _check_memory(runner, ir_path, hi, wi, batch)
    return wi, hi


def _check_memory(runner: Runner, ir_path: Path, height: int, width: int, batch: int = 1) -> None:
    try:
        runner.check_memory(height, width, batch)
    except IvfuseError as e:
        raise type(e)(f"{ir_path}: {e}") from None


def _fuse_pair(
    model: FusionModel | Runner, ir_path: Path, vis_path: Path, ir_norm: str, device: str | torch.device = "cpu"
) -> torch.Tensor:
    ir, vis = read_pair(ir_path, vis_path, ir_norm)
    try:
        return _runner(model, device)(ir[None], vis[None])[0].cpu()
    except IvfuseError as e:
        raise type(e)(f"{ir_path}: {e}") from None


def _check_output(out: Path) -> None:
    if out.suffix.lower() not in IMAGE_EXTENSIONS:
        raise InputError(f"{out}: unsupported output extension '{out.suffix}' (use {', '.join(IMAGE_EXTENSIONS)})")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give an image file name, or fuse folders with folder inputs")


def fuse_files(
    ir_path: str | os.PathLike,
    vis_path: str | os.PathLike,
    out_path: str | os.PathLike,
    method: str | FusionModel | None = None,
    device: str = "cpu",
    ir_norm: str = "minmax",
    *,
    amp: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    tile: int | None = None,
    tile_overlap: int | None = None,
    **options: Any,
) -> Path:
    """Fuse one pair of files and write the result (RGB visible -> RGB fused, input size). ``tile``: see
    :class:`Runner`; a pair too large for the available memory is refused from its header, before decoding."""
    ir_path, vis_path, out = Path(ir_path), Path(vis_path), Path(out_path)
    _check_output(out)
    model = get_model(method, device, **options)
    runner = Runner(model, device, amp, channels_last, compile, tile, tile_overlap)
    _check_pair_files(ir_path, vis_path, model.min_size, model.name, runner)
    return write_image(out, _fuse_pair(runner, ir_path, vis_path, ir_norm, device))


class FolderResult(list):
    """Paths written by :func:`fuse_folder` (a list), plus ``skipped`` (keys whose output already existed, with
    ``skip_existing``) and ``failed`` (``{key: one-line error}``, with ``continue_on_error``)."""

    def __init__(self, written=(), skipped=(), failed=None):
        super().__init__(written)
        self.skipped: list[str] = list(skipped)
        self.failed: dict[str, str] = dict(failed or {})


class FusionInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM under the CLI) during :func:`fuse_folder`; the message says what was kept."""


STAGE_PREFIX = ".ivfuse-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_stages(out_dir: Path) -> list[Path]:
    """Remove ``OUT/.ivfuse-*`` staging folders left behind by killed runs (their process no longer exists, or
    they predate the ``.ivfuse-<pid>-`` naming); a folder of a run still in progress is left alone."""
    removed = []
    if not out_dir.is_dir():
        return removed
    for d in out_dir.glob(STAGE_PREFIX + "*"):
        if not d.is_dir():
            continue
        pid = d.name[len(STAGE_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _validate_pair(
    model: FusionModel, ir_path: Path, vis_path: Path, ir_norm: str, runner: Runner | None = None
) -> tuple:
    """Decode both images as fusion will (so truncated/corrupt files and bad values are caught) and check sizes
    (and, with ``runner``, the memory of one pair); returns the pair's tensor shapes (the batching key)."""
    _check_pair_files(ir_path, vis_path, model.min_size, model.name, runner)  # cheap header check first
    ir, vis = read_pair(ir_path, vis_path, ir_norm)
    return tuple(ir.shape), tuple(vis.shape)


class _PairReader(torch.utils.data.Dataset):
    """Reads pair ``i`` of ``todo`` in a DataLoader worker: ``(key, ir, vis, None)`` or ``(key, None, None, error)``."""

    def __init__(self, todo: list, ir_norm: str) -> None:
        self.todo, self.ir_norm = todo, ir_norm

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i: int):
        key, ip, vp = self.todo[i]
        try:
            ir, vis = read_pair(ip, vp, self.ir_norm)
        except IvfuseError as e:
            return key, None, None, e
        return key, ir, vis, None


def _as_list(items: list) -> list:
    return items


def _size_batches(shapes: list[tuple], batch: int) -> list[list[int]]:
    """Indices grouped by equal shapes (first-seen order), cut into batches of at most ``batch``."""
    groups: dict[tuple, list[int]] = {}
    for i, sh in enumerate(shapes):
        groups.setdefault(sh, []).append(i)
    return [g[j : j + batch] for g in groups.values() for j in range(0, len(g), batch)]


def fuse_folder(
    ir_dir: str | os.PathLike,
    vis_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    method: str | FusionModel | None = None,
    device: str = "cpu",
    ext: str = ".png",
    ir_norm: str = "minmax",
    progress: bool = True,
    *,
    skip_existing: bool = False,
    continue_on_error: bool = False,
    batch: int = 1,
    workers: int | None = None,
    amp: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    tile: int | None = None,
    tile_overlap: int | None = None,
    **options: Any,
) -> FolderResult:
    """Fuse every pair of two folders (matched by file stem, strictly) into ``out_dir/<stem><ext>``.

    Every pair is decoded and checked before the first is fused (an :class:`IvfuseError` naming the file, nothing
    written). Finished images are moved into ``out_dir`` one by one (atomically), so an interruption keeps them.

    Args:
        skip_existing: leave pairs whose output file already exists alone (resume an interrupted folder).
        continue_on_error: do not stop at a bad pair: fuse the others and list the failures in the result's
            ``failed`` (the CLI reports them and exits with status 1).
        batch: pairs fused per forward pass (equal-size pairs are grouped; ``--batch``).
        workers: DataLoader worker processes that read the images (default: 0 for ``batch=1``, else 2).
        amp, channels_last, compile, tile, tile_overlap: see :class:`Runner`. Every pair is checked against the
            available memory (whole image, or one ``tile`` window; times the pairs of its size fused together)
            before the first is fused.
    """
    if batch < 1:
        raise InputError(f"--batch {batch}: must be >= 1")
    workers = (0 if batch == 1 else min(2, os.cpu_count() or 1)) if workers is None else workers
    if workers < 0:
        raise InputError(f"--workers {workers}: must be >= 0")
    out_dir = Path(out_dir)
    ext = ext if ext.startswith(".") else "." + ext
    if ext.lower() not in IMAGE_EXTENSIONS:
        raise InputError(f"unsupported output extension '{ext}' (use {', '.join(IMAGE_EXTENSIONS)})")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    pairs = pair_by_stem(ir_dir, vis_dir)
    model = get_model(method, device, **options)
    runner = Runner(model, device, amp, channels_last, compile, tile, tile_overlap)
    stale = clean_stale_stages(out_dir)
    if stale:
        warn(f"{out_dir}: removed {len(stale)} staging folder(s) left by an interrupted run ({stale[0].name})")
    skipped = [k for k, _, _ in pairs if skip_existing and (out_dir / f"{k}{ext}").is_file()]
    done = set(skipped)
    todo = [p for p in pairs if p[0] not in done]
    failed: dict[str, str] = {}
    shapes: dict[str, tuple] = {}
    from tqdm.auto import tqdm

    for key, ip, vp in tqdm(todo, desc="check pairs", unit="pair", disable=not progress or len(todo) < 50, leave=False):
        try:
            shapes[key] = _validate_pair(model, ip, vp, ir_norm, runner)
        except IvfuseError as e:
            if not continue_on_error:
                raise
            failed[key] = str(e)
    todo = [p for p in todo if p[0] not in failed]
    if batch > 1:  # the memory of the batches the pairs will be fused in
        counts: dict[tuple, int] = {}
        for k, _, _ in todo:
            counts[shapes[k]] = counts.get(shapes[k], 0) + 1
        for key, ip, _ in todo:
            (_, h, w), vshape = shapes[key]
            try:
                runner.check_memory(h, w, min(batch, counts[shapes[key]]), vshape[0])
            except IvfuseError as e:
                if not continue_on_error:
                    raise type(e)(f"{ip}: {e}") from None
                failed[key] = f"{ip}: {e}"
        todo = [p for p in todo if p[0] not in failed]
    written: list[Path] = []
    if not todo:
        return FolderResult(written, skipped, failed)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=out_dir))

    def fail(key: str, e: IvfuseError) -> None:
        if not continue_on_error:
            kept = (
                f"; {len(written)} finished images kept in {out_dir} (resume with --skip-existing)" if written else ""
            )
            raise type(e)(f"{e}{kept}") from None
        failed[key] = str(e)

    def keep(key: str, fused: torch.Tensor) -> None:
        dest = out_dir / f"{key}{ext}"
        try:
            os.replace(write_image(stage / dest.name, fused), dest)
        except OSError as e:  # a full disk: name the output, not the staging file; the staging folder goes below
            e = write_error(dest, e)
            kept = (
                f"; {len(written)} finished images kept in {out_dir} (resume with --skip-existing)" if written else ""
            )
            raise OutputError(f"{e}{kept}") from None
        written.append(dest)

    try:
        if batch == 1 and workers == 0:
            for key, ip, vp in tqdm(todo, desc=f"fuse[{model.name}]", unit="pair", disable=not progress):
                try:
                    fused = _fuse_pair(runner, ip, vp, ir_norm, device)
                except IvfuseError as e:
                    fail(key, e)
                    continue
                keep(key, fused)
        else:
            _fuse_batched(runner, todo, [shapes[k] for k, _, _ in todo], ir_norm, batch, workers, progress, fail, keep)
    except KeyboardInterrupt:
        raise FusionInterrupted(
            f"{len(written) + len(skipped)} of {len(pairs)} fused images are in {out_dir}; "
            f"rerun with --skip-existing (skip_existing=True) to fuse the rest"
        ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return FolderResult(written, skipped, failed)


def _fuse_batched(
    runner: Runner, todo: list, shapes: list, ir_norm: str, batch: int, workers: int, progress: bool, fail, keep
) -> None:
    """Folder fusion through a DataLoader: workers read pairs, equal-size pairs are fused ``batch`` at a time."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(
        _PairReader(todo, ir_norm),
        batch_sampler=_size_batches(shapes, batch),
        num_workers=workers,
        collate_fn=_as_list,
        persistent_workers=False,
    )
    paths = {k: ip for k, ip, _ in todo}
    with tqdm(total=len(todo), desc=f"fuse[{runner.name}] batch {batch}", unit="pair", disable=not progress) as bar:
        for items in loader:
            groups: dict[tuple, list] = {}
            for key, ir, vis, err in items:
                if err is not None:
                    fail(key, err)
                else:  # a file changed since validation could differ in shape: regroup exactly
                    groups.setdefault((tuple(ir.shape), tuple(vis.shape)), []).append((key, ir, vis))
            for grp in groups.values():
                try:
                    fused = runner(torch.stack([g[1] for g in grp]), torch.stack([g[2] for g in grp])).cpu()
                except IvfuseError as e:
                    for key, _, _ in grp:
                        fail(key, type(e)(f"{paths[key]}: {e}"))
                    continue
                for (key, _, _), f in zip(grp, fused):
                    keep(key, f)
            bar.update(len(items))

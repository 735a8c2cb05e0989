"""ONNX export of fusion methods (the onnxruntime-backed method ``--method onnx:FILE``, :class:`OnnxFusionModel`,
lives in :mod:`ivfuse.models.onnx` and is re-exported here).

>>> ivfuse.export.export_onnx("lite", "lite.onnx")                  # CLI: ivfuse export lite --format onnx -o lite.onnx
>>> model = ivfuse.fusion.get_model("onnx:lite.onnx")                # not registered; get_model/fuse accept the name
>>> fused = ivfuse.fuse(ir, vis, method="onnx:lite.onnx")

The graph is the method's whole ``forward(ir, vis)`` with an RGB visible input: inputs ``ir`` ``B×1×H×W`` and
``vis`` ``B×3×H×W`` float32 in [0, 1], output ``fused`` ``B×3×H×W`` — colour conversion included — with dynamic
batch, height and width (TorchScript-based exporter, opset :data:`OPSET`). A gray visible image is run as three
equal channels (its BT.601 Y is the gray value, Cb = Cr = ½) and the first output channel is returned, so the same
file fuses gray and colour pairs. Methods whose forward is not a pure tensor computation (classical methods built
on NumPy/SciPy code) cannot be traced and are refused with a one-line error; ``docs/deployment.md`` lists which
methods export.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, IvfuseError
from .models.base import FusionModel
from .models.onnx import ONNX_PREFIX, OnnxFusionModel, load_onnx_model, need_module  # the first three re-exported

__all__ = ["ONNX_PREFIX", "OPSET", "OnnxFusionModel", "export_onnx", "load_onnx_model"]

#: ONNX opset of the exported graphs (onnxruntime >= 1.14 runs it)
OPSET = 17


def export_onnx(
    method: str | FusionModel,
    path: str | os.PathLike,
    *,
    opset: int = OPSET,
    size: tuple[int, int] = (64, 80),
    check: bool = True,
    **options: Any,
) -> Path:
    """Export ``method`` (a name with ``options`` such as ``weights=``, or a model instance) to ONNX at ``path``.

    ``size`` is the (H, W) of the dummy pair used for tracing (every size works afterwards: the axes are dynamic).
    With ``check`` the file is run once by onnxruntime at another size and batch and compared with PyTorch; a
    difference above 1e-4 raises :class:`IvfuseError`. Written atomically; metadata: method name and options.
    """
    from .fusion import get_model
    from .utils import atomic_write_bytes

    onnx = need_module("onnx")
    out = Path(path)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"{out}: ONNX output file must end in .onnx")
    model = get_model(method, "cpu", **options)
    if isinstance(model, OnnxFusionModel):
        raise InputError(f"{model.name}: is already an ONNX model")
    if getattr(model, "onnx_unsupported", None):
        raise IvfuseError(f"method '{model.name}' cannot be exported to ONNX: {model.onnx_unsupported}")
    h, w = size
    if min(h, w) < model.min_size:
        h = w = max(model.min_size, 64)
    g = torch.Generator().manual_seed(0)
    ir, vis = torch.rand(1, 1, h, w, generator=g), torch.rand(1, 3, h, w, generator=g)
    import io
    import tempfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            buf = io.BytesIO()
            torch.onnx.export(
                model,
                (ir, vis),
                buf,
                input_names=["ir", "vis"],
                output_names=["fused"],
                opset_version=opset,
                dynamic_axes={
                    "ir": {0: "batch", 2: "height", 3: "width"},
                    "vis": {0: "batch", 2: "height", 3: "width"},
                    "fused": {0: "batch", 2: "height", 3: "width"},
                },
                dynamo=False,
            )
    except IvfuseError:
        raise
    except Exception as e:  # noqa: BLE001 - any tracing/export failure becomes one line
        raise IvfuseError(
            f"method '{model.name}' cannot be exported to ONNX: {' '.join(str(e).split())[:200]}"
        ) from None
    proto = onnx.load_from_string(buf.getvalue())
    for k, v in {
        "ivfuse_method": model.name,
        "ivfuse_min_size": str(model.min_size),
        "ivfuse_options": json.dumps({k: str(v) for k, v in options.items()}),
        "ivfuse_inputs": "ir B×1×H×W, vis B×3×H×W RGB, float32 in [0, 1]",
    }.items():
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    data = proto.SerializeToString()
    if check:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d) / "m.onnx"
            tmp.write_bytes(data)
            diff = onnx_parity(model, OnnxFusionModel(tmp), sizes=((2, h + 8, w + 16),))
        if not diff <= 1e-4:
            raise IvfuseError(f"method '{model.name}': ONNX output differs from PyTorch by {diff:.3g} (> 1e-4)")
    return atomic_write_bytes(out, data)


@torch.inference_mode()
def onnx_parity(
    model: FusionModel, onnx_model: OnnxFusionModel, sizes=((1, 96, 128), (2, 120, 160)), seed: int = 0
) -> float:
    """Max |PyTorch − onnxruntime| over random RGB and gray pairs of the given ``(B, H, W)`` sizes."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b, h, w in sizes:
        ir = torch.rand(b, 1, h, w, generator=g)
        for c in (3, 1):
            vis = torch.rand(b, c, h, w, generator=g)
            worst = max(worst, float((model(ir, vis) - onnx_model(ir, vis)).abs().max()))
    return worst

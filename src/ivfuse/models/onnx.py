"""A fusion method run by onnxruntime from an ONNX file (``--method onnx:FILE``; written by
:func:`ivfuse.export.export_onnx`). Not registered: :func:`ivfuse.fusion.get_model` and :func:`ivfuse.fuse` accept
the name ``onnx:PATH`` (:data:`ONNX_PREFIX`). Moved here from ``ivfuse.export`` (which re-exports it) so that
``fusion`` and ``export`` both use it without importing each other (#21, ``docs/architecture.md``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import InputError, IvfuseError
from .base import FusionModel, check_pair

__all__ = ["ONNX_PREFIX", "OnnxFusionModel", "load_onnx_model", "need_module"]

#: method-name prefix that selects an ONNX file: ``onnx:PATH``
ONNX_PREFIX = "onnx:"


def need_module(module: str, extra: str = "deploy"):
    """``import module``, or a one-line :class:`IvfuseError` naming the ``pip install 'ivfuse[extra]'`` that brings
    it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise IvfuseError(f"'{module}' is not installed; install it with: pip install 'ivfuse[{extra}]'") from None


class OnnxFusionModel(FusionModel):
    """A fusion method run by onnxruntime (CPU) from a file written by :func:`ivfuse.export.export_onnx`.

    It is a :class:`FusionModel` (``model(ir, vis)``, tensors in [0, 1]), so ``fuse``, ``fuse_files``,
    ``fuse_folder``, video fusion and :class:`ivfuse.Fuser` run it like any method. ``.to(device)`` is accepted and
    ignored (inference runs on the CPU; outputs are returned on the inputs' device).
    """

    min_size = 1

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        ort = need_module("onnxruntime")
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: ONNX file not found")
        so = ort.SessionOptions()
        n = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        if n:
            so.intra_op_num_threads = n
        try:
            self.session = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{p}: cannot be loaded by onnxruntime ({' '.join(str(e).split())[:160]})") from None
        names = [i.name for i in self.session.get_inputs()]
        if names != ["ir", "vis"]:
            raise InputError(f"{p}: not an ivfuse fusion model (inputs {names}, expected ['ir', 'vis'])")
        self.path = p
        self.name = f"{ONNX_PREFIX}{p}"
        meta = self.session.get_modelmeta().custom_metadata_map
        self.method = meta.get("ivfuse_method", "?")
        self.min_size = int(meta.get("ivfuse_min_size", "1"))

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        check_pair(ir, vis, self.min_size, self.name)
        gray = vis.shape[1] == 1
        v = vis.expand(-1, 3, -1, -1) if gray else vis
        feed = {
            "ir": ir.detach().to("cpu", torch.float32).contiguous().numpy(),
            "vis": v.detach().to("cpu", torch.float32).contiguous().numpy(),
        }
        out = torch.from_numpy(self.session.run(["fused"], feed)[0]).to(ir.device)
        return out[:, :1] if gray else out


def load_onnx_model(name: str) -> OnnxFusionModel:
    """``onnx:PATH`` -> :class:`OnnxFusionModel`."""
    return OnnxFusionModel(name[len(ONNX_PREFIX) :])

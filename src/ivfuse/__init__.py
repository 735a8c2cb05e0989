"""ivfuse — task-driven infrared-visible image fusion.

Implemented methods are those of ``ivfuse.list_models()`` / ``ivfuse list methods``: the task-driven MetaFusion,
TSJNet, TIM and OCCO (trainable with ``ivfuse train``), the peers SeAFusion, TarDAL, IFCNN and DIDFuse from their
official weights, classical baselines and a real-time ``lite`` model; metrics calibrated against their reference
tools, dataset readers with labels, detectors and segmenters that judge fused images, and ``ivfuse bench``.

Python API (argument order everywhere: ``(ir, vis)`` in, fused out; float tensors in [0, 1], B×C×H×W)::

    import ivfuse
    model = ivfuse.create_model("gff")
    fused = model(ir, vis)
    qabf = ivfuse.create_metric("qabf")(fused, ir, vis)
    ds = ivfuse.load_dataset("msrs", split="test")

Names are imported lazily (PEP 562): ``import ivfuse`` is cheap, torch loads on first use of a model.
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "data": ["load_dataset", "list_datasets", "read_ir", "read_vis", "write_image"],
    "errors": ["InputError", "IvfuseError", "IvfuseWarning", "PairingError", "UnknownNameError"],
    "evaluate": ["evaluate_folder", "write_results"],
    "fusion": ["fuse", "fuse_files", "fuse_folder"],
    "metrics": ["compute_metrics", "create_metric", "list_metrics"],
    "models": ["create_model", "list_models"],
    "video": ["Fuser"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["__version__", *__all__]

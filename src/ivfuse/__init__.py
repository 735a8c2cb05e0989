"""ivfuse — task-driven infrared-visible image fusion.

Python API (argument order everywhere: ``(ir, vis)`` in, fused out; float tensors in [0, 1], B×C×H×W)::

    import ivfuse
    model = ivfuse.create_model("gff")
    fused = model(ir, vis)
    qabf = ivfuse.create_metric("qabf")(fused, ir, vis)
    ds = ivfuse.load_dataset("msrs", split="test")

Names are imported lazily (PEP 562): ``import ivfuse`` is cheap, torch loads on first use of a model.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "data": ["load_dataset", "list_datasets", "read_ir", "read_vis", "write_image"],
    "errors": ["InputError", "IvfuseError", "PairingError", "UnknownNameError"],
    "evaluate": ["evaluate_folder", "write_results"],
    "fusion": ["fuse", "fuse_files", "fuse_folder"],
    "metrics": ["compute_metrics", "create_metric", "list_metrics"],
    "models": ["create_model", "list_models"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = ["__version__", *sorted(_WHERE)]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

"""Fusion methods: one registry, one file per method family (``ivfuse list methods``)."""

from .base import MODELS, FusionModel, check_pair, create_model, list_models, register_model


def _register_models() -> None:
    """Import every module of this package once: each method file registers its methods (``@register_model``), so a
    new method's model file is found without a hand-kept list (classical rules, the peers from their official
    weights, the task-driven methods and ``lite`` with their shipped weights)."""
    import importlib
    import pkgutil

    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{m.name}")


_register_models()

__all__ = ["MODELS", "FusionModel", "check_pair", "create_model", "list_models", "register_model"]

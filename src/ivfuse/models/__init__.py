"""Fusion methods: one registry, one file per method family (``ivfuse list methods``)."""

from . import classical, metafusion  # noqa: F401  (registration)
from .base import MODELS, FusionModel, check_pair, create_model, list_models, register_model

__all__ = ["MODELS", "FusionModel", "check_pair", "create_model", "list_models", "register_model"]

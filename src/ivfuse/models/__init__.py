"""Fusion methods: one registry, one file per method family (``ivfuse list methods``)."""

from . import classical, metafusion  # noqa: F401  (registration)
from . import didfuse, ifcnn, sage, seafusion, tardal  # noqa: F401  (peers, official weights)
from . import csf, densefuse, pmgi, sdnet, stdfusionnet, u2fusion  # noqa: F401  (TF peers, weights as .npz)
from . import lite, warm  # noqa: F401  (real-time model, shipped weights; warm_average, issue 20)
from . import occo, tim, tsjnet  # noqa: F401  (task-driven methods with CPU-trained shipped weights)
from .base import MODELS, FusionModel, check_pair, create_model, list_models, register_model

__all__ = ["MODELS", "FusionModel", "check_pair", "create_model", "list_models", "register_model"]

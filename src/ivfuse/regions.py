"""OCCO's region partition of a pair's object masks (dependency-free: torch/NumPy and :mod:`ivfuse.errors` only).

With ``m_vis``/``m_ir`` the union of the object masks found in each modality: shared ``s = m_vis · m_ir``, unique
``u_vis = m_vis − s``, ``u_ir = m_ir − s``, background ``bg = 1 − s − u_vis − u_ir`` (:func:`partition`; the four
are disjoint and sum to 1), stored as an 8-bit class map **0 background, 1 shared, 2 IR-unique, 3 visible-unique**
(:func:`class_map`, :data:`CLASS_NAMES`; :func:`object_masks_from_class_map` gives ``m_ir``, ``m_vis`` back).
Used by :mod:`ivfuse.masks` (``ivfuse masks``), :mod:`ivfuse.losses.occo` and :mod:`ivfuse.engine.occo`.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import InputError

__all__ = ["CLASS_NAMES", "partition", "class_map", "object_masks_from_class_map"]

#: class-map values
CLASS_NAMES = {0: "background", 1: "shared", 2: "ir_unique", 3: "vis_unique"}


def partition(m_ir: torch.Tensor, m_vis: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split two object masks (any equal shape, values in {0, 1}) into ``shared``, ``u_ir``, ``u_vis``, ``bg``.

    Returns float tensors of the input shape; they are disjoint and sum to 1 everywhere.
    """
    if m_ir.shape != m_vis.shape:
        raise InputError(f"object masks differ in shape: ir {tuple(m_ir.shape)}, vis {tuple(m_vis.shape)}")
    a = (m_ir > 0.5).float() if m_ir.dtype != torch.bool else m_ir.float()
    b = (m_vis > 0.5).float() if m_vis.dtype != torch.bool else m_vis.float()
    s = a * b
    u_ir, u_vis = a - s, b - s
    return {"shared": s, "u_ir": u_ir, "u_vis": u_vis, "bg": 1 - s - u_ir - u_vis}


def class_map(m_ir: torch.Tensor, m_vis: torch.Tensor) -> torch.Tensor:
    """``H×W`` uint8 map: 0 background, 1 shared, 2 IR-unique, 3 visible-unique."""
    p = partition(m_ir, m_vis)
    return (p["shared"] * 1 + p["u_ir"] * 2 + p["u_vis"] * 3).to(torch.uint8)


def object_masks_from_class_map(cm: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`class_map`: ``(m_ir, m_vis)`` as float tensors in {0, 1}."""
    cm = torch.as_tensor(np.asarray(cm))
    if cm.numel() and int(cm.max()) > 3:
        raise InputError(f"class map has value {int(cm.max())}; expected 0-3 (bg, shared, ir-unique, vis-unique)")
    return ((cm == 1) | (cm == 2)).float(), ((cm == 1) | (cm == 3)).float()

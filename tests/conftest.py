"""Shared fixtures: the ../shared folder (data, weights, golden metric values) and small synthetic images."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ivfuse.utils import shared_root

SHARED = shared_root()


@pytest.fixture(autouse=True)
def _ivfuse_logger():
    """Each test starts with the ``ivfuse`` logger as a fresh process has it: ``ivfuse.cli.main`` run in-process
    installs a handler and sets the level, which would otherwise leak into later tests' ``caplog``."""
    log = logging.getLogger("ivfuse")
    level, handlers = log.level, list(log.handlers)
    yield
    log.setLevel(level)
    log.handlers[:] = handlers


def need(rel: str) -> Path:
    """Path under the shared folder, or skip the test with a reason when it is absent."""
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"shared data not available: {p} (set IVFUSE_SHARED)")
    return p


@pytest.fixture(scope="session")
def shared() -> Path:
    return need(".")


@pytest.fixture
def pair_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """Two folders with three structured 64×80 pairs (gray IR, RGB visible)."""
    rng = np.random.default_rng(0)
    ir_d, vis_d = tmp_path / "ir", tmp_path / "vi"
    ir_d.mkdir()
    vis_d.mkdir()
    yy, xx = np.mgrid[0:64, 0:80]
    for i in range(3):
        ir = ((xx * 2 + i * 20) % 256).astype(np.uint8)
        ir[20:40, 30:50] = 250  # a hot object
        vis = np.stack([(yy * 3) % 256, (xx * 3) % 256, rng.integers(0, 256, (64, 80))], -1).astype(np.uint8)
        Image.fromarray(ir).save(ir_d / f"p{i}.png")
        Image.fromarray(vis).save(vis_d / f"p{i}.png")
    return ir_d, vis_d


def pytest_report_header(config):
    return (
        f"ivfuse shared folder: {SHARED} ({'present' if SHARED.exists() else 'absent'}); "
        f"IVFUSE_SHARED={os.environ.get('IVFUSE_SHARED')}"
    )

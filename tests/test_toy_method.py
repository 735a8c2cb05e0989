"""#21 item 2: a new method is a model file, a recipe file and a config. ``tests/toy_method/`` holds those three and
nothing in ``ivfuse`` names it: the method trains (2 steps) through ``ivfuse train``, exports, fuses through ``ivfuse
fuse`` and enters ``ivfuse bench``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import need
from PIL import Image

import ivfuse

TOY = Path(__file__).parent / "toy_method"


@pytest.fixture
def toy():
    """Import the toy's model and recipe files (they register themselves); unregister them afterwards."""
    from ivfuse.engine import RECIPES
    from ivfuse.models.base import MODELS

    sys.path.insert(0, str(TOY))
    import toy_model  # noqa: F401
    import toy_recipe  # noqa: F401

    yield
    sys.path.remove(str(TOY))
    for reg in (MODELS, RECIPES):
        reg._items.pop("toy_mix", None)
    for m in ("toy_model", "toy_recipe"):
        sys.modules.pop(m, None)


@pytest.mark.realdata
@pytest.mark.slow
def test_a_method_is_three_files(tmp_path, toy):
    tno, msrs = need("data/TNO"), need("data/MSRS")
    from ivfuse.cli import main
    from ivfuse.data.images import read_ir, read_vis

    assert sorted(p.name for p in TOY.iterdir() if p.suffix in (".py", ".yaml")) == [
        "toy_mix.yaml",
        "toy_model.py",
        "toy_recipe.py",
    ]
    out, exp = tmp_path / "run", tmp_path / "toy.safetensors"
    assert main(["train", "toy_mix", f"out={out}", f"export={exp}", "-q"]) == 0
    hist = json.loads((out / "summary.json").read_text())["history"]["train"]
    assert len(hist) == 2  # 2 epochs of 1 batch: two optimiser steps
    net = ivfuse.create_model("toy_mix", weights=str(exp))
    # it learned something: the untrained toy is the pixel average
    assert float(net.a.detach()) != 0 and float(net.b.detach()) != 0
    # ivfuse fuse with the exported weights writes the model's output (8-bit)
    ir_p, vis_p = tno / "ir" / "01.png", tno / "vi" / "01.png"
    assert (
        main(
            [
                "fuse",
                "--method",
                "toy_mix",
                "--weights",
                str(exp),
                "--ir",
                str(ir_p),
                "--vis",
                str(vis_p),
                "-o",
                str(tmp_path / "f.png"),
                "-q",
            ]
        )
        == 0
    )
    with torch.no_grad():
        want = net(read_ir(ir_p)[None], read_vis(vis_p)[None])[0]
    got = np.asarray(Image.open(tmp_path / "f.png"), dtype=np.float64) / 255
    want = want.permute(1, 2, 0).squeeze(-1).numpy() if want.shape[0] == 3 else want[0].numpy()
    assert got.shape == want.shape and np.abs(got - want).max() <= 1 / 255 + 1e-6
    # and it is a bench row like any registered method
    assert (
        main(
            [
                "bench",
                "--methods",
                f"toy=toy_mix@{exp}",
                "--data",
                "msrs:val",
                "--limit",
                "2",
                "--protocols",
                "fusion",
                "--no-references",
                "--baseline",
                "none",
                "--no-speed",
                "--out",
                str(tmp_path / "bench"),
                "-q",
            ]
        )
        == 0
    )
    assert msrs.is_dir() and "| toy |" in (tmp_path / "bench" / "results.md").read_text()

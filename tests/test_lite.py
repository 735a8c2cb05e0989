"""The real-time ``lite`` model: architecture, shipped weights + metadata, its training recipe, and that it adds
detail the pixel average loses (speed is measured by benchmarks/bench_speed.py, not here)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import need

import ivfuse
from ivfuse.engine import train
from ivfuse.engine.config import load_config
from ivfuse.errors import InputError
from ivfuse.models.lite import LiteFusionNet


def test_shipped_lite_loads_with_training_metadata():
    from importlib import resources

    from safetensors import safe_open

    m = ivfuse.create_model("lite")
    assert isinstance(m, LiteFusionNet) and sum(p.numel() for p in m.parameters()) < 20_000
    with resources.as_file(resources.files("ivfuse") / "weights" / "lite_default.safetensors") as f, \
            safe_open(f, "pt") as st:  # fmt: skip
        meta = st.metadata()
    tr = json.loads(meta["training"])
    assert tr["data"] == [{"name": "msrs", "split": "dev-train"}] and tr["epochs"] > 0 and tr["wall_s"] > 0
    assert set(json.loads(meta["metrics"])) >= {"val_en", "val_qabf"}
    assert json.loads(meta["config"])["width"] == m.width


def test_lite_output_contract():
    m = ivfuse.create_model("lite", weights=None)
    g = torch.Generator().manual_seed(0)
    ir, vis = torch.rand(2, 1, 37, 51, generator=g), torch.rand(2, 3, 37, 51, generator=g)  # odd sizes
    with torch.no_grad():
        out = m(ir, vis)
    assert out.shape == vis.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    assert m(ir, vis[:, :1]).shape == (2, 1, 37, 51)
    with pytest.raises(InputError, match="minimum"):
        m(ir[..., :3, :3], vis[..., :3, :3])


@pytest.mark.realdata
def test_lite_adds_detail_over_the_average_on_tno():
    """On TNO (not a training set) the shipped model's fused images are sharper (SF, AG) than the pixel average."""
    need("data/TNO")
    ds = ivfuse.load_dataset("tno")
    lite, avg = ivfuse.create_model("lite"), ivfuse.create_model("average")
    wins = 0
    for i in range(4):
        s = ds[i]
        with torch.inference_mode():
            a = ivfuse.compute_metrics(lite(s["ir"][None], s["vis"][None])[0], s["ir"], s["vis"], ["sf", "ag"])
            b = ivfuse.compute_metrics(avg(s["ir"][None], s["vis"][None])[0], s["ir"], s["vis"], ["sf", "ag"])
        wins += (a["sf"] > b["sf"]) + (a["ag"] > b["ag"])
    assert wins == 8


@pytest.mark.realdata
def test_lite_recipe_trains_exports_and_refuses_held_out_data(tmp_path):
    need("data/MSRS")
    with pytest.raises(InputError, match="held-out"):
        train("lite", load_config("lite", "cpu", overrides=["data=[{name: msrs, split: dev-val}]"]), tmp_path / "bad")
    cfg = load_config("lite", "cpu", overrides=["epochs=2", "max_batches=2", "batch=2", "crop=[64, 64]", "val.max=1"])
    train("lite", cfg, tmp_path / "run", export=tmp_path / "l.safetensors", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["history"]["train"]) == 2
    net = LiteFusionNet.from_checkpoint(tmp_path / "run" / "final.pt")
    exported = ivfuse.create_model("lite", weights=str(tmp_path / "l.safetensors"))
    x, v = torch.rand(1, 1, 32, 40), torch.rand(1, 3, 32, 40)
    assert torch.equal(net(x, v), exported(x, v))

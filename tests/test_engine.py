"""The training engine on small modules: config parsing/typing, the optimisation step, the virtual step, batch
sources, the Trainer (exact resume, modules added between stages), engine.train, the documented example recipe,
reproducible downstream fine-tuning, and the train CLI's one-line errors."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from ivfuse.cli import main, parse_options
from ivfuse.config import apply_overrides, check_types, parse_items, parse_value
from ivfuse.data.labels import Boxes
from ivfuse.engine import (
    RECIPES,
    BatchSource,
    OptimStep,
    RandomCrop,
    RandomFlip,
    Recipe,
    Stage,
    Trainer,
    call_with,
    register_recipe,
    train,
    virtual_step,
)
from ivfuse.engine.config import load_config, split_items
from ivfuse.errors import InputError, IvfuseError, UnknownNameError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ config
def test_one_parser_reads_exponents_as_floats_and_yaml_collections():
    assert parse_value("5e-4") == 5e-4 and isinstance(parse_value("5e-4"), float)
    assert parse_value("1E3") == 1000.0 and parse_value("-2e+2") == -200.0 and parse_value("1.0e-3") == 1e-3
    assert parse_value("7") == 7 and isinstance(parse_value("7"), int)
    assert parse_value("[1, 2]") == [1, 2] and parse_value("[{name: msrs, split: train}]") == [
        {"name": "msrs", "split": "train"}
    ]
    assert parse_value("true") is True and parse_value("null") is None and parse_value("five") == "five"
    assert parse_value("[1") == "[1"  # not YAML: the raw string
    # --opt and train share it
    assert parse_options(["eps1=5e-4", "levels=5", "two-words=x"]) == {"eps1": 5e-4, "levels": 5, "two_words": "x"}
    assert parse_items(["a=1e-2"]) == {"a": 0.01}
    with pytest.raises(InputError, match="not of the form key=value"):
        parse_items(["levels"])


def test_overrides_are_checked_against_the_defaults_types():
    d = {"lr": 1e-3, "n": 3, "flag": False, "name": "x", "crop": [96, 96], "sub": {"a": 1, "b": "y"}, "any": None}
    cfg = apply_overrides(d, ["lr=5e-4", "n=4", "flag=true", "crop=[64, 48]", "sub.a=2", "any=[1]"])
    assert cfg["lr"] == 5e-4 and type(cfg["lr"]) is float and cfg["n"] == 4 and cfg["flag"] is True
    assert cfg["crop"] == [64, 48] and cfg["sub"] == {"a": 2, "b": "y"} and cfg["any"] == [1]
    assert type(apply_overrides(d, ["lr=1"])["lr"]) is float  # int where a float is expected: converted
    assert apply_overrides(d, ["sub={b: z}"])["sub"] == {"a": 1, "b": "z"}  # a mapping merges into the section
    for bad, msg in [
        ("n=abc", "'n' must be an integer"),
        ("n=1.5", "'n' must be an integer"),
        ("flag=1", "'flag' must be a boolean"),
        ("crop=96", "'crop' must be a list"),
        ("sub=oops", "'sub' must be a mapping"),
        ("lr=fast", "'lr' must be a number"),
        ("name=3", "'name' must be a string"),
        ("sub={c: 1}", "unknown config key 'sub.c'"),
    ]:
        with pytest.raises(IvfuseError, match=re.escape(msg)):
            apply_overrides(d, [bad])
    with pytest.raises(UnknownNameError, match="did you mean 'lr'"):
        apply_overrides(d, ["lrr=1"])
    assert d["lr"] == 1e-3  # the defaults are not modified
    with pytest.raises(InputError, match="'sub.b' must be a string"):
        check_types({"sub": {"b": 1}}, d)


def test_metafusion_config_types_presets_and_user_files(tmp_path):
    cfg = load_config("metafusion", "cpu", overrides=["optim.lr_f=5e-4"])
    assert cfg["optim"]["lr_f"] == 5e-4 and cfg["fusion"]["width"] == 0.25  # the documented override works
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=cfg["optim"]["lr_f"])  # it crashed Adam before
    assert opt.param_groups[0]["lr"] == 5e-4
    for bad in ("epochs.pretrain=ten", "data=oops", "data.crop=96", "epochs.pretrain=abc"):
        with pytest.raises(InputError, match=re.escape(bad.split("=")[0])):
            load_config("metafusion", "cpu", overrides=[bad])
    user = tmp_path / "mine.yaml"
    user.write_text("epochs: {pretrain: 3}\noptim: {lr_f: 2e-4}\n")
    got = load_config("metafusion", config=user)
    assert got["epochs"]["pretrain"] == 3 and got["optim"]["lr_f"] == 2e-4 and got["epochs"]["mfe"] == 150
    user.write_text("epochs: {pretrain: many}\n")
    with pytest.raises(InputError, match=r"mine.yaml key 'epochs.pretrain' must be an integer"):
        load_config("metafusion", config=user)
    with pytest.raises(UnknownNameError, match="did you mean 'cpu'"):
        load_config("metafusion", "cpuu")
    run, ov = split_items(["out=runs/x", "resume=force", "epochs.det=0", "preset=cpu"])
    assert run == {"out": "runs/x", "resume": "force", "preset": "cpu"} and ov == ["epochs.det=0"]


def test_ranges_and_shapes_of_the_schema_are_one_line_errors_naming_the_key(tmp_path):
    from ivfuse.config import Limit, check_limits

    cases = [
        ("metafusion", "epochs.mfe=-1", "'epochs.mfe' must be >= 0, got -1"),
        ("metafusion", "rounds=0", "'rounds' must be >= 1, got 0"),
        ("metafusion", "data.crop=[96]", "'data.crop' must be [height, width], got [96]"),
        ("occo", "crop=[16, 64]", "'crop' must be [height, width] with both >= 32 (VGG relu5), got [16, 64]"),
        ("occo", "lr=0", "'lr' must be > 0, got 0.0"),
        ("tim", "data.det_crop=[1, 2, 3]", "'data.det_crop' must be [height, width], got [1, 2, 3]"),
        ("tim", "meta.inner_steps=0", "'meta.inner_steps' must be >= 1, got 0"),
        ("tsjnet", "data.crop=[64]", "'data.crop' must be [height, width] or null (full size), got [64]"),
        ("lite", "width=0", "'width' must be >= 1, got 0"),
        ("lite", "judge.imgsz=8", "'judge.imgsz' must be >= 32, got 8"),
        ("lite", "judge.inner_lr=0", "'judge.inner_lr' must be > 0, got 0.0"),
        ("lite", "target.boost=-1", "'target.boost' must be >= 0, got -1.0"),
    ]
    for method, bad, msg in cases:
        with pytest.raises(InputError) as e:
            load_config(method, "cpu", overrides=[bad])
        assert str(e.value) == f"config key {msg}"
    assert load_config("tsjnet", "cpu", overrides=["data.crop=null"])["data"]["crop"] is None
    # a hand-built config dict meets the same limits in train(), before anything is written
    cfg = load_config("metafusion", "cpu")
    cfg["epochs"]["det"] = -2
    with pytest.raises(InputError, match=re.escape("config key 'epochs.det' must be >= 0, got -2")):
        train("metafusion", cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    # the Limit itself: bounds, list shapes, null, non-numbers; keys the config lacks are skipped
    lim = {"a": Limit(min=0, max=1), "b.*": Limit(above=0), "c": Limit(items=("h", "w"), min=2, null=True)}
    check_limits({"a": 1, "b": {"x": 0.5, "y": 3}, "c": None}, lim)
    check_limits({"c": [2, 3.5]}, lim)
    cases = [
        ({"a": 1.5}, "'a' must be >= 0 and <= 1, got 1.5"),
        ({"b": {"y": 0}}, "'b.y' must be > 0, got 0"),
        ({"c": [2, 1]}, "'c' must be [h, w] with both >= 2 or null, got [2, 1]"),
        ({"c": [True, 3]}, "'c' must be [h, w]"),
        ({"a": "x"}, "'a' must be >= 0 and <= 1, got x"),
    ]
    for cfg, msg in cases:
        with pytest.raises(InputError, match=re.escape(msg)):
            check_limits(cfg, lim)


# ------------------------------------------------------------------------------------------------ step helpers
def test_optim_step_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    a = nn.Linear(3, 1)
    b = nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    sa = OptimStep(torch.optim.SGD(a.parameters(), lr=0.1))
    sb = OptimStep(torch.optim.SGD(b.parameters(), lr=0.1), accumulate=2)
    assert sa(nn.functional.mse_loss(a(x), y)) is True
    assert sb(nn.functional.mse_loss(b(x[:4]), y[:4])) is False  # first micro-batch: no step yet
    assert not torch.equal(b.weight, a.weight)
    assert sb(nn.functional.mse_loss(b(x[4:]), y[4:])) is True
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_optim_step_clips_and_trains_only_its_inputs():
    lin, other = nn.Linear(4, 1), nn.Linear(4, 1)
    before = lin.weight.detach().clone()
    step = OptimStep(torch.optim.SGD(lin.parameters(), lr=1.0), clip=0.5)
    loss = (lin(torch.full((2, 4), 100.0)) + other(torch.ones(2, 4))).sum()
    step(loss, inputs=list(lin.parameters()))
    grads = torch.cat([p.grad.flatten() for p in lin.parameters()])
    assert float(grads.norm()) == pytest.approx(0.5, rel=1e-5)  # clipped to the max norm (unclipped: ~400)
    torch.testing.assert_close(lin.weight - before, -lin.weight.grad)  # SGD lr 1 stepped with the clipped gradient
    assert other.weight.grad is None  # the guide network got no gradient


def test_virtual_step_second_order_matches_closed_form():
    """θ' = θ − β ∂(αθ²)/∂θ = θ(1 − 2βα); L = θ'² ⇒ ∂L/∂α = 2θ'·(−2βθ)."""
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.5)
    alpha = torch.tensor(0.7, requires_grad=True)
    beta, theta = 0.1, 1.5
    inner = alpha * (m.weight**2).sum()
    virt = virtual_step(m, inner, beta)
    theta_v = theta * (1 - 2 * beta * 0.7)
    assert float(virt["weight"].detach()) == pytest.approx(theta_v)
    out = call_with(m, virt, torch.ones(1, 1))  # forward with θ'
    assert float(out.detach()) == pytest.approx(theta_v)
    (g,) = torch.autograd.grad((out**2).sum(), alpha)
    assert float(g) == pytest.approx(2 * theta_v * (-2 * beta * theta), rel=1e-6)
    assert float(m.weight.detach()) == 1.5  # the module itself is unchanged
    first = virtual_step(m, alpha * (m.weight**2).sum(), beta, first_order=True)
    assert torch.autograd.grad((call_with(m, first, torch.ones(1, 1)) ** 2).sum(), alpha, allow_unused=True)[0] is None


# ------------------------------------------------------------------------------------------------ losses
def test_fusion_loss_terms_on_hand_cases():
    from ivfuse.losses import FusionLoss, gradient_loss, intensity_loss, ssim_loss

    g = torch.Generator().manual_seed(0)
    ir, vis = torch.rand(1, 1, 32, 32, generator=g), torch.rand(1, 1, 32, 32, generator=g)
    assert float(ssim_loss(ir, ir, ir)) == pytest.approx(0.0, abs=1e-6)
    assert float(ssim_loss(ir, ir, vis)) > 0.1  # dissimilar to the visible source
    assert float(intensity_loss(torch.maximum(ir, vis), ir, vis)) == 0.0
    assert float(intensity_loss(torch.zeros_like(ir), ir, vis)) == pytest.approx(float(torch.maximum(ir, vis).mean()))
    flat = torch.full_like(ir, 0.5)
    assert float(gradient_loss(flat, flat, flat)) == 0.0 and float(gradient_loss(flat, ir, flat)) > 0
    loss = FusionLoss({"ssim": 2.0, "intensity": 0.0, "gradient": 1.0})
    total, parts = loss(vis, ir, vis)
    assert set(parts) == {"ssim", "gradient"}  # zero-weight terms are not computed
    assert float(total) == pytest.approx(2 * parts["ssim"] + parts["gradient"], rel=1e-6)
    with pytest.raises(UnknownNameError, match="did you mean 'ssim'"):
        FusionLoss({"ssmi": 1.0})


# ------------------------------------------------------------------------------------------------ batch source
def _samples(n=6, h=20, w=24):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        out.append(
            {
                "name": f"s{i}",
                "ir": torch.rand(1, h, w, generator=g),
                "vis": torch.rand(3, h, w, generator=g),
                "mask": torch.randint(0, 3, (h, w), generator=g),
                "boxes": Boxes(torch.tensor([[2.0, 3.0, 12.0, 15.0]]), torch.tensor([1]), ("a", "b")),
            }
        )
    return out


def test_batch_source_is_a_function_of_seed_key_and_epoch():
    src = BatchSource(_samples(), 2, [RandomCrop(8), RandomFlip()], seed=3)
    a = [b["name"] for b in src.epoch(0, "s")]
    assert a == [b["name"] for b in src.epoch(0, "s")] and len(a) == len(src) == 3
    first = next(iter(src.epoch(0, "s")))
    again = next(iter(src.epoch(0, "s")))
    assert torch.equal(first["ir"], again["ir"]) and torch.equal(first["mask"], again["mask"])
    orders = {tuple(n for b in src.epoch(e, k) for n in b["name"]) for e in range(4) for k in ("s", "t")}
    assert len(orders) > 4  # epochs and streams get different orders
    torch.manual_seed(123)
    x = next(iter(src.epoch(1, "s")))["ir"]
    torch.manual_seed(456)  # the global generator does not matter
    assert torch.equal(x, next(iter(src.epoch(1, "s")))["ir"])
    other = BatchSource(_samples(), 2, [RandomCrop(8)], seed=4)
    assert [b["name"] for b in other.epoch(0, "s")] != a or not torch.equal(
        next(iter(other.epoch(0, "s")))["ir"], first["ir"]
    )


def test_crop_and_flip_move_images_masks_boxes_and_extras_together():
    s = _samples(1, 20, 24)[0]
    s["extra"] = s["ir"][0] * 10  # a spatial extra (H×W) must follow the crop
    s["ir"][0, 3:15, 2:12] = 5.0  # the box region is marked in the image
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        c = RandomFlip(1.0)(RandomCrop((10, 12))(s, g), g)
        assert c["ir"].shape == (1, 10, 12) and c["vis"].shape == (3, 10, 12) and c["mask"].shape == (10, 12)
        assert torch.equal(c["extra"], c["ir"][0] * 10) or (c["ir"][0] == 5).any()
        b = c["boxes"].xyxy
        if len(b):
            x0, y0, x1, y1 = (int(round(float(v))) for v in b[0])
            assert (c["ir"][0, y0:y1, x0:x1] == 5).all()  # the box still covers the marked region
            assert 0 <= x0 < x1 <= 12 and 0 <= y0 < y1 <= 10
    small = RandomCrop(32)(s, g)  # padded: masks with the ignore index
    assert small["ir"].shape == (1, 32, 32) and int(small["mask"][-1, -1]) == 255


def test_prepare_caches_extras_on_disk(tmp_path):
    src = BatchSource(_samples(4), 2, [RandomCrop(8)], seed=0)
    calls = []

    def edges(s):
        calls.append(s["name"])
        return (s["ir"][0] > 0.5).float()

    src.prepare("sam", edges, cache=tmp_path / "cache")
    assert len(calls) == 4 and len(list((tmp_path / "cache").glob("*.safetensors"))) == 4
    b = next(iter(src.epoch(0, "x")))
    assert b["sam"].shape == (2, 8, 8) and torch.equal(b["sam"], (b["ir"][:, 0] > 0.5).float())
    again = BatchSource(_samples(4), 2, seed=0)
    again.prepare("sam", edges, cache=tmp_path / "cache")
    assert len(calls) == 4  # read from the cache, not recomputed
    assert torch.equal(again.samples[0]["sam"], src.samples[0]["sam"])


# ------------------------------------------------------------------------------------------------ trainer
class _Stop(Exception):
    pass


def _toy_data(seed):
    g = torch.Generator().manual_seed(99)
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    samples = []
    for i in range(12):
        x = torch.randn(4, generator=g)
        samples.append({"name": str(i), "x": x, "y": w @ x})
    return BatchSource(samples, 3, seed=seed)


@pytest.fixture
def search_derive_retrain():
    """A registered recipe shaped like TIM: search, derive (a module added between stages), retrain."""

    @register_recipe("toy_sdr")
    class Toy(Recipe):
        fail_at = None  # (stage, epoch, batch) to raise at

        def build(self):
            self.search = nn.Linear(4, 1)
            opt = torch.optim.Adam(self.search.parameters(), lr=0.05)
            self.step_s = OptimStep(opt)
            self.modules, self.optimizers = {"search": self.search}, {"search": opt}
            self.data = _toy_data(self.cfg["seed"])

        def _step(self, net, step):
            def fn(batch, ctx):
                if Toy.fail_at == (ctx["stage"], ctx["epoch"], ctx["batch"]):
                    raise _Stop
                loss = nn.functional.mse_loss(net(batch["x"]), batch["y"]) + 1e-3 * torch.randn(()) ** 2
                step(loss)
                return {"loss": float(loss.detach())}

            return fn

        def derive(self, ctx):
            self.retrain = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))  # random init: global RNG
            with torch.no_grad():
                self.retrain[0].weight.mul_(self.search.weight.abs().sign())
            opt = torch.optim.SGD(self.retrain.parameters(), lr=0.05, momentum=0.9)
            self.step_r = OptimStep(opt)
            ctx["trainer"].add("retrain", self.retrain, opt)
            return {"kept": float(self.search.weight.detach().abs().sum())}

        def stages(self):
            e = self.cfg["epochs"]
            return [
                Stage("search", e, self.data, self._step(self.search, self.step_s), on_stage_end=self.derive),
                Stage("retrain", e, self.data, lambda b, c: self._step(self.retrain, self.step_r)(b, c)),
            ]

        def validate(self):
            x = torch.stack([s["x"] for s in self.data.samples])
            y = torch.stack([s["y"] for s in self.data.samples])
            return {"mse": float(nn.functional.mse_loss(self.retrain(x), y).detach())}

        def export(self, path):
            torch.save(self.retrain.state_dict(), path)
            return Path(path)

    yield Toy
    RECIPES._items.pop("toy_sdr")


def _final(out):
    ck = torch.load(Path(out) / "final.pt", weights_only=True)
    return ck["modules"], ck["optimizers"]


def _equal_states(a, b):
    return json.dumps(sorted(a), default=str) == json.dumps(sorted(b), default=str) and all(
        torch.equal(a[m][k], b[m][k]) for m in a for k in a[m]
    )


def test_same_seed_runs_are_bitwise_equal_and_differ_from_another_seed(tmp_path, search_derive_retrain):
    cfg = {"seed": 0, "epochs": 3}
    s1 = train("toy_sdr", cfg, tmp_path / "a", progress=False)
    s2 = train("toy_sdr", cfg, tmp_path / "b", progress=False)
    assert _equal_states(_final(tmp_path / "a")[0], _final(tmp_path / "b")[0])
    assert s1["history"] == s2["history"] and s1["metrics"]["val"] == s2["metrics"]["val"]
    train("toy_sdr", {"seed": 1, "epochs": 3}, tmp_path / "c", progress=False)
    assert not torch.equal(
        _final(tmp_path / "a")[0]["retrain"]["0.weight"], _final(tmp_path / "c")[0]["retrain"]["0.weight"]
    )
    assert s1["history"]["retrain"][-1]["loss"] < s1["history"]["search"][0]["loss"]  # it learns
    assert s1["metrics"]["search/end"]["kept"] > 0 and len(s1["history"]["search"]) == 3


@pytest.mark.parametrize("where", [("search", 1, 2), ("retrain", 0, 1), ("retrain", 2, 3)])
def test_interrupted_run_resumes_bitwise_equal(tmp_path, search_derive_retrain, where, caplog):
    """Killed inside a stage (also after a module was added between stages), rerun on the same folder: the
    final modules and optimiser states equal an uninterrupted run's exactly."""
    cfg = {"seed": 5, "epochs": 3}
    train("toy_sdr", cfg, tmp_path / "full", progress=False)
    search_derive_retrain.fail_at = where
    with pytest.raises(_Stop):
        train("toy_sdr", cfg, tmp_path / "cut", progress=False)
    search_derive_retrain.fail_at = None
    assert not (tmp_path / "cut" / "final.pt").exists()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ivfuse"):  # the resume notice is an INFO record of the "ivfuse" logger
        s = train("toy_sdr", cfg, tmp_path / "cut", progress=False)
    err = caplog.text
    stage, epoch, _ = where
    pos = f"stage {stage} epoch {epoch}" if epoch else "stage search epoch 3"
    assert f"resuming from {tmp_path / 'cut' / 'last.pt'} after {pos}" in err
    full, cut = _final(tmp_path / "full"), _final(tmp_path / "cut")
    assert _equal_states(full[0], cut[0])
    assert all(
        torch.equal(full[1]["retrain"]["state"][i]["momentum_buffer"], cut[1]["retrain"]["state"][i]["momentum_buffer"])
        for i in full[1]["retrain"]["state"]
    )
    assert s["history"] == json.loads((tmp_path / "full" / "summary.json").read_text())["history"]


def test_resume_policy(tmp_path, search_derive_retrain, caplog):
    train("toy_sdr", {"seed": 0, "epochs": 1}, tmp_path / "r", progress=False)
    with pytest.raises(InputError, match=r"different config \(epochs: 1 -> 2\).*resume=force.*resume=new"):
        train("toy_sdr", {"seed": 0, "epochs": 2}, tmp_path / "r", progress=False)
    s = train("toy_sdr", {"seed": 0, "epochs": 2}, tmp_path / "r", progress=False, resume="force")
    assert len(s["history"]["search"]) == 2 and [
        r.levelname for r in caplog.records if "resume=force" in r.message
    ] == ["WARNING"]
    s = train("toy_sdr", {"seed": 0, "epochs": 2}, tmp_path / "r", progress=False, resume="new")
    fresh = train("toy_sdr", {"seed": 0, "epochs": 2}, tmp_path / "fresh", progress=False)
    assert s["history"] == fresh["history"]
    with pytest.raises(InputError, match="resume must be one of"):
        train("toy_sdr", {"seed": 0, "epochs": 2}, tmp_path / "r", progress=False, resume="maybe")


def test_trainer_without_folder_and_progress_totals(capsys, caplog):
    data = _toy_data(0)
    lin = nn.Linear(4, 1)
    step = OptimStep(torch.optim.SGD(lin.parameters(), lr=0.05))
    seen = []

    def fn(batch, ctx):
        seen.append((ctx["epoch"], ctx["batch"]))
        loss = nn.functional.mse_loss(lin(batch["x"]), batch["y"])
        step(loss)
        return {"loss": float(loss.detach())}

    tr = Trainer(None, {"lin": lin}, {}, {}, progress=True)
    with caplog.at_level(logging.INFO, logger="ivfuse"):  # the epoch lines are INFO records of the "ivfuse" logger
        tr.run([Stage("fit", 2, data, fn, on_epoch_end=lambda e, ctx: {"double": 2 * ctx["epoch_metrics"]["loss"]})])
    assert seen == [(e, b) for e in range(2) for b in range(4)]
    assert tr.history["fit"][1]["double"] == pytest.approx(2 * tr.history["fit"][1]["loss"])
    cap = capsys.readouterr()
    assert "/4 " in cap.err  # the bar knows its total (4 batches)
    assert [r.message.split(" (")[0] for r in caplog.records] == ["[fit] epoch 1/2", "[fit] epoch 2/2"]


# ------------------------------------------------------------------------------------------------ documented example
def _doc_block(kind: str, marker: str) -> str:
    text = (ROOT / "docs" / "engine.md").read_text()
    m = re.search(rf"```{kind}\n(# {marker}.*?)```", text, re.S)
    assert m, f"docs/engine.md lost its {marker} block"
    return m.group(1)


def test_documented_example_recipe_trains(tmp_path, pair_dirs):
    code = _doc_block("python", "example recipe")
    ns: dict = {"__name__": "engine_doc_example"}
    try:
        exec(compile(code, str(ROOT / "docs" / "engine.md"), "exec"), ns)  # noqa: S102 - our own documentation
        cfg = yaml.load(_doc_block("yaml", "example config"), Loader=__import__("ivfuse.config").config.Loader)
        root = str(pair_dirs[0].parent)
        cfg = apply_overrides(
            cfg,
            {
                "data": [{"name": "folder", "root": root}],
                "epochs": 1,
                "crop": [32, 32],
                "val": {"name": "folder", "root": root, "max": 2},
            },
        )
        s = train("weightnet", cfg, tmp_path / "run", export=tmp_path / "w.safetensors", progress=False)
    finally:
        RECIPES._items.pop("weightnet", None)
    assert len(s["history"]["train"]) == 1 and s["history"]["train"][0]["loss"] > 0
    assert set(s["metrics"]["val"]) == {"val_en", "val_qabf"} and 0 < s["metrics"]["val"]["val_qabf"] <= 1
    from safetensors.torch import load_file

    net = ns["WeightNet"](8)
    net.load_state_dict(load_file(tmp_path / "w.safetensors"))
    from ivfuse.data import read_ir, read_vis

    ir, vis = read_ir(pair_dirs[0] / "p0.png")[None], read_vis(pair_dirs[1] / "p0.png")[None]
    with torch.no_grad():
        out = net.eval()(ir, vis)
    assert out.shape == vis.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["export"] == str(tmp_path / "w.safetensors")


# ----------------------------------------------------------------------------------------------- downstream fine-tuning
def _det_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for i in range(4):
        img = rng.integers(0, 60, (64, 80, 3)).astype(np.uint8)
        img[16:40, 20:44] = 230
        Image.fromarray(img).save(tmp_path / "img" / f"{i}.png")
        (tmp_path / "lab" / f"{i}.txt").write_text("0 0.4 0.4375 0.3 0.375\n")
    (tmp_path / "lab" / "classes.txt").write_text("person\n")


def test_finetune_detector_is_bitwise_reproducible_from_seed(tmp_path):
    from ivfuse.tasks import create_detector
    from ivfuse.engine.finetune import finetune_detector
    from ivfuse.tasks.downstream import load_detection_set

    _det_folder(tmp_path)
    data = load_detection_set(tmp_path / "img", tmp_path / "lab")
    torch.manual_seed(0)
    init = create_detector("yolov5n", weights=None).state_dict()
    runs = []
    for seed in (0, 0, 1):
        det = create_detector("yolov5n", weights=None)
        det.load_state_dict(init)
        logged = []
        hist = finetune_detector(
            det, data, epochs=2, batch_size=3, imgsz=64, seed=seed, progress=False, log=logged.append
        )
        runs.append((hist, {k: v.clone() for k, v in det.state_dict().items()}))
        assert [r["epoch"] for r in logged] == [1, 2] and [r["loss"] for r in logged] == hist
        assert not det.training
    (h0, s0), (h1, s1), (h2, s2) = runs
    assert len(h0) == 2 and all(np.isfinite(h0)) and h0 == h1
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert h2 != h0  # another seed: another order/flips


def test_finetune_segmenter_is_bitwise_reproducible_from_seed(tmp_path):
    from ivfuse.tasks import DeepLabV3Plus
    from ivfuse.engine.finetune import finetune_segmenter
    from ivfuse.tasks.downstream import load_segmentation_set

    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):  # two batches of two (BatchNorm needs more than one value per channel)
        m = np.zeros((40, 48), np.uint8)
        m[10:30, 12:30] = 1
        Image.fromarray((m * 200 + rng.integers(0, 40, m.shape)).astype(np.uint8)).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(m).save(tmp_path / "mask" / f"{i}.png")
    data = load_segmentation_set(tmp_path / "img", tmp_path / "mask")
    torch.manual_seed(0)
    init = DeepLabV3Plus(2, "resnet18").state_dict()
    out = []
    for seed in (3, 3):
        m = DeepLabV3Plus(2, "resnet18")
        m.load_state_dict(init)
        out.append(
            (finetune_segmenter(m, data, epochs=1, batch_size=2, crop=32, seed=seed, progress=False), m.state_dict())
        )
    assert out[0][0] == out[1][0] and all(torch.equal(out[0][1][k], out[1][1][k]) for k in out[0][1])


# ------------------------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize(
    "items,msg",
    [
        (["device=cuda"], "no CUDA GPU is available"),
        (["device=gpu"], "did you mean 'cuda'"),
        (["epochs.pretrain=abc"], "config key 'epochs.pretrain' must be an integer"),
        (["data.crop=96"], "config key 'data.crop' must be a list"),
        (["data=oops"], "config key 'data' must be a mapping"),
        (["epochs.mfe=1"], "inner (meta) update of MFE would never run"),
        (["resume=later"], "resume must be one of auto, force, new"),
        (["preset=cpuu"], "did you mean 'cpu'"),
    ],
)
def test_train_cli_one_line_errors_before_any_run_folder(tmp_path, capsys, items, msg):
    if items == ["device=cuda"] and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    out = tmp_path / "run"
    # the flag before the key=value items must parse
    rc = main(
        ["train", "metafusion", "-q", f"out={out}", *([] if items[0].startswith("preset") else ["preset=cpu"]), *items]
    )
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and err.startswith("ivfuse: error:") and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_train_cli_unknown_method_and_flag(capsys, tmp_path):
    assert main(["train", "metafuson", f"out={tmp_path / 'x'}"]) == 2
    assert "did you mean 'metafusion'" in capsys.readouterr().err
    assert main(["train", "metafusion", "--fast", f"out={tmp_path / 'x'}"]) == 2
    assert "unknown option '--fast'" in capsys.readouterr().err

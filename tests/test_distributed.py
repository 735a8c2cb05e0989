"""Distributed training (torchrun, gloo on CPU) through the one engine, and training mixed precision.

Two CPU processes launched by ``torchrun`` train (a) a small registered recipe with a module added between
stages and (b) MetaFusion (outer updates data-parallel, the second-order inner update of MFE replicated) on a
synthetic folder dataset; both ranks must end with bitwise equal weights, and those must equal a single-process
run on the same global batch within float tolerance (the per-rank losses are means over half the batch, so the
averaged gradient equals the single-process one up to summation order). Also: the sharding of BatchSource, resume
of an interrupted DDP run, the ``torchrun -m ivfuse train`` CLI, DDP misuse errors, and AMP (fp16 refused on CPU,
bf16 autocast, unscale before clipping).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ivfuse.cli import main
from ivfuse.engine import BatchSource, OptimStep, RandomCrop, RandomFlip, train
from ivfuse.engine.config import load_config
from ivfuse.engine.step import autocast, precision, reset_precision, set_precision
from ivfuse.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

#: max |single-process − DDP| over every weight after training (float32 summation order differs)
TOL = 1e-5

WORKER = textwrap.dedent('''
    """torchrun worker: train RECIPE with the JSON config, then save this rank's module states to OUT/rank<r>.pt."""
    import json, logging, os, sys
    import torch
    from torch import nn
    logging.basicConfig(level=logging.INFO, format="ivfuse: %(message)s")  # the resume notice is an INFO record
    from ivfuse.engine import BatchSource, OptimStep, Recipe, Stage, register_recipe, train
    from ivfuse.engine.metafusion import MetaFusionRecipe
    from ivfuse.engine.tim import TIMRecipe

    LAST = {}

    @register_recipe("ddp_probe_tim")
    class ProbeTIM(TIMRecipe):
        """TIM. SMOOTH=1: its BatchNorms use their running statistics (fixed at their initial values), so a forward
        is per sample and a shard's averaged gradient is the global batch's up to float summation order; and Adam
        has eps=1e-3 (see run())."""
        def build(self):
            super().build()
            LAST["rec"], LAST["cg_iters"] = self, []
            step = self.architect.step

            def logged(upper, lower):  # CG iterations of every architecture step
                info = step(upper, lower)
                LAST["cg_iters"].append(-1 if info.get("negative_curvature") else info.get("iters", 0))
                return info

            self.architect.step = logged

        def _fusion(self, net, ir, y):
            if os.environ.get("SMOOTH") == "1":
                for m in net.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
            return super()._fusion(net, ir, y)

    @register_recipe("ddp_probe_metafusion")
    class Probe(MetaFusionRecipe):
        def build(self):
            super().build()
            LAST["rec"] = self

    @register_recipe("ddp_probe_toy")
    class Toy(Recipe):
        """Linear search model, then (added between stages) a small MLP, like TIM's search -> derive -> retrain."""
        def build(self):
            g = torch.Generator().manual_seed(99)
            w = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
            xs = torch.randn(16, 4, generator=g)
            self.data = BatchSource([{"name": str(i), "x": x, "y": w @ x} for i, x in enumerate(xs)], 4,
                                    seed=self.cfg["seed"])
            self.search = nn.Linear(4, 1)
            opt = torch.optim.Adam(self.search.parameters(), lr=0.05)
            self.step_s = OptimStep(opt, clip=0.5)
            self.modules, self.optimizers = {"search": self.search}, {"search": opt}
            LAST["rec"] = self

        def derive(self, ctx):
            self.retrain = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
            opt = torch.optim.SGD(self.retrain.parameters(), lr=0.05, momentum=0.9)
            self.step_r = OptimStep(opt)
            ctx["trainer"].add("retrain", self.retrain, opt)

        def _fn(self, which):
            def fn(batch, ctx):
                if os.environ.get("FAIL_AT") == f"{ctx['stage']}/{ctx['epoch']}/{ctx['batch']}":
                    raise KeyboardInterrupt
                net, step = (self.search, self.step_s) if which == "search" else (self.retrain, self.step_r)
                loss = nn.functional.mse_loss(net(batch["x"]), batch["y"])
                step(loss)
                return {"loss": float(loss.detach()), "n": float(len(batch["x"]))}
            return fn

        def stages(self):
            e = self.cfg["epochs"]
            return [Stage("search", e, self.data, self._fn("search"), on_stage_end=self.derive),
                    Stage("retrain", e, self.data, self._fn("retrain"))]

    class SmoothAdam(torch.optim.Adam):
        """Adam with eps=1e-3. With eps=1e-8 a gradient component that is float noise (~1e-9: summation order) gets
        a step of up to lr, so runs that differ only in summation order end far apart; with eps=1e-3 a step is a
        smooth function of the gradient and float noise stays float noise."""
        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, **kw):
            super().__init__(params, lr=lr, betas=betas, eps=1e-3, **kw)

    def run(name, cfg, out):
        adam = torch.optim.Adam
        if os.environ.get("SMOOTH") == "1":
            torch.optim.Adam = SmoothAdam
        try:
            s = train(name, cfg, out, progress=False)
        finally:
            torch.optim.Adam = adam
        states = {k: {n: t.detach().cpu().clone() for n, t in m.state_dict().items()}
                  for k, m in LAST["rec"].trainer.modules.items()}  # also the modules added between stages
        return {"modules": states, "world_size": s["world_size"], "history": s["history"],
                "cg_iters": LAST.get("cg_iters")}

    if __name__ == "__main__":
        name, cfg_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
        cfg, r = json.load(open(cfg_file)), os.environ["RANK"]
        if os.environ.get("CUT_AT"):  # a run interrupted at CUT_AT, then resumed, in one process group
            import torch.distributed as dist
            dist.init_process_group("gloo")  # train() uses an existing group (and leaves it alone)
            os.environ["FAIL_AT"] = os.environ["CUT_AT"]
            try:
                run(name, cfg, out + "_cut")
                sys.exit("the run was not interrupted")
            except KeyboardInterrupt:
                assert not os.path.exists(out + "_cut/final.pt")
            del os.environ["FAIL_AT"]
            print("resumed", file=sys.stderr, flush=True)
            torch.save(run(name, cfg, out + "_cut"), os.path.join(out + "_cut", f"rank{r}.pt"))
        torch.save(run(name, cfg, out), os.path.join(out, f"rank{r}.pt"))
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _torchrun(args: list[str], timeout: int = 300, **env) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(**env), check=False)


def _run_worker(tmp: Path, name: str, cfg: dict, out: Path, **env) -> subprocess.CompletedProcess:
    """Two ranks of the worker, started with torchrun's environment contract (RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR/PORT) directly - without torchrun's agent process, which only costs start-up time here (the
    torchrun launcher itself is tested by test_torchrun_module_cli_trains_metafusion_with_gloo)."""
    (tmp / "worker.py").write_text(WORKER)
    (tmp / f"{out.name}.json").write_text(json.dumps(cfg))
    args = [sys.executable, str(tmp / "worker.py"), name, str(tmp / f"{out.name}.json"), str(out)]
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env),
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    rc = max(p.returncode for p in procs)
    return subprocess.CompletedProcess(args, rc, "".join(o[0] for o in outs), "".join(o[1] for o in outs))


def _single(tmp: Path, name: str, cfg: dict, out: Path) -> dict:
    """The worker's run in this process (one process, no process group)."""
    import runpy

    from ivfuse.engine import RECIPES

    (tmp / "worker.py").write_text(WORKER)
    try:
        ns = runpy.run_path(str(tmp / "worker.py"), run_name="ddp_worker")
        return ns["run"](name, cfg, out)
    finally:
        for k in ("ddp_probe_toy", "ddp_probe_metafusion", "ddp_probe_tim"):
            RECIPES._items.pop(k, None)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    d = 0.0
    for m, sa in a.items():
        sb = b[m]
        assert sa.keys() == sb.keys(), m
        for k, t in sa.items():
            if t.is_floating_point():
                d = max(d, float((t - sb[k]).abs().max()))
            else:
                assert torch.equal(t, sb[k]), f"{m}.{k}"
    return d


def _bitwise_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[m][k], b[m][k]) for m in a for k in a[m])


def _ok(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 0, f"rc {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"


# ------------------------------------------------------------------------------------------------ sharding
def test_batch_source_shards_are_disjoint_and_union_is_the_single_process_batch(monkeypatch):
    from ivfuse.engine import distributed as dist

    g = torch.Generator().manual_seed(0)
    samples = [
        {"name": f"s{i}", "ir": torch.rand(1, 12, 14, generator=g), "vis": torch.rand(3, 12, 14, generator=g)}
        for i in range(10)
    ]
    whole = BatchSource(samples, 4, [RandomCrop(8), RandomFlip()], seed=5)
    ref = list(whole.epoch(1, "k"))
    shards = []
    for r in range(2):
        monkeypatch.setattr(dist, "is_distributed", lambda: True)
        monkeypatch.setattr(dist, "world_size", lambda: 2)
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        shards.append(list(BatchSource(samples, 4, [RandomCrop(8), RandomFlip()], seed=5).epoch(1, "k")))
        assert len(shards[-1]) == len(ref) == 2
        unsharded = list(BatchSource(samples, 4, [RandomCrop(8)], seed=5, shard=False).epoch(1, "k"))
        assert all(len(b["name"]) == 4 for b in unsharded)
        with pytest.raises(InputError, match="batch size 3 is not a multiple of the 2 torchrun processes"):
            BatchSource(samples, 3, seed=5)
    for b, (s0, s1) in enumerate(zip(*shards)):
        assert set(s0["name"]).isdisjoint(s1["name"])
        assert sorted(s0["name"] + s1["name"]) == sorted(ref[b]["name"])
        for i, n in enumerate(ref[b]["name"]):  # same crops and flips as the single process
            s = (s0, s1)[i % 2]
            j = s["name"].index(n)
            assert torch.equal(s["ir"][j], ref[b]["ir"][i]) and torch.equal(s["vis"][j], ref[b]["vis"][i])


# ------------------------------------------------------------------------------------------------ DDP runs
@pytest.mark.slow
def test_ddp_toy_recipe_equal_ranks_equal_single_process_and_resumes(tmp_path):
    """Both ranks equal, equal to one process on the same global batch; and a DDP run interrupted in its second
    stage resumes (rank 0 decides and sends the checkpoint) to the uninterrupted run's weights."""
    cfg = {"epochs": 3, "seed": 0, "device": "cpu"}
    p = _run_worker(tmp_path, "ddp_probe_toy", cfg, tmp_path / "ddp", CUT_AT="retrain/1/2")
    _ok(p)
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert set(r0["modules"]) == {"search", "retrain"}  # the module added between stages is compared too
    assert _bitwise_equal(r0["modules"], r1["modules"])
    single = _single(tmp_path, "ddp_probe_toy", cfg, tmp_path / "single")
    assert single["world_size"] == 1
    assert _max_diff(single["modules"], r0["modules"]) < TOL
    # logged losses are the mean over the ranks = the global batch's loss; each rank saw half of each batch
    for st in ("search", "retrain"):
        for a, b in zip(single["history"][st], r0["history"][st], strict=True):
            assert abs(a["loss"] - b["loss"]) < 1e-5 * max(1.0, abs(a["loss"])) and a["n"] == 4 and b["n"] == 2
    # rank 0 alone wrote the run files: one log row per (stage, epoch, key)
    rows = (tmp_path / "ddp" / "log.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 * 3 * 3 and (tmp_path / "ddp" / "final.pt").is_file()
    # the interrupted run: one "resuming" line (rank 0), then both ranks end on the uninterrupted weights
    assert p.stderr.count("resumed") == 2 and p.stderr.count("ivfuse: resuming from") == 1
    assert "after stage retrain epoch 1" in p.stderr
    for r in (0, 1):
        cut = torch.load(tmp_path / "ddp_cut" / f"rank{r}.pt", weights_only=True)
        assert _bitwise_equal(cut["modules"], r0["modules"])


def _folder(tmp: Path, n: int = 4, h: int = 40, w: int = 48) -> Path:
    rng = np.random.default_rng(1)
    root = tmp / "pairs"
    (root / "ir").mkdir(parents=True)
    (root / "vi").mkdir()
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        ir = ((xx * 3 + yy + i * 30) % 256).astype(np.uint8)
        ir[10:20, 12 + i : 24 + i] = 240
        vis = np.stack([(yy * 5) % 256, (xx * 4) % 256, rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
        Image.fromarray(ir).save(root / "ir" / f"p{i}.png")
        Image.fromarray(vis).save(root / "vi" / f"p{i}.png")
    return root


def _mf_items(root: Path) -> list[str]:
    return [
        "fusion.width=0.125",
        "mfe.mid=4",
        "data.crop=[24, 24]",
        "data.batch=4",
        "data.max_batches=null",
        "epochs.pretrain=2",
        "epochs.det=0",
        "epochs.mfe=2",
        "inner.every=1",
        "inner.updates=1",
        "rounds=1",
        "val.max=0",
        "detector.weights=scratch",
        f"data.train=[{{name: folder, root: {root}}}]",
    ]


@pytest.mark.slow
def test_ddp_metafusion_inner_update_equal_ranks_and_single_process(tmp_path):
    """MetaFusion under DDP: F's outer updates on half batches with averaged gradients, MFE's second-order inner
    update replicated on every rank — both ranks equal, and equal to one process with the same global batch."""
    cfg = load_config("metafusion", "cpu", overrides=_mf_items(_folder(tmp_path)))
    _ok(_run_worker(tmp_path, "ddp_probe_metafusion", cfg, tmp_path / "ddp"))
    single = _single(tmp_path, "ddp_probe_metafusion", cfg, tmp_path / "single")
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert _bitwise_equal(r0["modules"], r1["modules"])
    assert _max_diff(single["modules"], r0["modules"]) < TOL
    # the inner phase ran and moved MFE (else equal MFEs would prove nothing)
    assert "L_f_meta" in r0["history"]["mfe_1"][0]
    cfg0 = load_config("metafusion", "cpu", overrides=_mf_items(tmp_path / "pairs") + ["inner.updates=0"])
    noinner = _single(tmp_path, "ddp_probe_metafusion", cfg0, tmp_path / "noinner")
    assert _max_diff({"MFE": noinner["modules"]["MFE"]}, {"MFE": r0["modules"]["MFE"]}) > 1e-4


def _tim_items(root: Path) -> list[str]:
    """TIM's whole chain (search -> derive -> meta_init -> train) at toy size on the synthetic folder, without the
    detector (guidance=false, lambda_search=0), so it needs nothing from ../shared. Damping 50: at the random
    initial weights the lower Hessian has negative curvature along ∇_ω F (pᵀHp ≈ -150), where truncated CG stops
    before its first step and the implicit term would be 0; damped, CG takes its 2 steps."""
    return [
        "net.width=8",
        "search.candidates=[res_k3_d1, dil_k3_d2, eca_k3]",
        "guidance=false",
        "task.lambda_search=0",
        "search.cg_iters=2",
        "search.max_batches=2",
        "search.lr_a=0.05",
        "search.damping=50.0",
        "data.max_batches=2",
        "data.batch=2",
        "data.crop=[24, 24]",
        "data.det_crop=[32, 32]",
        "meta.steps=2",
        "meta.inner_steps=2",
        "val.max=0",
        "epochs.search=2",
        "epochs.meta_init=1",
        "epochs.train=2",
        f"data.task=[{{name: folder, root: {root}}}]",
        f"data.meta=[{{name: folder, root: {root}, task: a}}, {{name: folder, root: {root}, task: b}}]",
    ]


@pytest.mark.slow
def test_ddp_tim_search_and_training_equal_ranks_and_single_process(tmp_path):
    """TIM under DDP (#21): ω, α (implicit CG hyper-gradient from averaged pieces), the Reptile inner steps and the
    training steps all go through OptimStep. Both ranks end bitwise equal — weights, α, BatchNorm running statistics
    (averaged every epoch) — and, with per-sample forwards (BatchNorm on running statistics), equal to one process on
    the same global batch within float tolerance."""
    cfg = load_config("tim", "cpu", overrides=_tim_items(_folder(tmp_path, n=8)))
    _ok(_run_worker(tmp_path, "ddp_probe_tim", cfg, tmp_path / "ddp"))
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2 and set(r0["modules"]) == {"supernet", "dual", "net"}
    assert _bitwise_equal(r0["modules"], r1["modules"])
    assert r0["cg_iters"] == r1["cg_iters"] and len(r0["cg_iters"]) == 4  # 2 epochs x 2 architecture steps
    # BatchNorm running statistics are part of the comparison (each rank updates them from its own shard: they are
    # equal only because they are averaged every epoch)
    assert any(k.endswith("running_mean") for k in r0["modules"]["net"])
    _ok(_run_worker(tmp_path, "ddp_probe_tim", cfg, tmp_path / "smooth", SMOOTH="1"))
    e0, e1 = (torch.load(tmp_path / "smooth" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert _bitwise_equal(e0["modules"], e1["modules"])
    os.environ["SMOOTH"] = "1"
    try:
        single = _single(tmp_path, "ddp_probe_tim", cfg, tmp_path / "single")
    finally:
        del os.environ["SMOOTH"]
    # every architecture step had the implicit term (CG's 2 steps on the averaged Hessian, the same on both ranks)
    assert e0["cg_iters"] == e1["cg_iters"] == single["cg_iters"] == [2] * 4
    assert _max_diff(single["modules"], e0["modules"]) < TOL
    for st in ("search", "meta_init", "train"):  # the logged losses are the global batch's
        for a, b in zip(single["history"][st], e0["history"][st], strict=True):
            for k in a:
                assert abs(a[k] - b[k]) < 1e-5 * max(1.0, abs(a[k])), (st, k, a[k], b[k])
    # the comparison is not vacuous: α moved from its initial value by far more than the two runs differ
    init = load_config("tim", "cpu", overrides=_tim_items(tmp_path / "pairs") + ["epochs.search=0", "stage=search"])
    alpha0 = {
        k: v
        for k, v in _single(tmp_path, "ddp_probe_tim", init, tmp_path / "init")["modules"]["supernet"].items()
        if k.endswith("alpha")
    }
    sa, da = single["modules"]["supernet"], e0["modules"]["supernet"]
    moved = {k: float((sa[k] - a).abs().max()) for k, a in alpha0.items()}
    diff = {k: float((sa[k] - da[k]).abs().max()) for k in alpha0}
    print("alpha moved", moved, "single vs DDP", diff)
    assert len(alpha0) == 2 and all(diff[k] < 1e-3 * moved[k] for k in alpha0), (moved, diff)


@pytest.mark.realdata
@pytest.mark.slow
def test_ddp_tim_task_guided_equal_ranks(tmp_path):
    """TIM with its detector (YOLOv5n, COCO weights) in the search's upper loss and the constrained train stage, on
    labelled MSRS dev-train: both ranks end bitwise equal, including the multiplier μ (updated with the violation
    L_det − τ averaged over the ranks; each rank's own violation would differ), which moved from μ0."""
    from conftest import need

    need("data/MSRS")
    need("data/TNO")
    need("weights/yolov5n_coco_v6.1_state_dict.pt")
    items = [
        "net.width=8",
        "search.cg_iters=1",
        "search.max_batches=1",
        "data.max_batches=2",
        "data.batch=2",
        "data.crop=[32, 32]",
        "data.det_crop=[64, 64]",
        "meta.steps=1",
        "meta.inner_steps=1",
        "val.max=0",
        "epochs.search=1",
        "epochs.meta_init=1",
        "epochs.train=2",
        "search.candidates=[res_k3_d1, eca_k3]",
        "data.meta=[{name: tno, split: all, task: tno}]",
    ]
    cfg = load_config("tim", "cpu", overrides=items)
    _ok(_run_worker(tmp_path, "ddp_probe_tim", cfg, tmp_path / "ddp"))
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert _bitwise_equal(r0["modules"], r1["modules"])
    assert float(r0["modules"]["dual"]["mu"]) != pytest.approx(cfg["task"]["mu0"], abs=1e-6)
    assert all(h["L_det"] > 0 for h in r0["history"]["train"])


@pytest.mark.slow
def test_torchrun_module_cli_trains_metafusion_with_gloo(tmp_path):
    root = _folder(tmp_path)
    items = [*_mf_items(root), "epochs.mfe=0"]
    p = _torchrun(
        [
            "-m",
            "ivfuse",
            "train",
            "metafusion",
            "preset=cpu",
            f"out={tmp_path / 'run'}",
            "-q",
            f"export={tmp_path / 'f.safetensors'}",
            *items,
        ]
    )
    _ok(p)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["export"] == str(tmp_path / "f.safetensors")
    assert "exported the trained model" in p.stdout
    single = train("metafusion", load_config("metafusion", "cpu", overrides=items), tmp_path / "single", progress=False)
    a = torch.load(tmp_path / "run" / "final.pt", weights_only=True)["modules"]
    b = torch.load(tmp_path / "single" / "final.pt", weights_only=True)["modules"]
    assert _max_diff(a, b) < TOL
    assert abs(single["history"]["pretrain_f"][-1]["L_f"] - s["history"]["pretrain_f"][-1]["L_f"]) < 1e-4


def test_ddp_misuse_is_one_line_error(tmp_path, monkeypatch, capsys):
    from ivfuse.engine import distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(InputError, match="MASTER_ADDR is not set: launch with torchrun"):
        dist.setup("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InputError, match="WORLD_SIZE='two' is not an integer"):
        dist.setup("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count()))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(InputError, match="CUDA device"):
        dist.setup("cuda")
    assert not (tmp_path / "x").exists()


def test_recipes_that_cannot_train_data_parallel_refuse_torchrun(tmp_path, monkeypatch, capsys):
    """OCCO's contrastive loss is not a per-sample mean (negatives from the other samples of the batch): under
    torchrun it is refused in check(), before the process group or the run folder exist; one process trains."""
    from ivfuse.engine.occo import OCCORecipe

    cfg = load_config("occo", "cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    msg = "occo cannot train under torchrun \\(WORLD_SIZE=2\\): its contrastive loss takes each sample's negatives"
    with pytest.raises(InputError, match=msg):
        train("occo", load_config("occo", "cpu", overrides=["amp=bf16"]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists() and precision() == ("none", "cpu")  # nothing written, no precision left set
    assert main(["train", "occo", "preset=cpu", f"out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ivfuse: error: occo cannot train under torchrun") and "\n" not in err
    assert OCCORecipe.check(load_config("occo", "cpu", overrides=["loss.contrastive=false"])) == []
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert OCCORecipe.check(cfg) == []


# ------------------------------------------------------------------------------------------------ AMP
def test_amp_fp16_on_cpu_refused_bf16_autocasts(tmp_path, capsys, pair_dirs):
    root = str(pair_dirs[0].parent)
    rc = main(["train", "metafusion", "preset=cpu", f"out={tmp_path / 'r'}", "amp=fp16"])
    err = capsys.readouterr().err
    assert rc == 2 and "amp=fp16 needs a CUDA device" in err and not (tmp_path / "r").exists()
    assert main(["train", "metafusion", f"out={tmp_path / 'r'}", "amp=fp32"]) == 2
    assert "config key 'amp' must be one of none, bf16, fp16" in capsys.readouterr().err
    assert main(["train", "metafusion", f"out={tmp_path / 'r'}", "channels_last=maybe"]) == 2
    assert "channels_last" in capsys.readouterr().err
    # bf16 on CPU: the steps run under autocast (a conv returns bfloat16) and training still lowers the loss
    seen = []
    token = set_precision("bf16", "cpu")
    try:
        with autocast():
            seen.append(nn.Conv2d(1, 1, 3)(torch.rand(1, 1, 8, 8)).dtype)
        # the precision is a context variable: a thread started now sees the default (fp32), not this bf16
        other = []
        t = threading.Thread(target=lambda: other.append(precision()))
        t.start()
        t.join()
        assert other == [("none", "cpu")] and precision() == ("bf16", "cpu")
    finally:
        reset_precision(token)
    assert seen == [torch.bfloat16] and precision() == ("none", "cpu")
    runs = {}
    for amp in ("none", "bf16"):
        cfg = load_config(
            "metafusion",
            "cpu",
            overrides=[
                *_mf_items(root),
                f"amp={amp}",
                "channels_last=true",
                "epochs.mfe=0",
                "epochs.pretrain=2",
                "data.batch=2",
            ],
        )
        s = train("metafusion", cfg, tmp_path / amp, progress=False)
        assert s["amp"] == amp and precision() == ("none", "cpu")  # train() restored the precision it set
        runs[amp] = (s, torch.load(tmp_path / amp / "final.pt", weights_only=True)["modules"]["F"])
    # bf16 really ran (the weights differ from fp32's) and stayed close (the losses agree to bf16 precision)
    assert _max_diff({"F": runs["none"][1]}, {"F": runs["bf16"][1]}) > 0
    for a, b in zip(runs["none"][0]["history"]["pretrain_f"], runs["bf16"][0]["history"]["pretrain_f"]):
        assert np.isfinite(b["L_f"]) and abs(a["L_f"] - b["L_f"]) < 0.02 * abs(a["L_f"]) + 1e-3


def test_optim_step_unscales_before_clipping():
    """With a loss scale of 2**16 the clipped step must be the clipped *true* gradient (TSJNet's official code
    clipped the scaled gradient, which shrinks every step by the loss scale)."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.tensor([3.0, -4.0]))
    x = torch.tensor([1.0, 2.0])
    grad = x.clone()  # d(w·x)/dw, norm sqrt(5) > clip
    opt = torch.optim.SGD([w], lr=1.0)
    step = OptimStep(opt, clip=1.0, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))
    before = w.detach().clone()
    assert step((w * x).sum())
    moved = before - w.detach()
    assert torch.allclose(moved, grad / grad.norm(), atol=1e-6)  # norm-1 step along the true gradient
    assert step.scaler.get_scale() == 2.0**16
    # an inf gradient: the scaler skips the step and lowers the scale, clipping never sees the inf as a norm
    before = w.detach().clone()
    step(w.sum() * torch.tensor(float("inf")))
    assert torch.equal(w.detach(), before) and step.scaler.get_scale() == 2.0**15

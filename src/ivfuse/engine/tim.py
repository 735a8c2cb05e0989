r"""TIM (Liu et al., TPAMI 2024) as one recipe of :func:`ivfuse.engine.train`: search → derive → meta_init → train.

Stages (``docs/tim.md`` has the reasoning and the measured numbers):

* ``search`` — bilevel implicit architecture search on :class:`~ivfuse.models.tim.TIMSupernet`. Labelled MSRS
  dev-train pairs are split into two fixed halves (even / odd index): ω (network weights) takes an Adam step on the
  lower loss f = L_fusion on a batch of the *train half*; α (architecture weights) takes an
  :class:`~ivfuse.models.tim_search.Architect` step on the upper loss F = L_fusion + λ_task · L_det (YOLOv5n, fixed,
  on the fused RGB image) [+ latency] on a batch of the *validation half*, with the implicit hyper-gradient
  (conjugate gradients on the lower Hessian by default). dev-val is never used.
* ``derive`` (no epochs; its ``on_stage_end``) — arg-max genotype written to ``OUT/genotype.json``; the derived
  :class:`~ivfuse.models.tim.TIMNet` and its optimiser are added to the trainer (``Trainer.add``), so a resumed run
  rebuilds them and restores their states. ``cell=hand`` skips the search and derives a hand-designed genotype of
  the same layout instead (ablation).
* ``meta_init`` — Reptile (Nichol et al. 2018) over fusion data sets as tasks: per meta-step one task, ``k`` Adam
  steps (β1 = 0, a fresh optimiser per task) on the fusion loss from the current weights θ, then
  θ ← θ + ε (θ_task − θ) with ε decayed linearly to 0. ``init=random`` skips it (ablation).
* ``train`` — task-guided training of the derived net on labelled MSRS dev-train: a constrained problem
  min L_fusion s.t. L_det(fused) ≤ τ, τ = min(L_det(IR), L_det(VIS)) of the same crop (the fused image must be at least
  as detectable as the better source), solved by primal–dual updates: ω ← Adam on L_fusion + μ L_det, then
  μ ← clip(μ + ρ (L_det − τ), 0, μ_max). The detector is YOLOv5n with the shipped COCO weights, fixed (eval mode).
  ``guidance=false`` trains on L_fusion only (ablation).

**Every update goes through** :class:`~ivfuse.engine.step.OptimStep`, so under ``torchrun`` (docs/engine.md) each
rank trains on its shard of the global batch and the ranks stay bitwise equal:

* ω (search), the Reptile inner steps and the task-guided steps: :class:`OptimStep` all-reduces (mean) the
  gradients, i.e. the gradient of the global batch's (batch-mean) loss;
* α: the hyper-gradient is built from averaged pieces — ∇F, every Hessian-vector product of the CG/Neumann solve,
  the mixed term (``Architect(reduce=all_reduce_tensors)``, :mod:`ivfuse.models.tim_search`) — so it is the global
  batch's and identical on every rank; it is applied by an :class:`OptimStep` with ``sync=False`` (averaging equal
  values again would only cost a collective). Averaging per-rank hyper-gradients instead would not give the global
  batch's: the implicit gradient is nonlinear in the derivatives (an inverse Hessian applied to ∇_ω F);
* Reptile's interpolation θ ← θ + ε(θ_task − θ) then is the same on every rank; the multiplier μ of the task
  constraint is updated with the violation L_det − τ averaged over the ranks;
* BatchNorm: batch statistics are per rank (B/W samples, as in DDP); the running statistics are averaged over the
  ranks after every epoch (:func:`~ivfuse.engine.distributed.all_reduce_buffers`), so the checkpointed and exported
  state is the same on every rank.

One process: the same arithmetic as before these were routed through :class:`OptimStep` (bitwise; checked on a
tiny run of the whole chain for every ``search.method``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from kornia.color import rgb_to_ycbcr, ycbcr_to_rgb
from torch import nn

from ..errors import InputError, suggest
from ..losses import FusionLoss
from ..models.tim import TIMNet, TIMSupernet, load_genotype, validate_genotype
from ..models.tim_search import METHODS, Architect
from ..utils import atomic_write_text
from .checkpoint import export_safetensors
from .config import CROP, Limit
from .data import BatchSource, RandomCrop, RandomFlip, derive_seed, load_samples
from . import distributed as _dist
from .recipe import Recipe, register_recipe
from .step import OptimStep
from .trainer import Stage

__all__ = ["CELLS", "INITS", "STAGES", "TIMRecipe", "adaptation_curve", "hand_genotype"]

STAGES = ("all", "search", "meta_init", "train")  # run up to (and including) this stage
CELLS = ("searched", "hand")
INITS = ("meta", "random")


def hand_genotype(layout: str | dict, op: str = "res_k3_d1") -> dict:
    """The hand-designed baseline of the ablation: ``layout``'s cells with every slot the same plain operation."""
    g = json.loads(json.dumps(load_genotype(layout)))

    def fill(cells):
        for c in cells:
            c["ops"] = [op] * len(c["ops"])

    fill(g["stage1"])
    if g.get("stage2"):
        fill(g["stage2"]["ir"])
        fill(g["stage2"]["vis"])
    g["name"], g["source"] = f"hand_{op}", f"hand-designed: every slot of the '{layout}' layout is {op}"
    return validate_genotype(g)


class _Dual(nn.Module):
    """The multiplier μ of the task constraint (a buffer, so it is checkpointed and resumed)."""

    def __init__(self, mu: float) -> None:
        super().__init__()
        self.register_buffer("mu", torch.tensor(float(mu)))


class _TaskStream:
    """Meta-init batches: item j of epoch e is ``(task, [k batches of that task])``; tasks cycle in an order drawn
    from ``(seed, epoch)``; everything is a function of ``(seed, epoch, j)`` (exact resume)."""

    def __init__(self, tasks: dict[str, BatchSource], steps: int, k: int, seed: int) -> None:
        self.tasks, self.steps, self.k, self.seed = tasks, steps, k, seed
        self.names = list(tasks)

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int, key: str = ""):
        g = torch.Generator().manual_seed(derive_seed(self.seed, key, "order", epoch))
        order: list[int] = []
        for j in range(self.steps):
            if not order:
                order = torch.randperm(len(self.names), generator=g).tolist()
            name = self.names[order.pop()]
            src, out, r = self.tasks[name], [], 0
            while len(out) < self.k:
                for b in src.epoch(epoch * 1000 + r, f"{key}/{name}/{j}"):
                    out.append(b)
                    if len(out) == self.k:
                        break
                r += 1
            yield name, out


@register_recipe("tim")
class TIMRecipe(Recipe):
    """Supernet, detector, data and the stage list from a config dict (see ``configs/tim.yaml``)."""

    limits = {"epochs.*": Limit(min=0), "data.crop": CROP, "data.det_crop": CROP, "meta.inner_steps": Limit(min=1)}

    @classmethod
    def check(cls, cfg: dict) -> list[str]:
        for key, allowed in (("stage", STAGES), ("cell", CELLS), ("init", INITS)):
            if cfg[key] not in allowed:
                raise suggest(cfg[key], allowed, f"TIM {key}")
        if cfg["search"]["method"] not in METHODS:
            raise suggest(cfg["search"]["method"], METHODS, "architecture gradient method")
        load_genotype(cfg["net"]["layout"])  # unknown layout: one-line error now
        warn = []
        if cfg["cell"] == "hand" and cfg["epochs"]["search"]:
            warn.append("cell=hand: the search stage is skipped (epochs.search ignored)")
        return warn

    # -- build -----------------------------------------------------------------------------------------------------
    def build(self) -> None:
        cfg, dev = self.cfg, self.device
        n, s = cfg["net"], cfg["search"]
        self.loss_f = FusionLoss(cfg["loss"])
        self.D = None
        if cfg["guidance"] or (self._searching and cfg["task"]["lambda_search"] > 0):
            from ..tasks.detectors import create_detector

            w = cfg["task"]["weights"]
            self.D = create_detector(cfg["task"]["detector"], **({} if w is None else {"weights": w})).to(dev).eval()
            self.D.requires_grad_(False)
        self.supernet = TIMSupernet(n["layout"], n["width"], tuple(s["candidates"]), aux=False).to(dev)
        self.opt_w = torch.optim.Adam(self.supernet.weight_parameters(), lr=s["lr_w"])
        self.step_w = OptimStep(self.opt_w)
        lat = self.supernet.expected_cost if s["latency"] > 0 else None
        self.architect = Architect(
            self.supernet.arch_parameters(),
            self.supernet.weight_parameters(),
            lr=s["lr_a"],
            method=s["method"],
            latency=lat,
            latency_weight=s["latency"],
            solver={"iters": s["cg_iters"], "damping": s["damping"]},
            reduce=_dist.all_reduce_tensors,
        )
        # the hyper-gradient is already averaged over the ranks (piece by piece): no second all-reduce
        self.architect.stepper = OptimStep(self.architect.optimizer, sync=False)
        self.dual = _Dual(cfg["task"]["mu0"])
        self.modules = {"supernet": self.supernet, "dual": self.dual}
        self.optimizers = {"w": self.opt_w, "alpha": self.architect.optimizer}
        self.net: TIMNet | None = None
        self.opt_net = None
        self.step_net: OptimStep | None = None
        self.genotype_: dict | None = None
        self._load_data()

    @property
    def _searching(self) -> bool:
        return self.cfg["cell"] == "searched" and self.cfg["epochs"]["search"] > 0

    def _load_data(self) -> None:
        cfg, d, seed = self.cfg, self.cfg["data"], self.cfg["seed"]
        need_boxes = self.D is not None
        labelled = load_samples(d["task"], with_boxes=need_boxes)
        if len(labelled) < 2:
            raise InputError(f"TIM needs at least 2 task pairs (data.task), got {len(labelled)}")
        crop, det_crop = RandomCrop(d["crop"]), RandomCrop(d["det_crop"])
        mb = d["max_batches"]
        # search: fixed halves of the task data (even / odd index) - omega on one, alpha on the other
        half_w, half_a = labelled[0::2], labelled[1::2]
        smb = cfg["search"]["max_batches"] or mb
        self.src_w = BatchSource(half_w, d["batch"], [crop, RandomFlip()], smb, seed)
        self.src_a = BatchSource(half_a, d["batch"], [crop, RandomFlip()], smb, seed)
        self.src_train = BatchSource(labelled, d["batch"], [det_crop, RandomFlip()], mb, seed)
        tasks = {}
        if cfg["init"] == "meta" and cfg["epochs"]["meta_init"] > 0:
            for spec in d["meta"]:
                name = spec.get("task") or spec["name"]
                samples = load_samples([{k: v for k, v in spec.items() if k != "task"}], max_side=d["meta_max_side"])
                tasks[name] = BatchSource(samples, d["batch"], [crop, RandomFlip()], None, seed)
        self.meta_stream = _TaskStream(tasks, cfg["meta"]["steps"], cfg["meta"]["inner_steps"], seed) if tasks else None

    # -- pieces ----------------------------------------------------------------------------------------------------
    def _pair(self, batch: dict):
        ir, vis = self.on_device(batch)
        ycc = rgb_to_ycbcr(vis)
        return ir, ycc[:, :1], ycc

    def _fusion(self, net, ir, y):
        fused = net.fuse_luma(ir, y)
        loss, parts = self.loss_f(fused, ir, y)
        return fused, loss, parts

    def _det_loss(self, fused_y: torch.Tensor, ycc: torch.Tensor, boxes) -> torch.Tensor:
        rgb = ycbcr_to_rgb(torch.cat([fused_y.clamp(0, 1), ycc[:, 1:]], 1)).clamp(0, 1)
        return self.D.loss(rgb, boxes)[0]

    # -- search ----------------------------------------------------------------------------------------------------
    def step_search(self, batch: dict, ctx) -> dict:
        net, c = self.supernet, self.cfg
        ir, y, _ = self._pair(batch)
        # lower level: omega on the train half
        _, lf, _ = self._fusion(net, ir, y)
        self.step_w(lf, inputs=net.weight_parameters())
        # upper level: alpha on a batch of the validation half (same epoch/batch index of the other stream)
        vb = self._val_batch(ctx)
        vir, vy, vycc = self._pair(vb)
        lam = c["task"]["lambda_search"] if self.D is not None else 0.0

        def upper() -> torch.Tensor:
            fused, loss, _ = self._fusion(net, vir, vy)
            if lam:
                loss = loss + lam * self._det_loss(fused, vycc, vb["boxes"])
            return loss

        def lower() -> torch.Tensor:
            return self._fusion(net, ir, y)[1]

        info = self.architect.step(upper, lower)
        out = {"L_lower": float(lf.detach()), "F_upper": float(info["upper"])}
        if "latency" in info:
            out["latency"] = info["latency"]
        return out

    def _val_batch(self, ctx) -> dict:
        ep, i = ctx["epoch"], ctx["batch"]
        it = self.src_a.epoch(ep * 1000 + i // max(1, len(self.src_a)), "search/alpha")
        for j, b in enumerate(it):
            if j == i % len(self.src_a):
                return b
        raise RuntimeError("unreachable: empty alpha stream")  # pragma: no cover

    # -- derive ----------------------------------------------------------------------------------------------------
    def derive(self, ctx) -> dict:
        c = self.cfg
        if c["cell"] == "hand":
            g = hand_genotype(c["net"]["layout"], c["net"]["hand_op"])
        else:
            g = self.supernet.derive()
            g["name"], g["source"] = "searched", f"ivfuse TIM search ({c['search']['method']}), seed {c['seed']}"
            g = validate_genotype(g)
        self.genotype_ = g
        if self.trainer is not None and self.trainer.out is not None and _dist.is_main():
            atomic_write_text(self.trainer.out / "genotype.json", json.dumps(g, indent=1))
        self.net = TIMNet(g, width=c["net"]["width"], aux=False).to(self.device)
        self.opt_net = torch.optim.Adam(self.net.parameters(), lr=c["train"]["lr"])
        self.step_net = OptimStep(self.opt_net, clip=c["train"]["clip"] or None)
        self.trainer.add("net", self.net, self.opt_net)
        alphas = {
            n: torch.softmax(a.detach(), -1).max(-1).values.mean().item()
            for n, a in self.supernet.named_arch_parameters()
        }
        return {
            "params": float(sum(p.numel() for p in self.net.parameters())),
            "alpha_confidence": sum(alphas.values()) / max(1, len(alphas)),
        }

    # -- meta-initialisation (Reptile) -----------------------------------------------------------------------------
    def step_meta(self, item, ctx) -> dict:
        _task, batches = item
        m = self.cfg["meta"]
        net = self.net
        theta = [p.detach().clone() for p in net.parameters()]
        inner = OptimStep(torch.optim.Adam(net.parameters(), lr=m["lr_inner"], betas=(0.0, 0.999)))
        first = last = 0.0
        for j, b in enumerate(batches):
            ir, y, _ = self._pair(b)
            _, loss, _ = self._fusion(net, ir, y)
            inner(loss)
            first = float(loss.detach()) if j == 0 else first
            last = float(loss.detach())
        total = max(1, self.cfg["epochs"]["meta_init"] * m["steps"])
        done = ctx["epoch"] * m["steps"] + ctx["batch"]
        eps = m["eps"] * (1.0 - done / total)
        with torch.no_grad():
            for p, t in zip(net.parameters(), theta):
                p.copy_(t + eps * (p - t))
        return {"L_first": first, "L_adapted": last, "eps": eps}

    # -- task-guided training --------------------------------------------------------------------------------------
    def step_train(self, batch: dict, ctx) -> dict:
        c, net = self.cfg, self.net
        ir, y, ycc = self._pair(batch)
        fused, lf, parts = self._fusion(net, ir, y)
        out = {"L_f": float(lf.detach()), **parts}
        loss = lf
        if c["guidance"]:
            ld = self._det_loss(fused, ycc, batch["boxes"])
            with torch.no_grad():
                tau = torch.minimum(
                    self.D.loss(ir.expand(-1, 3, -1, -1), batch["boxes"])[0],
                    self.D.loss(batch["vis"].to(self.device), batch["boxes"])[0],
                )
            mu = self.dual.mu
            loss = lf + float(mu) * ld
            with torch.no_grad():
                t = c["task"]
                (gap,) = _dist.all_reduce_tensors([ld.detach() - tau])  # the global batch's violation
                mu.copy_((mu + t["rho"] * gap).clamp(0.0, t["mu_max"]))
            out.update({"L_det": float(ld.detach()), "tau": float(tau), "mu": float(mu)})
        self.step_net(loss, inputs=list(net.parameters()))
        return out

    # -- schedule --------------------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        c, ep = self.cfg, self.cfg["epochs"]
        upto = {"all": 3, "search": 1, "meta_init": 2, "train": 3}[c["stage"]]
        sync = self._sync_running_stats
        st = [
            Stage("search", ep["search"] if self._searching else 0, self.src_w, self.step_search, on_epoch_end=sync),
            Stage("derive", 0, self.src_w, self.step_search, on_stage_end=self.derive),
        ]
        if upto >= 2:
            n_meta = ep["meta_init"] if self.meta_stream is not None else 0
            st.append(Stage("meta_init", n_meta, self.meta_stream or self.src_w, self.step_meta, on_epoch_end=sync))
        if upto >= 3:
            st.append(Stage("train", ep["train"], self.src_train, self.step_train, on_epoch_end=sync))
        return st

    def _sync_running_stats(self, epoch: int, ctx) -> None:
        """Under torchrun: average the BatchNorm running statistics over the ranks (before the epoch's checkpoint)."""
        _dist.all_reduce_buffers([m for m in (self.supernet, self.net) if m is not None])

    # -- end of training -------------------------------------------------------------------------------------------
    def export(self, path: str | Path) -> Path:
        if self.net is None:
            raise InputError("TIM: nothing to export before the derive stage")
        c, tr = self.cfg, self.trainer
        meta = {"genotype": json.dumps(self.genotype_), "width": str(c["net"]["width"])}  # what TIMNet loads
        meta.update(
            self.export_metadata(
                c,
                stages=list(tr.done) if tr else [],
                guidance=c["guidance"],
                cell=c["cell"],
                init=c["init"],
                time_s={k: round(v, 1) for k, v in (tr.timings if tr else {}).items()},
                exported=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
        )
        return export_safetensors(path, self.net.state_dict(), meta)


def adaptation_curve(
    net: nn.Module,
    adapt: list[dict],
    test: list[dict],
    steps=(0, 1, 2, 5, 10, 20),
    loss: dict | None = None,
    lr: float = 1e-3,
    crop=(96, 96),
    batch: int = 2,
    seed: int = 0,
    test_batches: int = 8,
) -> dict[int, float]:
    """Fast adaptation to a held-out fusion task (the meta-initialisation ablation): a copy of ``net`` takes
    ``max(steps)`` Adam steps (``lr``) on the fusion loss over crops of the ``adapt`` samples; the mean fusion loss on
    fixed crops of the ``test`` samples is recorded after each k in ``steps``. Returns ``{k: test loss}``."""
    import copy

    fl = FusionLoss(loss or {"ssim": 1.0, "intensity": 1.0, "gradient": 1.0})
    model = copy.deepcopy(net).train()
    dev = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    src = BatchSource(adapt, batch, [RandomCrop(crop), RandomFlip()], None, seed)
    fixed = list(BatchSource(test, batch, [RandomCrop(crop)], test_batches, seed).epoch(0, "adaptation/test"))

    def lum(b):
        return b["ir"].to(dev), rgb_to_ycbcr(b["vis"].to(dev))[:, :1]

    def test_loss() -> float:
        model.eval()
        with torch.no_grad():
            vals = [float(fl(model.fuse_luma(*lum(b)), *lum(b))[0]) for b in fixed]
        model.train()
        return sum(vals) / len(vals)

    out, k, ep = {}, 0, 0
    want = sorted(set(steps))
    if 0 in want:
        out[0] = test_loss()
    while k < want[-1]:
        for b in src.epoch(ep, "adaptation/train"):
            ir, y = lum(b)
            lf = fl(model.fuse_luma(ir, y), ir, y)[0]
            opt.zero_grad(set_to_none=True)
            lf.backward()
            opt.step()
            k += 1
            if k in want:
                out[k] = test_loss()
            if k >= want[-1]:
                break
        ep += 1
    return out

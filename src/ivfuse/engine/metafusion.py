"""MetaFusion training (Zhao et al., CVPR 2023), Algorithm 1, on :class:`~ivfuse.engine.trainer.Trainer`.

Stages: ``pretrain_f`` (F with L_f), then for r = 1..R: ``det_r`` (fine-tune D on F's fused images, SGD with the
learning rate decayed ×``det_decay`` per round) and ``mfe_r`` (outer updates of F every batch, inner updates of
MFE every N epochs). Modes (the paper's ablations):

* ``metafusion``: as above, guided levels ``levels``;
* ``sofusion``: F and D trained separately (pretrain F, fine-tune D; no MFE);
* ``cofusion``: D's loss as a constraint on F: rounds of ``det_r`` then ``co_r`` (θ_F ← L_f + λ_d L_det through
  the fixed D on labelled pairs).

**Outer update (Eq. 6):** θ_F ← θ_F − β_F ∇(L_f + λ_g Σ_j L_g) with MFE and D fixed.

**Inner update (Eqs. 1-5):** on a meta-train batch, θ_F' = θ_F − β_F' ∇_θF Σ_j L_g (kept in the graph,
``create_graph=True``); L_f of F(θ_F') on a meta-test batch is back-propagated to θ_MFG and θ_FT *through*
θ_F' (second order, :func:`torch.func.functional_call`); F itself is not changed.

The detector features F_e are computed from F's fused image with D fixed and are not differentiated (they are the
semantic target of the embedding).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch.func import functional_call

from ..losses import FusionLoss
from ..models.metafusion import MetaFeatureEmbedding, MetaFusionNet, guide_loss
from ..tasks.detectors import create_detector
from .checkpoint import export_safetensors
from .data import DetectionBatches, PairBatches, load_pairs
from .trainer import Stage, Trainer

__all__ = ["MetaFusionRecipe", "inner_update", "train_metafusion"]


def _frozen(module: torch.nn.Module, flag: bool = True) -> None:
    for p in module.parameters():
        p.requires_grad_(not flag)


class MetaFusionRecipe:
    """Builds F, MFE, D, their optimizers and the stage list from a config dict (see configs/metafusion.yaml)."""

    def __init__(self, cfg: dict, progress: bool = True) -> None:
        self.cfg = cfg
        dev = torch.device(cfg.get("device", "cpu"))
        self.device = dev
        self.F = MetaFusionNet(width=cfg["fusion"]["width"], colour=cfg["fusion"]["colour"]).to(dev)
        dcfg = cfg["detector"]
        w = dcfg.get("weights")
        kw = {} if w is None else {"weights": None if w == "scratch" else w}
        self.D = create_detector(dcfg["name"], **kw).to(dev)
        with torch.no_grad():  # channels of the detector stages (DFB1-3), whatever the YOLOv5 size
            det_ch = [f.shape[1] for f in self.D.eval().features(torch.zeros(1, 3, 64, 64, device=dev))]
        self.levels = list(cfg["levels"])
        self.MFE = MetaFeatureEmbedding(self.F.feature_channels, det_ch, self.levels, cfg["mfe"]["mid"]).to(dev)
        self.loss_f = FusionLoss(cfg["loss"])
        o = cfg["optim"]
        self.opt_f = torch.optim.Adam(self.F.parameters(), lr=o["lr_f"])
        self.opt_mfe = torch.optim.Adam(self.MFE.parameters(), lr=o["lr_mfe"])
        self.opt_d = torch.optim.SGD(self.D.parameters(), lr=o["lr_det"], momentum=0.937, nesterov=True, weight_decay=5e-4)
        d = cfg["data"]
        self.pairs = load_pairs(d["train"])
        self.batches = PairBatches(self.pairs, d["crop"], d["batch"], d.get("max_batches"), cfg.get("seed", 0))
        self.meta_batches = PairBatches(self.pairs, d["crop"], d["batch"], None, cfg.get("seed", 0) + 1)
        needs_det = cfg["epochs"]["det"] > 0 or cfg["mode"] == "cofusion"  # CoFusion trains F on labelled pairs
        self.det_pairs = load_pairs(d["detection"], with_boxes=True) if needs_det else []
        self.det_batches = DetectionBatches(self.det_pairs, [d["det_crop"]] * 2, d["det_batch"], d.get("max_batches"),
                                            cfg.get("seed", 0) + 2) if self.det_pairs else None  # fmt: skip
        self.progress = progress

    # -- pieces -------------------------------------------------------------------------------------------------
    def _dev(self, *xs):
        return [x.to(self.device) for x in xs]

    def _lum(self, vis: torch.Tensor) -> torch.Tensor:
        return self.F.split(vis)[1]

    def det_features(self, fused: torch.Tensor) -> list[torch.Tensor]:
        self.D.eval()
        with torch.no_grad():
            return self.D.features(fused)

    # -- stage steps --------------------------------------------------------------------------------------------
    def step_pretrain(self, batch, ctx) -> dict:
        ir, vis = self._dev(*batch)
        y, _, _ = self.F(ir, vis, with_features=True)
        loss, parts = self.loss_f(y, ir, self._lum(vis))
        self.opt_f.zero_grad()
        loss.backward()
        self.opt_f.step()
        return {"L_f": float(loss.detach()), **parts}

    def step_det(self, batch, ctx) -> dict:
        ir, vis = self._dev(*batch[:2])
        boxes = batch[2]
        with torch.no_grad():
            fused = self.F(ir, vis)
        self.D.train()
        loss, parts = self.D.loss(fused, boxes)
        self.opt_d.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.D.parameters(), 10.0)
        self.opt_d.step()
        return {"L_det": float(loss.detach()), **parts}

    def step_outer(self, batch, ctx) -> dict:
        ir, vis = self._dev(*batch)
        y, fused, feats = self.F(ir, vis, with_features=True)
        lf, parts = self.loss_f(y, ir, self._lum(vis))
        fm, ft = self.MFE(feats, self.det_features(fused.detach()))
        lg = guide_loss(fm, ft)
        loss = lf + self.cfg["lambda_g"] * lg
        self.opt_f.zero_grad()
        loss.backward(inputs=list(self.F.parameters()))
        self.opt_f.step()
        return {"L_f": float(lf.detach()), "L_g": float(lg.detach())}

    def step_cofusion(self, batch, ctx) -> dict:
        ir, vis, boxes = *self._dev(*batch[:2]), batch[2]
        y, fused, _ = self.F(ir, vis, with_features=True)
        lf, _ = self.loss_f(y, ir, self._lum(vis))
        self.D.eval()
        ld, _ = self.D.loss(fused, boxes)
        loss = lf + self.cfg["lambda_d"] * ld
        self.opt_f.zero_grad()
        loss.backward(inputs=list(self.F.parameters()))
        self.opt_f.step()
        return {"L_f": float(lf.detach()), "L_det": float(ld.detach())}

    def inner_phase(self, epoch: int, ctx) -> dict:
        inner = self.cfg["inner"]
        if epoch % inner["every"] != 0:
            return {}
        vals = []
        it = iter(self.meta_batches())
        for _ in range(inner["updates"]):
            try:
                b1, b2 = next(it), next(it)
            except StopIteration:
                it = iter(self.meta_batches())
                b1, b2 = next(it), next(it)
            vals.append(inner_update(self, b1, b2))
        return {"L_f_meta": sum(vals) / len(vals)}

    # -- stage list ---------------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        c, ep = self.cfg, self.cfg["epochs"]
        st = [Stage("pretrain_f", ep["pretrain"], self.batches, self.step_pretrain)]
        mode = c["mode"]
        if mode not in ("metafusion", "sofusion", "cofusion"):
            from ..errors import suggest

            raise suggest(mode, ["metafusion", "sofusion", "cofusion"], "MetaFusion mode")
        rounds = 1 if mode == "sofusion" else c["rounds"]
        for r in range(1, rounds + 1):
            if self.det_batches is not None and ep["det"] > 0:
                lr = c["optim"]["lr_det"] * c["optim"]["det_decay"] ** (r - 1)
                st.append(Stage(f"det_{r}", ep["det"], self.det_batches, self.step_det, on_start=self._set_det_lr(lr)))
            if mode == "metafusion":
                st.append(Stage(f"mfe_{r}", ep["mfe"], self.batches, self.step_outer, on_epoch_end=self.inner_phase))
            elif mode == "cofusion":
                st.append(Stage(f"co_{r}", ep["mfe"], self.det_batches, self.step_cofusion))
        return st

    def _set_det_lr(self, lr: float):
        def fn(ctx):
            for g in self.opt_d.param_groups:
                g["lr"] = lr

        return fn


def inner_update(rec: MetaFusionRecipe, meta_train, meta_test, first_order: bool = False) -> float:
    """One inner (meta) update of MFG/FT through the virtual step θ_F' (returns L_f on the meta-test batch).

    ``first_order=True`` cuts the second-order path (θ_F' detached from MFE) — then MFE receives no gradient,
    which the tests use to show that the update really flows through θ_F'.
    """
    F_, mfe = rec.F, rec.MFE
    ir1, vis1 = rec._dev(*meta_train)
    ir2, vis2 = rec._dev(*meta_test)
    params = dict(F_.named_parameters())
    _, fused1, feats1 = functional_call(F_, params, (ir1, vis1), {"with_features": True})
    fm, ft = mfe(feats1, rec.det_features(fused1.detach()))
    lg = guide_loss(fm, ft)
    names = list(params)
    grads = torch.autograd.grad(lg, [params[n] for n in names], create_graph=not first_order, allow_unused=True)
    beta = rec.cfg["optim"]["lr_inner"]
    virtual = {}
    for n, g in zip(names, grads):
        if g is None:
            virtual[n] = params[n]
        else:
            virtual[n] = params[n] - beta * (g.detach() if first_order else g)
    y2, _, _ = functional_call(F_, virtual, (ir2, vis2), {"with_features": True})
    lf, _ = rec.loss_f(y2, ir2, rec._lum(vis2))
    rec.opt_mfe.zero_grad()
    mfe_params = [p for p in mfe.parameters()]
    g_mfe = torch.autograd.grad(lf, mfe_params, allow_unused=True)
    for p, g in zip(mfe_params, g_mfe):
        p.grad = torch.zeros_like(p) if g is None else g
    rec.opt_mfe.step()
    return float(lf.detach())


def _validate(rec: MetaFusionRecipe) -> dict:
    from ..data import load_dataset
    from ..metrics import compute_metrics

    v = rec.cfg.get("val") or {}
    if not v:
        return {}
    ds = load_dataset(v["name"], split=v.get("split", "all"))
    names = ["en", "sd", "sf", "ag", "mi", "scd", "vif", "qabf"]
    acc = {n: 0.0 for n in names}
    k = min(len(ds), v.get("max", len(ds)))
    rec.F.eval()
    with torch.no_grad():
        for i in range(k):
            s = ds[i]
            fused = rec.F(s["ir"][None].to(rec.device), s["vis"][None].to(rec.device))[0].cpu()
            for n, val in compute_metrics(fused, s["ir"], s["vis"], names).items():
                acc[n] += val / k
    return {f"val_{n}": x for n, x in acc.items()}


def _finite(x):
    """NaN/inf -> None so that summaries are strict JSON."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def train_metafusion(cfg: dict, out: str | Path, export: str | Path | None = None, progress: bool = True) -> dict:
    """Run Algorithm 1 (or an ablation) with ``cfg``; writes ``out/last.pt``, ``out/final.pt`` (F, MFE, D states,
    config, metrics) and optionally a safetensors export of F. Resumes from ``out/last.pt`` if present."""
    rec = MetaFusionRecipe(cfg, progress)
    tr = Trainer(out, {"F": rec.F, "MFE": rec.MFE, "D": rec.D},
                 {"F": rec.opt_f, "MFE": rec.opt_mfe, "D": rec.opt_d}, cfg, progress, cfg.get("seed", 0))  # fmt: skip
    metrics = tr.run(rec.stages())
    val = _validate(rec)
    metrics["val"] = val
    tr.metrics = metrics
    tr.save("final.pt")
    summary = {"metrics": metrics, "timings_s": tr.timings,
               "epoch_s": {k: tr.timings[k] / max(1, tr.done.get(k, 1)) for k in tr.timings}}  # fmt: skip
    (Path(out) / "summary.json").write_text(json.dumps(_finite(summary), indent=2))
    if export:
        meta = {"config": json.dumps({"width": cfg["fusion"]["width"], "colour": cfg["fusion"]["colour"], "blocks": 3}),
                "training": json.dumps({"mode": cfg["mode"], "levels": cfg["levels"], "data": cfg["data"]["train"],
                                        "detection_data": cfg["data"]["detection"], "detector": cfg["detector"],
                                        "epochs": cfg["epochs"], "rounds": cfg["rounds"], "loss": cfg["loss"]}),
                "metrics": json.dumps(_finite(val))}  # fmt: skip
        export_safetensors(export, rec.F.state_dict(), meta)
    return summary

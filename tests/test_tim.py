"""TIM: search space / derived network (ivfuse.models.tim) and implicit architecture gradients (tim_search)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import need

from ivfuse.errors import InputError, IvfuseError
from ivfuse.losses.fusion import gradient_loss, intensity_loss
from ivfuse.models import create_model
from ivfuse.models.tim import OPS, TIMNet, TIMSupernet, load_genotype, make_op
from ivfuse.models.tim_search import Architect, conjugate_gradient, gauss_newton_hypergrad, implicit_hypergrad

SMALL = ("res_k3_d1", "dil_k3_d2", "eca_k3", "spa_k3")


def _pair(b: int = 1, h: int = 16, w: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Structured pair: IR = a hot square on a dark ramp, visible = texture (sinusoids) + noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    ir = 0.2 * xx.expand(b, 1, h, w).clone()
    ir[..., h // 4 : h // 2, w // 3 : 2 * w // 3] = 0.9
    vis = 0.5 + 0.3 * torch.sin(12 * xx + 7 * yy) + 0.05 * torch.randn(b, 1, h, w, generator=g)
    return ir.clamp(0, 1), vis.clamp(0, 1)


# ------------------------------------------------------------------------------------------ hyper-gradients
def _ridge(seed: int = 0):
    """Ridge regression with per-feature log-penalties α: ω*(α) = (XᵀX + diag e^α)⁻¹ Xᵀy, F = validation MSE.
    Closed form: dF/dα_i = -e^{α_i} ω*_i [(XᵀX + diag e^α)⁻¹ ∇_ω F]_i."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    X = torch.randn(40, 5, generator=g, dtype=dt)
    y = X @ torch.randn(5, generator=g, dtype=dt) + 0.3 * torch.randn(40, generator=g, dtype=dt)
    Xv = torch.randn(30, 5, generator=g, dtype=dt)
    yv = Xv @ torch.randn(5, generator=g, dtype=dt)
    alpha = torch.tensor([0.1, -0.5, 1.0, 0.3, 2.0], dtype=dt, requires_grad=True)
    A = X.T @ X + torch.diag(alpha.detach().exp())
    ws = torch.linalg.solve(A, X.T @ y)
    gF = Xv.T @ (Xv @ ws - yv) / len(yv)
    closed = -alpha.detach().exp() * ws * torch.linalg.solve(A, gF)
    return X, y, Xv, yv, alpha, ws, closed


def _ridge_closures(X, y, Xv, yv, alpha, w):
    def upper():
        return 0.5 * ((Xv @ w - yv) ** 2).mean()

    def lower():
        return 0.5 * ((X @ w - y) ** 2).sum() + 0.5 * (alpha.exp() * w**2).sum()

    return upper, lower


def test_ridge_closed_form_is_what_autograd_through_the_solve_gives():
    X, y, Xv, yv, alpha, ws, closed = _ridge()
    w_of_a = torch.linalg.solve(X.T @ X + torch.diag(alpha.exp()), X.T @ y)
    (g,) = torch.autograd.grad(0.5 * ((Xv @ w_of_a - yv) ** 2).mean(), alpha)
    torch.testing.assert_close(g, closed, rtol=1e-12, atol=1e-14)
    assert closed.abs().min() > 1e-3  # a non-trivial target in every coordinate


@pytest.mark.parametrize("method", ["cg", "neumann"])
def test_implicit_gradient_matches_closed_form(method):
    X, y, Xv, yv, alpha, ws, closed = _ridge()
    w = ws.clone().requires_grad_()
    up, lo = _ridge_closures(X, y, Xv, yv, alpha, w)
    kw = {"iters": 20} if method == "cg" else {"iters": 300}
    hg, info = implicit_hypergrad(up, lo, [w], [alpha], method=method, **kw)
    rel = float((hg[0] - closed).norm() / closed.norm())
    assert rel < 1e-6, (method, rel, info)
    if method == "cg":
        assert info["iters"] <= 6 and info["residual"] < 1e-6  # 5 unknowns: CG is exact in ≤ 5 steps


def test_gauss_newton_exact_for_scalar_residual_and_official_sign_is_flipped():
    """f = ½(aω - b(α))², F = ½(ω - t)² + ½κα²: GN reproduces the exact hyper-gradient with ω in place of ω*,
    and the official variant's implicit term is -η times the derived one."""
    dt = torch.float64
    a, t, kappa = 1.7, 0.4, 0.1
    alpha = torch.tensor([0.3], dtype=dt, requires_grad=True)

    def b(al):
        return torch.sin(al) + 2.0

    wstar = float(b(alpha.detach())) / a
    bprime = float(torch.cos(alpha.detach()))
    exact = kappa * 0.3 + (wstar - t) * bprime / a
    for delta in (1e-3, 1e-6):
        w = torch.tensor([wstar + delta], dtype=dt, requires_grad=True)

        def up():
            return 0.5 * ((w - t) ** 2).sum() + 0.5 * kappa * (alpha**2).sum()

        def lo():
            return 0.5 * ((a * w - b(alpha)) ** 2).sum()

        gn, info = gauss_newton_hypergrad(up, lo, [w], [alpha])
        assert abs(float(gn[0]) - exact - delta * bprime / a) < 1e-9  # the ω - ω* term, nothing else
        assert abs(float(gn[0]) - exact) < 2 * delta
        eta = 0.05
        off, _ = gauss_newton_hypergrad(up, lo, [w], [alpha], variant="official", eta=eta)
        direct = kappa * 0.3
        assert float(off[0]) - direct == pytest.approx(-eta * (float(gn[0]) - direct), rel=1e-9)
    # and the IFT (CG) at the exact solution
    w = torch.tensor([wstar], dtype=dt, requires_grad=True)
    cg, _ = implicit_hypergrad(
        lambda: 0.5 * ((w - t) ** 2).sum() + 0.5 * kappa * (alpha**2).sum(),
        lambda: 0.5 * ((a * w - b(alpha)) ** 2).sum(),
        [w],
        [alpha],
    )
    assert float(cg[0]) == pytest.approx(exact, rel=1e-10)


def test_gauss_newton_error_on_ridge_is_large_and_reported():
    """Several residuals: GN's coefficient c follows the noise of ∇_ω f near ω*. Measured (seed 0): relative error
    > 1 at every perturbation, while CG stays at the perturbation's order."""
    X, y, Xv, yv, alpha, ws, closed = _ridge()
    g = torch.Generator().manual_seed(1)
    errs = {}
    for pert in (0.0, 1e-4, 1e-2, 1e-1):
        w = (ws + pert * torch.randn(5, generator=g, dtype=ws.dtype)).requires_grad_()
        up, lo = _ridge_closures(X, y, Xv, yv, alpha, w)
        gn, _ = gauss_newton_hypergrad(up, lo, [w], [alpha])
        cg, _ = implicit_hypergrad(up, lo, [w], [alpha])
        errs[pert] = (float((gn[0] - closed).norm() / closed.norm()), float((cg[0] - closed).norm() / closed.norm()))
    print("ridge relative errors (GN, CG) by perturbation of ω*:", errs)
    for pert, (e_gn, e_cg) in errs.items():
        assert e_cg < 5 * max(pert, 1e-12)
        assert e_gn > 1.0


SHARDED_WORKER = textwrap.dedent('''
    """One rank of a 2-process gloo group: hyper-gradients of a ridge problem on this rank's half of the rows."""
    import os, sys, torch
    import torch.distributed as dist
    from ivfuse.engine.distributed import all_reduce_tensors
    from ivfuse.models.tim_search import hypergradient

    def problem(rows):
        g = torch.Generator().manual_seed(0)
        dt = torch.float64
        X, Xv = torch.randn(40, 5, generator=g, dtype=dt), torch.randn(30, 5, generator=g, dtype=dt)
        y = X @ torch.randn(5, generator=g, dtype=dt) + 0.3 * torch.randn(40, generator=g, dtype=dt)
        yv = Xv @ torch.randn(5, generator=g, dtype=dt)
        w = (0.3 * torch.randn(5, generator=g, dtype=dt)).requires_grad_()  # away from w*: every term is non-zero
        alpha = torch.tensor([0.1, -0.5, 1.0, 0.3, 2.0], dtype=dt, requires_grad=True)
        X, y, Xv, yv = X[rows], y[rows], Xv[rows], yv[rows]
        def upper():  # batch means (as the fusion losses): the mean over equal shards is the global value
            return 0.5 * ((Xv @ w - yv) ** 2).mean() + 0.01 * (alpha ** 2).sum()
        def lower():
            return 0.5 * ((X @ w - y) ** 2).mean() + 0.05 * (alpha.exp() * w ** 2).sum()
        return upper, lower, w, alpha

    def all_methods(rows, reduce):
        out = {}
        for m, kw in (("cg", {"iters": 5}), ("neumann", {"iters": 50}), ("gn", {}), ("first_order", {})):
            up, lo, w, alpha = problem(rows)
            torch.manual_seed(1)  # Neumann's power iteration starts from a random vector
            out[m] = hypergradient(m, up, lo, [w], [alpha], reduce=reduce, **kw)[0][0]
        return out

    if __name__ == "__main__":
        if os.environ.get("RANK") is None:  # one process, the whole batch
            torch.save(all_methods(slice(None), None), sys.argv[1])
            sys.exit()
        dist.init_process_group("gloo")
        r = dist.get_rank()
        rows = slice(r, None, 2)
        sharded = all_methods(rows, all_reduce_tensors)
        naive = {k: all_reduce_tensors([v])[0] for k, v in all_methods(rows, None).items()}  # mean of per-rank results
        torch.save({"sharded": sharded, "naive": naive}, sys.argv[1] + f".{r}")
        dist.destroy_process_group()
''')


@pytest.mark.slow
def test_hypergradient_on_shards_is_the_global_batchs(tmp_path):
    """Data-parallel hyper-gradients (2 gloo processes, each with half of the rows of a ridge problem, float64):
    with the pieces averaged (``reduce``: ∇F, every Hessian-vector product, the mixed term, ∇f for Gauss–Newton) the
    result equals one process on all rows to 1e-12 and is the same on both ranks; the mean of the per-rank
    hyper-gradients is not (relative error > 1e-3 for the implicit methods) — which is why the pieces are averaged."""
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "w.py").write_text(SHARDED_WORKER)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = str(sk.getsockname()[1])
    out = tmp_path / "h.pt"
    single = subprocess.run([sys.executable, str(tmp_path / "w.py"), str(out)], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    procs = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "w.py"), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **env,
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
        )
        for r in range(2)
    ]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "".join(errs)[-3000:]
    ref = torch.load(out, weights_only=True)
    r0, r1 = (torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1))
    for m, g in ref.items():
        assert torch.equal(r0["sharded"][m], r1["sharded"][m]), m  # bitwise the same on both ranks
        rel = float((r0["sharded"][m] - g).norm() / g.norm())
        assert rel < 1e-12, (m, rel)
        naive = float((r0["naive"][m] - g).norm() / g.norm())
        if m == "first_order":  # linear in the data: the mean of the ranks' gradients is the global one
            assert naive < 1e-12, naive
        else:
            assert naive > 1e-3, (m, naive)


def test_truncated_cg_stops_at_negative_curvature():
    A = torch.diag(torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64))
    b = [torch.tensor([1.0, 0.3, 1.0], dtype=torch.float64)]
    x, info = conjugate_gradient(lambda v: [A @ v[0]], b, iters=10)
    q = float(0.5 * x[0] @ A @ x[0] - b[0] @ x[0])
    assert info["negative_curvature"] and q < 0 and torch.isfinite(x[0]).all()
    spd = torch.diag(torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64))
    x, info = conjugate_gradient(lambda v: [spd @ v[0]], b, iters=10)
    torch.testing.assert_close(x[0], torch.tensor([0.5, 0.3, 2.0], dtype=torch.float64))
    assert info["iters"] == 3 and not info["negative_curvature"]


def test_implicit_gradient_on_the_supernet_is_finite_and_differs_from_first_order():
    net = _supernet(5).train()
    ir_t, vis_t = _pair(1, 8, 8, seed=0)
    ir_v, vis_v = _pair(1, 8, 8, seed=1)

    def up():
        return intensity_loss(net.forward_train(ir_v, vis_v)["fused"], ir_v, vis_v)

    def lo():
        f = net.forward_train(ir_t, vis_t)["fused"]
        return intensity_loss(f, ir_t, vis_t) + gradient_loss(f, ir_t, vis_t)

    arch, weights = net.arch_parameters(), net.weight_parameters()
    hg, info = implicit_hypergrad(up, lo, weights, arch, iters=4, damping=1e-2)
    fo = torch.autograd.grad(up(), arch)
    assert all(torch.isfinite(h).all() for h in hg) and info["iters"] >= 1
    assert sum(float((h - g).abs().sum()) for h, g in zip(hg, fo)) > 0


# ------------------------------------------------------------------------------------------ networks
def test_operation_library_keeps_shape():
    x = torch.rand(2, 8, 9, 7)
    for name in OPS:
        assert make_op(name, 8)(x).shape == x.shape, name
    with pytest.raises(InputError, match="unknown TIM operation"):
        make_op("res_k4_d1", 8)


def test_parameter_counts_match_the_official_networks():
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    full, light = n(TIMNet("ivif")), n(TIMNet("ivif_light"))
    print("TIM parameters: full", full, "light", light)
    assert abs(full - 1_232_225) <= 10  # official Network_Fusion9_Meta(fusion_M) + Network_Fusion9_3
    assert abs(light - 127_358) <= 10  # official Network_Fusion9_Meta(fusion_light)


@pytest.mark.parametrize("genotype", ["ivif", "ivif_light"])
def test_derived_network_odd_sizes_gray_and_rgb(genotype):
    torch.manual_seed(0)
    net = TIMNet(genotype, width=8).eval()
    ir = torch.rand(2, 1, 13, 11)
    vis_rgb = (torch.rand(2, 1, 13, 11) + 0.1 * torch.rand(2, 3, 13, 11)).clamp(0, 1)  # mild chroma
    with torch.no_grad():
        out_g = net(ir, vis_rgb[:, :1])
        out_c = net(ir, vis_rgb)
        parts = net.forward_train(ir, vis_rgb[:, :1])
    assert out_g.shape == (2, 1, 13, 11) and out_c.shape == (2, 3, 13, 11)
    assert torch.isfinite(out_c).all() and out_c.min() >= 0 and out_c.max() <= 1
    assert all(v.shape[-2:] == (13, 11) for v in parts.values())
    assert ("aux_ir" in parts) == (genotype == "ivif")
    # both inputs reach the output (through stage 1 and, for the full net, stage 2's IR branch)
    ir_r, y_r = ir.clone().requires_grad_(), vis_rgb[:, :1].clone().requires_grad_()
    g_ir, g_y = torch.autograd.grad(net.forward_train(ir_r, y_r)["fused"].sum(), [ir_r, y_r])
    assert g_ir.abs().sum() > 0 and g_y.abs().sum() > 0
    # colour: the fused luminance replaces the visible Y, Cb/Cr are kept. Make the last conv output 0.4 everywhere.
    from kornia.color import rgb_to_ycbcr

    last = (net.stage2.head if net.stage2 is not None else net.head)[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.4)
        out_c = net(ir, vis_rgb)
    ycc_in, ycc_out = rgb_to_ycbcr(vis_rgb), rgb_to_ycbcr(out_c)
    inside = (out_c > 0.001).all(1, keepdim=True) & (out_c < 0.999).all(1, keepdim=True)
    sel = inside.expand(-1, 2, -1, -1)
    assert inside.float().mean() > 0.9
    torch.testing.assert_close(ycc_out[:, :1][inside], torch.full_like(ycc_out[:, :1][inside], 0.4), atol=1e-4, rtol=0)
    torch.testing.assert_close(ycc_out[:, 1:][sel], ycc_in[:, 1:][sel], atol=1e-4, rtol=0)
    with pytest.raises(InputError, match="smaller"):
        net(torch.rand(1, 1, 3, 9), torch.rand(1, 1, 3, 9))


@pytest.mark.parametrize("layout", ["ivfuse", "official"])
def test_eval_fast_path_equals_the_plain_modules(layout, monkeypatch):
    """Inference folds BatchNorm into the convolutions and runs PReLU/ReLU and the dense blocks' activations inside
    oneDNN (ivfuse.models._fused), skips the auxiliary heads, and gives the fusion cell's attention the branches'
    means: the same image as the modules run one by one, within float rounding."""
    import ivfuse.models._fused as _fused
    import ivfuse.models.tim as tim_mod
    from ivfuse.models._fused import FoldedSequential

    torch.manual_seed(0)
    net = TIMNet("ivif", width=8, layout=layout)
    for m in net.modules():  # non-trivial BatchNorm statistics and PReLU slopes
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
        if isinstance(m, torch.nn.PReLU):
            m.weight.data.fill_(0.1)
    net.eval().to(memory_format=torch.channels_last)
    ir, vis = _pair(1, 36, 52)
    calls = []
    real = _fused.conv_fused
    monkeypatch.setattr(
        _fused, "conv_fused", lambda conv, x, bn=None, *a, **k: calls.append(bn) or real(conv, x, bn, *a, **k)
    )
    with torch.inference_mode():
        fast = net.forward_train(ir, vis, aux=False)
        full = net.forward_train(ir, vis)
    assert set(fast) == {"stage1", "fused", "mask"} and {"aux_ir", "aux_vis"} <= set(full)
    assert len(calls) > 40 and sum(bn is not None for bn in calls) >= 10  # the fast path ran, BatchNorms folded
    monkeypatch.setattr(FoldedSequential, "forward", torch.nn.Sequential.forward)
    monkeypatch.setattr(tim_mod, "act_of", lambda m: None)
    with torch.inference_mode():
        plain = net.forward_train(ir, vis)
    assert (fast["fused"] - plain["fused"]).abs().max() < 1e-5
    assert (fast["fused"] - full["fused"]).abs().max() == 0


def _supernet(seed: int = 0) -> TIMSupernet:
    torch.manual_seed(seed)
    return TIMSupernet("ivif", width=8, candidates=SMALL)


def test_supernet_forward_backward_gives_alpha_gradients():
    net = _supernet().train()
    ir, vis = _pair(2)
    out = net.forward_train(ir, vis)
    loss = intensity_loss(out["fused"], ir, vis) + gradient_loss(out["fused"], ir, vis) + out["aux_ir"].mean()
    loss.backward()
    names = [n for n, _ in net.named_arch_parameters()]
    assert len(names) == 6 and all(p.shape == (2, len(SMALL)) for p in net.arch_parameters())  # 2 + 2·2 cells
    for n, p in net.named_arch_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    assert set(map(id, net.arch_parameters())).isdisjoint(map(id, net.weight_parameters()))
    cost = net.expected_cost()
    (gc,) = torch.autograd.grad(cost, net.arch_parameters()[0])
    assert cost > 0 and gc.abs().sum() > 0


def _remap_supernet_state(sd: dict, choice: dict[str, list[int]]) -> dict:
    """Supernet state dict -> derived-net state dict: keep, for every slot, the chosen candidate's weights."""
    out = {}
    pat = re.compile(r"^(.*)\.ops\.(\d+)\.(\d+)\.ops\.(\d+)\.(.*)$")
    for k, v in sd.items():
        if k.endswith("alpha"):
            continue
        m = pat.match(k)
        if m:
            cell, s, i, j, rest = m.groups()
            if int(j) != choice[cell][int(i)]:
                continue
            k = f"{cell}.ops.{s}.{i}.{rest}"
        out[k] = v
    return out


def test_derive_json_rebuild_round_trip(tmp_path):
    sup = _supernet(1).eval()
    gen = torch.Generator().manual_seed(3)
    choice = {}
    with torch.no_grad():
        for n, a in sup.named_arch_parameters():
            idx = torch.randint(0, len(SMALL), (a.shape[0],), generator=gen)
            a.zero_()
            a[torch.arange(a.shape[0]), idx] = 40.0  # softmax ≈ one-hot
            choice[n.rsplit(".", 1)[0]] = idx.tolist()
    g = sup.derive()
    for n, a in sup.named_arch_parameters():
        cell = g_cells = None
        path = n.rsplit(".", 1)[0]
        if path.startswith("cells."):
            g_cells, cell = g["stage1"], int(path.split(".")[1])
        else:
            g_cells, cell = g["stage2"]["ir" if "cells_ir" in path else "vis"], int(path.split(".")[2])
        assert g_cells[cell]["ops"] == [SMALL[i] for i in choice[path]]
    f = tmp_path / "g.json"
    f.write_text(json.dumps(g))
    g2 = load_genotype(f)
    assert g2 == g
    net = TIMNet(g2, width=8).eval()
    net.load_state_dict(_remap_supernet_state(sup.state_dict(), choice), strict=True)
    ir, vis = _pair(1, 12, 20)
    with torch.no_grad():
        ref, got = sup(ir, vis), net(ir, vis)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # save -> load (torch, weights_only) -> same parameters and output; and via the registry
    net.save(tmp_path / "tim.pt")
    again = TIMNet.from_checkpoint(tmp_path / "tim.pt")
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        torch.testing.assert_close(again(ir, vis), got)
        torch.testing.assert_close(create_model("tim", weights=str(tmp_path / "tim.pt"))(ir, vis), got)
    same = create_model("tim", weights=str(tmp_path / "tim.pt"), genotype=str(f))
    assert same.genotype() == g
    assert "dense_k3_d1" not in SMALL  # so the derived genotype cannot be the shipped one
    with pytest.raises(InputError, match="genotype differs"):
        create_model("tim", weights=str(tmp_path / "tim.pt"), genotype="ivif")


def test_registry_without_weights_and_bad_files(tmp_path):
    with pytest.raises(InputError, match="TIM needs trained weights.*genotype=NAME"):
        create_model("tim", weights=None)
    m = create_model("tim", weights=None, genotype="ivif_light")  # untrained, of the named genotype
    assert m.genotype()["stage1"] == load_genotype("ivif_light")["stage1"] and not m.training
    with pytest.raises(InputError, match="not found"):
        create_model("tim", weights=str(tmp_path / "none.pt"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "ivfuse-tim-genotype/1", "stage1": [{"type": "chain", "ops": ["conv_9x9"]}]}))
    with pytest.raises(InputError, match="bad.json"):
        load_genotype(bad)
    with pytest.raises(InputError, match="unknown TIM genotype"):
        load_genotype("nope")


def test_search_steps_reduce_upper_loss():
    """Alternate ω (Adam on the lower loss, train pair) and α (Architect, default implicit CG gradient, upper loss on
    a validation pair) on tiny data; the upper loss falls and α moves."""
    net = _supernet(2).train()
    ir_t, vis_t = _pair(2, 16, 16, seed=0)
    ir_v, vis_v = _pair(2, 16, 16, seed=1)

    def loss(ir, vis):
        fused = net.forward_train(ir, vis)["fused"]
        return intensity_loss(fused, ir, vis) + gradient_loss(fused, ir, vis)

    def upper():
        return loss(ir_v, vis_v)

    def lower():
        return loss(ir_t, vis_t)

    w_opt = torch.optim.Adam(net.weight_parameters(), lr=3e-3)
    arch = Architect(net.arch_parameters(), net.weight_parameters(), lr=3e-2, solver={"iters": 3, "damping": 1e-2})
    alpha0 = [a.detach().clone() for a in net.arch_parameters()]
    with torch.no_grad():
        start = float(upper())
    infos = []
    for _ in range(8):
        w_opt.zero_grad()
        lower().backward()
        w_opt.step()
        infos.append(arch.step(upper, lower))
    with torch.no_grad():
        end = float(upper())
    assert end < 0.8 * start, (start, end)
    assert all(torch.isfinite(torch.tensor(i["upper"])) for i in infos)
    moved = sum(float((a.detach() - a0).abs().max()) for a, a0 in zip(net.arch_parameters(), alpha0))
    assert moved > 0.05


def test_latency_penalty_lowers_expected_cost():
    net = _supernet(4).train()
    ir, vis = _pair(1, 8, 8)

    def upper():
        return intensity_loss(net.forward_train(ir, vis)["fused"], ir, vis)

    arch = Architect(
        net.arch_parameters(),
        net.weight_parameters(),
        lr=0.1,
        method="first_order",
        latency=net.expected_cost,
        latency_weight=10.0,
    )
    c0 = float(net.expected_cost().detach())
    for _ in range(5):
        info = arch.step(upper, upper)
    assert "latency" in info and float(net.expected_cost().detach()) < 0.9 * c0


# ------------------------------------------------------------------------------------------ recipe (engine/tim.py)
TINY = [
    "net.width=8",
    "search.cg_iters=1",
    "search.max_batches=1",
    "data.max_batches=1",
    "data.batch=1",
    "data.crop=[32, 32]",
    "data.det_crop=[64, 64]",
    "meta.steps=2",
    "meta.inner_steps=1",
    "val.max=1",
    "epochs.search=1",
    "epochs.meta_init=1",
    "epochs.train=1",
    "data.meta=[{name: llvip, split: all, task: llvip}, {name: tno, split: all, task: tno}]",
]


def test_recipe_config_checks_and_hand_cell(tmp_path):
    from ivfuse.engine import train
    from ivfuse.engine.config import load_config
    from ivfuse.engine.tim import hand_genotype

    for bad, msg in (
        ("stage=serch", "TIM stage"),
        ("cell=manual", "TIM cell"),
        ("init=zero", "TIM init"),
        ("search.method=fd", "architecture gradient"),
        ("epochs.train=-1", "epochs.train"),
    ):
        with pytest.raises(IvfuseError, match=msg):
            train("tim", load_config("tim", "cpu", overrides=[bad]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before a run folder is written
    g = hand_genotype("ivif_light", "sep_k3_d1")
    assert [c["ops"] for c in g["stage1"]] == [["sep_k3_d1"] * 2] * 2 and g["stage2"] is None
    full = hand_genotype("ivif")
    assert all(op == "res_k3_d1" for part in ("ir", "vis") for c in full["stage2"][part] for op in c["ops"])


@pytest.mark.realdata
@pytest.mark.slow
def test_train_cli_runs_the_whole_chain(tmp_path, capsys):
    """``ivfuse train tim preset=cpu`` with tiny overrides: search -> derive -> meta_init -> train, a loadable export
    carrying the searched genotype, which is also written beside the run."""
    need("data/MSRS")
    need("data/LLVIP_sample")
    need("weights/yolov5n_coco_v6.1_state_dict.pt")
    from safetensors import safe_open

    from ivfuse.cli import main

    out, exp = tmp_path / "run", tmp_path / "tim.safetensors"
    assert main(["train", "tim", "-q", "preset=cpu", f"out={out}", f"export={exp}", *TINY]) == 0
    assert f"exported the trained model to {exp}" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["timings_s"]) == {"search", "meta_init", "train"}
    m = summary["metrics"]
    assert m["derive/end"]["params"] > 0 and m["train"]["L_det"] > 0 and m["train"]["mu"] >= 0
    g = json.loads((out / "genotype.json").read_text())
    assert g["name"] == "searched" and len(g["stage1"]) == 2
    with safe_open(exp, "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["genotype"]) == g and json.loads(meta["training"])["init"] == "meta"
    net = create_model("tim", weights=str(exp))
    assert net.genotype()["stage1"] == g["stage1"]
    ir, vis = _pair(1, 30, 42)
    with torch.no_grad():
        y = net(ir, vis.expand(-1, 3, -1, -1))
    assert y.shape == (1, 3, 30, 42) and 0 <= float(y.min()) and float(y.max()) <= 1


@pytest.mark.realdata
@pytest.mark.slow
def test_resume_across_derive_is_exact(tmp_path, monkeypatch):
    """Interrupt right after derive (the first meta-init step raises), rerun: the derived net is rebuilt by the
    replayed derive hook, gets its saved state, and the final weights equal an uninterrupted run's bitwise."""
    need("data/MSRS")
    need("data/LLVIP_sample")
    need("weights/yolov5n_coco_v6.1_state_dict.pt")
    from safetensors.torch import load_file

    from ivfuse.engine import train
    from ivfuse.engine.config import load_config
    from ivfuse.engine.tim import TIMRecipe

    cfg = load_config("tim", "cpu", overrides=TINY)
    train("tim", cfg, tmp_path / "a", tmp_path / "a.safetensors", progress=False)
    real = TIMRecipe.step_meta

    def boom(self, item, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(TIMRecipe, "step_meta", boom)
    with pytest.raises(KeyboardInterrupt):
        train("tim", cfg, tmp_path / "b", progress=False)
    assert (tmp_path / "b" / "genotype.json").is_file() and not (tmp_path / "b" / "final.pt").exists()
    monkeypatch.setattr(TIMRecipe, "step_meta", real)
    train("tim", cfg, tmp_path / "b", tmp_path / "b.safetensors", progress=False)
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "genotype.json").read_text() == (tmp_path / "b" / "genotype.json").read_text()


@pytest.mark.realdata
def test_shipped_model_fuses_a_real_pair():
    """The default ``create_model("tim")`` (shipped, searched + meta-initialised + task-guided) fuses an MSRS night
    pair: output in [0, 1], not constant, and it follows both sources (the hot IR targets and the visible scene)."""
    need("data/MSRS")
    from ivfuse.data import load_dataset

    net = create_model("tim")
    assert net.genotype()["stage1"] and not net.training
    ds = load_dataset("msrs", split="dev-val")
    s = next(ds[i] for i in range(len(ds)) if "N" in ds[i]["name"])  # a night pair
    with torch.no_grad():
        out = net(s["ir"][None], s["vis"][None])[0]
    assert out.shape == s["vis"].shape and 0 <= float(out.min()) and float(out.max()) <= 1
    y = out.mean(0).flatten()
    assert float(y.std()) > 0.02
    for src in (s["ir"].mean(0).flatten(), s["vis"].mean(0).flatten()):
        assert float(torch.corrcoef(torch.stack([y, src]))[0, 1]) > 0.3

r"""TIM's implicit architecture search: hyper-gradients of the architecture weights α and the :class:`Architect`.

The search is the bilevel problem

    min_α F(ω*(α), α)   s.t.   ω*(α) = argmin_ω f(ω, α)

with F the upper (validation / task-guided) loss and f the lower (training) fusion loss. Everything here works on
closures ``upper() -> F`` and ``lower() -> f`` that evaluate the losses with the *current* tensors ``weights`` (ω) and
``arch`` (α), so it applies to :class:`ivfuse.models.tim.TIMSupernet` and to the closed-form test problems alike.

**Exact implicit gradient (implicit function theorem).** At a lower-level solution ∇_ω f(ω*(α), α) = 0 for all α;
differentiating this identity gives H_ωω dω*/dα + H_ωα = 0 with H_ωω = ∇²_ωω f and H_ωα = ∇²_ωα f, so (H_ωω
invertible) dω*/dα = -H_ωω⁻¹ H_ωα and

    dF/dα = ∇_α F - H_αω H_ωω⁻¹ ∇_ω F.                                                   (IFT)

:func:`implicit_hypergrad` computes v = H_ωω⁻¹ ∇_ω F by conjugate gradients (``method="cg"``, H_ωω must be
positive definite near ω*; ``damping`` adds δI) or by the truncated Neumann series H⁻¹ ≈ η Σ_{j≤K} (I - ηH)^j
(``method="neumann"``), using only Hessian-vector products H_ωω v = ∇_ω⟨∇_ω f, v⟩ (double backward), and then
H_αω v = ∇_α⟨∇_ω f, v⟩. It is exact at ω = ω*; away from ω* it is the usual approximation.

**Gauss–Newton scheme (the paper's implicit search, the official ``IAS/architect_new.py``).** Replace the second
derivatives of f by outer products of its first derivatives at the current (ω, α), g_ω = ∇_ω f, g_α = ∇_α f:
H_ωω ≈ g_ω g_ωᵀ and H_αω ≈ g_α g_ωᵀ. H_ωω is then rank one; with its pseudo-inverse (g_ω g_ωᵀ)⁺ = g_ω g_ωᵀ/‖g_ω‖⁴,

    H_αω H_ωω⁺ ∇_ω F = g_α g_ωᵀ g_ω g_ωᵀ ∇_ω F / ‖g_ω‖⁴ = c · g_α,   c = ⟨∇_ω F, ∇_ω f⟩ / ‖∇_ω f‖²,

    dF/dα ≈ ∇_α F - c ∇_α f.                                                            (GN)

c is the least-squares coefficient of ∇_ω F on ∇_ω f. The scheme is *exact* when f = ½ r(ω, α)² with a scalar
residual r and ω one-dimensional, in the limit ω → ω* (then r → 0, the Gauss–Newton Hessian J Jᵀ is the true
Hessian, the cross term is ∇_α r Jᵀ, and the factors r in g_ω = rJ, g_α = r∇_α r cancel in c·g_α, so the expression
stays finite although g_ω, g_α → 0); evaluated at ω instead of ω* it differs from (IFT) by a term proportional to
ω - ω*. For several residuals / parameters it is an approximation (``tests/test_tim.py`` measures its error on
ridge regression); c is 0/0 at an exact lower-level stationary point, so a small ``eps`` guards the division.

**The official code differs:** it builds ``GN_loss = -c·f``, takes ig = ∇_α GN_loss = -c ∇_α f and then
``dalpha.sub_(eta, ig)``, i.e. it uses

    ∇_α F + η · c · ∇_α f                                                               (official)

— the implicit term has the opposite sign to (GN) and an extra factor η (the network learning rate, left over from
DARTS's one-step unrolled formula ∇_α F - η H_αω ∇_ω' F; that formula with the same Gauss–Newton cross term would
give ∇_α F - η c ‖∇_ω f‖² ∇_α f, again with a minus sign). ``method="gn_official"`` reproduces it for comparison.

**Default:** ``method="cg"`` — the exact (IFT) hyper-gradient, conjugate gradients with 10 iterations and damping
δ = 1e-3 (stops at negative curvature, so non-convex lower losses do not blow it up); about 2·(iters+1) extra
backward passes per architecture step. The Gauss–Newton scheme is implemented (``"gn"``, the derivation's sign;
``"gn_official"``, the code's) and is exact where its assumptions hold (scalar residual, 1-D ω: tested), but on a
problem with several residuals its coefficient c is driven by the lower-level gradient's *noise* near ω* (c is 0/0
at ω*): on the ridge-regression test its hyper-gradient has relative error 4.5e8 at ω* and 1.1e3 / 63 / 1.9 at
random perturbations 1e-4 / 1e-2 / 1e-1 of ω*, where CG has 6e-16 / 9e-5 / 5e-3 / 0.11 (``tests/test_tim.py``,
``docs/tim.md``). ``"neumann"`` (truncated Neumann series = differentiating
K unrolled SGD steps) and ``"first_order"`` (∇_α F only, DARTS first order, the cheapest baseline) are the other
choices.

**Data-parallel (torchrun).** Every function takes ``reduce``: a map from a list of tensors to their mean over the
processes (:func:`ivfuse.engine.distributed.all_reduce_tensors`; ``None`` = one process). Each rank evaluates F and f
on its shard of the global batch; with batch-mean losses and equal shards F = mean_r F_r and f = mean_r f_r, so
every *derivative* of F or f is the mean of the ranks' derivatives, but the hyper-gradient is not: it is nonlinear
in them (an inverse Hessian applied to a gradient; the ratio c), and the mean of per-rank hyper-gradients is not the
global batch's. So the derivatives are averaged *before* they are combined:

* ∇_ω F and ∇_α F (one collective; the latency term is the same on every rank and averages to itself);
* every Hessian-vector product H_ωω v (CG / Neumann iterate on the global Hessian: all ranks then take the same CG
  steps, stop at the same iteration, and solve the same system);
* the mixed term H_αω v;
* for Gauss–Newton ∇_ω f and ∇_α f (c is then the global batch's coefficient).

The result is the hyper-gradient of the global batch (up to float summation order) and bitwise the same on every
rank, so α needs no further all-reduce (:class:`Architect` steps it with ``sync=False``). The double-backward graph
of ∇_ω f stays per rank (only products with fixed vectors are communicated: 2 + iterations collectives of the size
of ω per architecture step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import InputError

__all__ = [
    "METHODS",
    "implicit_hypergrad",
    "gauss_newton_hypergrad",
    "hypergradient",
    "conjugate_gradient",
    "neumann_series",
    "Architect",
]

METHODS = ("gn", "gn_official", "cg", "neumann", "first_order")

Tensors = list[torch.Tensor]
Closure = Callable[[], torch.Tensor]


def _grads(out: torch.Tensor, params: Sequence[torch.Tensor], **kw) -> Tensors:
    gs = torch.autograd.grad(out, list(params), allow_unused=True, **kw)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def conjugate_gradient(
    matvec: Callable[[Tensors], Tensors], b: Tensors, iters: int = 50, tol: float = 1e-12
) -> tuple[Tensors, dict]:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` given as ``matvec`` on lists of tensors.

    Stops when ``‖r‖² ≤ tol · ‖b‖²``, after ``iters`` steps, or — truncated CG (Steihaug) — at a direction of
    non-positive curvature (``A`` not positive definite there, as happens for network Hessians), returning the
    iterate before it; every accepted step lowers ``q(x) = ½xᵀAx - bᵀx`` below ``q(0) = 0``.
    Returns ``(x, {"iters", "residual", "negative_curvature"})`` (relative residual norm ‖b - Ax‖/‖b‖)."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr = _dot(r, r)
    bb = rr.clamp_min(1e-300)
    k, negative = 0, False
    while k < iters and rr > tol * bb:
        ap = matvec(p)
        pap = _dot(p, ap)
        if pap <= 0:
            negative = True
            break
        k += 1
        a = rr / pap
        x = [xi + a * pi for xi, pi in zip(x, p)]
        r = [ri - a * api for ri, api in zip(r, ap)]
        rr_new = _dot(r, r)
        p = [ri + (rr_new / rr) * pi for ri, pi in zip(r, p)]
        rr = rr_new
    return x, {"iters": k, "residual": float((rr / bb).sqrt()), "negative_curvature": negative}


def neumann_series(
    matvec: Callable[[Tensors], Tensors],
    b: Tensors,
    iters: int = 100,
    lr: float | None = None,
    reduce: Reduce | None = None,
) -> tuple[Tensors, dict]:
    """``A⁻¹ b ≈ η Σ_{j=0..K} (I - ηA)^j b`` (converges for 0 < η < 2/λ_max(A), A positive definite).

    ``lr`` (η) defaults to ``1/λ̂`` with λ̂ from 20 power iterations (×1.05 for safety) from a random start
    (averaged by ``reduce``, so that every process starts the power iteration from the same vector)."""
    if lr is None:
        v = _mean(reduce, [torch.randn_like(t) for t in b])
        lam = torch.tensor(1.0)
        for _ in range(20):
            nv = _dot(v, v).sqrt().clamp_min(1e-30)
            v = [t / nv for t in v]
            av = matvec(v)
            lam = _dot(v, av)
            v = av
        lr = 1.0 / (1.05 * float(lam)) if float(lam) > 0 else 1e-3
    p = [lr * t for t in b]
    x = [t.clone() for t in p]
    for _ in range(iters):
        ap = matvec(p)
        p = [pi - lr * api for pi, api in zip(p, ap)]
        x = [xi + pi for xi, pi in zip(x, p)]
    return x, {"iters": iters, "lr": lr}


Reduce = Callable[[Tensors], Tensors]


def _mean(reduce: Reduce | None, ts: Tensors) -> Tensors:
    """``ts`` averaged over the processes (``reduce``), or ``ts`` itself in one process."""
    return ts if reduce is None else list(reduce(ts))


def _upper_grads(
    upper: Closure, weights: Sequence[torch.Tensor], arch: Sequence[torch.Tensor], reduce: Reduce | None = None
):
    F = upper()
    g = _mean(reduce, _grads(F, list(weights) + list(arch)))
    return F.detach(), g[: len(weights)], g[len(weights) :]


def implicit_hypergrad(
    upper: Closure,
    lower: Closure,
    weights: Sequence[torch.Tensor],
    arch: Sequence[torch.Tensor],
    method: str = "cg",
    iters: int = 50,
    tol: float = 1e-12,
    damping: float = 0.0,
    neumann_lr: float | None = None,
    reduce: Reduce | None = None,
) -> tuple[Tensors, dict]:
    """Exact implicit-function-theorem hyper-gradient ``∇_α F - H_αω (H_ωω + δI)⁻¹ ∇_ω F`` (module docstring, IFT).

    Args:
        upper, lower: closures returning F and f (scalars) at the current ``weights`` / ``arch``.
        weights, arch: the tensors ω and α (``requires_grad=True``).
        method: ``"cg"`` (conjugate gradients) or ``"neumann"`` (truncated Neumann series).
        iters, tol: solver iterations / CG tolerance; damping: δ; neumann_lr: η of the Neumann series.
        reduce: mean over the processes of a list of tensors (data-parallel; module docstring): applied to ∇F,
            to every Hessian-vector product and to the mixed term.

    Returns ``(grads for arch, info)`` with ``info = {"upper", "lower", "iters", ...}``.
    """
    if method not in ("cg", "neumann"):
        raise InputError(f"implicit hyper-gradient method must be 'cg' or 'neumann', got '{method}'")
    weights, arch = list(weights), list(arch)
    F, gFw, gFa = _upper_grads(upper, weights, arch, reduce)
    f = lower()
    gfw = _grads(f, weights, create_graph=True)

    def hvp(v: Tensors) -> Tensors:
        hv = _mean(reduce, [h.detach() for h in _grads(_dot(gfw, v), weights, retain_graph=True)])
        return [h + damping * vi for h, vi in zip(hv, v)]

    if method == "cg":
        v, info = conjugate_gradient(hvp, [g.detach() for g in gFw], iters, tol)
    else:
        v, info = neumann_series(hvp, [g.detach() for g in gFw], iters, neumann_lr, reduce)
    mixed = _mean(reduce, _grads(_dot(gfw, [t.detach() for t in v]), arch))
    out = [ga - m for ga, m in zip(gFa, mixed)]
    info.update(upper=float(F), lower=float(f.detach()), method=method)
    return out, info


def gauss_newton_hypergrad(
    upper: Closure,
    lower: Closure,
    weights: Sequence[torch.Tensor],
    arch: Sequence[torch.Tensor],
    variant: str = "derived",
    eta: float | None = None,
    eps: float = 1e-20,
    reduce: Reduce | None = None,
) -> tuple[Tensors, dict]:
    """Gauss–Newton hyper-gradient ``∇_α F - c ∇_α f``, ``c = ⟨∇_ω F, ∇_ω f⟩ / ‖∇_ω f‖²`` (``variant="derived"``),
    or the official code's ``∇_α F + η c ∇_α f`` (``variant="official"``, needs ``eta``). See the module docstring.

    ``reduce`` (data-parallel) averages ∇F and ∇f over the processes before c is formed.
    Returns ``(grads for arch, info)`` with ``info["c"]``."""
    if variant not in ("derived", "official"):
        raise InputError(f"Gauss-Newton variant must be 'derived' or 'official', got '{variant}'")
    if variant == "official" and eta is None:
        raise InputError("the official Gauss-Newton variant needs eta (the network learning rate)")
    weights, arch = list(weights), list(arch)
    F, gFw, gFa = _upper_grads(upper, weights, arch, reduce)
    f = lower()
    g = _mean(reduce, _grads(f, weights + arch))
    gfw, gfa = g[: len(weights)], g[len(weights) :]
    c = _dot(gFw, gfw) / (_dot(gfw, gfw) + eps)
    coef = -c if variant == "derived" else eta * c
    out = [ga + coef * gf for ga, gf in zip(gFa, gfa)]
    return out, {"upper": float(F), "lower": float(f.detach()), "c": float(c), "method": f"gn_{variant}"}


def hypergradient(
    method: str, upper: Closure, lower: Closure, weights: Sequence[torch.Tensor], arch: Sequence[torch.Tensor], **kw
) -> tuple[Tensors, dict]:
    """Dispatch on ``method`` (one of :data:`METHODS`); ``kw["reduce"]``: see the module docstring."""
    reduce = kw.get("reduce")
    if method == "gn":
        return gauss_newton_hypergrad(upper, lower, weights, arch, "derived", eps=kw.get("eps", 1e-20), reduce=reduce)
    if method == "gn_official":
        eps = kw.get("eps", 1e-20)
        return gauss_newton_hypergrad(
            upper, lower, weights, arch, "official", eta=kw.get("eta"), eps=eps, reduce=reduce
        )
    if method in ("cg", "neumann"):
        keys = ("iters", "tol", "damping", "neumann_lr", "reduce")
        return implicit_hypergrad(upper, lower, weights, arch, method, **{k: kw[k] for k in keys if k in kw})
    if method == "first_order":
        F, _, gFa = _upper_grads(upper, list(weights), list(arch), reduce)
        return gFa, {"upper": float(F), "method": method}
    raise InputError(f"unknown architecture gradient method '{method}' (known: {', '.join(METHODS)})")


@dataclass
class Architect:
    """One architecture step: α ← Adam(α, hyper-gradient of the upper loss [+ λ·latency(α)]).

    Args:
        arch: the architecture parameters α (e.g. ``TIMSupernet.arch_parameters()``).
        weights: the network weights ω (``TIMSupernet.weight_parameters()``).
        lr, betas, weight_decay: Adam on α (β = (0.5, 0.999) as the official code; lr 3e-4 and weight decay 1e-3
            are the DARTS defaults the official code's arguments come from).
        method: :data:`METHODS` (default ``"cg"``, see the module docstring); solver: extra keywords (``iters``,
            ``damping``, ``tol``, ``neumann_lr``; ``eta`` for ``gn_official``; default ``iters=10, damping=1e-3``).
        latency: optional differentiable ``latency() -> scalar`` of α (``TIMSupernet.expected_cost``), added to the
            upper loss with weight ``latency_weight``.
        reduce: data-parallel mean of a list of tensors over the processes
            (:func:`ivfuse.engine.distributed.all_reduce_tensors`); the hyper-gradient is then the global batch's
            and equal on every rank (module docstring). ``None``: one process.
        stepper: what applies the hyper-gradient to α: anything with ``step_with_grads({param: grad})`` (the
            recipe passes an :class:`ivfuse.engine.step.OptimStep` of :attr:`optimizer` with ``sync=False`` — the
            gradient is already the global one); ``None``: plain ``optimizer.step()``.

    The closures run the model in its current mode: in train mode BatchNorm running statistics also see these
    extra forward passes (as in the official code).
    """

    arch: Sequence[torch.nn.Parameter]
    weights: Sequence[torch.nn.Parameter]
    lr: float = 3e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-3
    method: str = "cg"
    latency: Closure | None = None
    latency_weight: float = 0.0
    solver: dict = field(default_factory=lambda: {"iters": 10, "damping": 1e-3})
    reduce: Reduce | None = None
    stepper: object | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown architecture gradient method '{self.method}' (known: {', '.join(METHODS)})")
        self.arch, self.weights = list(self.arch), [w for w in self.weights if w.requires_grad]
        self.optimizer = torch.optim.Adam(self.arch, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)

    def step(self, upper: Callable[[], torch.Tensor], lower: Callable[[], torch.Tensor]) -> dict:
        """Compute the hyper-gradient at the current (ω, α) and take one Adam step on α. Returns the info dict
        (``upper``, ``lower``, method-specific entries, ``latency`` when used)."""
        if self.latency is not None and self.latency_weight:
            lat_box: list[float] = []

            def total() -> torch.Tensor:
                lat = self.latency()
                lat_box.append(float(lat.detach()))
                return upper() + self.latency_weight * lat

            grads, info = hypergradient(
                self.method, total, lower, self.weights, self.arch, reduce=self.reduce, **self.solver
            )
            info["latency"] = lat_box[-1]
        else:
            grads, info = hypergradient(
                self.method, upper, lower, self.weights, self.arch, reduce=self.reduce, **self.solver
            )
        grads = {p: g.detach().to(p.dtype) for p, g in zip(self.arch, grads)}
        if self.stepper is not None:
            self.stepper.step_with_grads(grads)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            for p, g in grads.items():
                p.grad = g
            self.optimizer.step()
        return info

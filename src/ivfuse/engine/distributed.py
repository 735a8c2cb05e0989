"""Data-parallel training with ``torch.distributed`` (launched by ``torchrun``) for every recipe of the engine.

How the engine parallelises (docs/engine.md, "Distributed and mixed precision"):

* :func:`setup` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``) and
  initialises the default process group: **gloo** for ``device=cpu``, **NCCL** for ``device=cuda`` (each process
  then uses ``cuda:LOCAL_RANK``). Without those variables (or with ``WORLD_SIZE=1``) nothing happens and training is
  single-process.
* Gradients are synchronised by an explicit **all-reduce (mean) inside** :class:`~ivfuse.engine.step.OptimStep`
  after back-propagation and before unscaling/clipping/stepping — not by wrapping modules in
  ``DistributedDataParallel``. The recipes call their modules in ways DDP does not support (``torch.autograd.grad``
  with ``create_graph=True`` for virtual steps, :func:`torch.func.functional_call`, extra forward methods such as
  ``D.features``, gradients into chosen ``inputs`` only); an all-reduce of ``p.grad`` works for all of them
  unchanged. Every rank starts from the same weights (same seed, then :func:`broadcast_modules` from rank 0), so
  identical averaged gradients keep the replicas identical.
* :class:`~ivfuse.engine.data.BatchSource` shards: ``batch`` stays the **global** batch; rank r gets samples
  ``r, r + W, r + 2W, ...`` of each global batch (W = world size), so the union over ranks is exactly the batch
  a single process would draw, with the same crops and flips.
* Rank 0 alone writes ``last.pt``/``after_*.pt``/``final.pt``/``log.csv``/``config.json``/``summary.json``, the
  export, and shows progress; the others wait at a barrier where rank 0 writes.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import InputError

__all__ = [
    "setup",
    "teardown",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "all_reduce_grads",
    "all_reduce_mean",
    "all_reduce_tensors",
    "all_reduce_buffers",
    "broadcast_modules",
    "broadcast_object",
    "env_world_size",
    "refuse_distributed",
]


def env_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(f"environment variable WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> tuple[torch.device | None, bool]:
    """Initialise the process group from torchrun's environment for a run on ``device`` (the config's).

    Returns ``(device, created)``: the device this process must use (``cuda:LOCAL_RANK`` under NCCL; ``None``
    when not distributed) and whether this call created the group (then :func:`teardown` destroys it).
    Raises :class:`InputError` for launches that cannot work (more processes per node than GPUs, MPS).
    """
    world = env_world_size()
    if world <= 1:
        return None, False
    dev = torch.device(device)
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if dev.type == "mps":
        raise InputError("distributed training (torchrun with WORLD_SIZE > 1) is not supported on device=mps")
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if local >= n:
            raise InputError(
                f"torchrun started local rank {local} but only {n} CUDA device(s) are present: "
                f"use --nproc_per_node {n} or fewer"
            )
        if dev.index is not None and dev.index != local:
            import logging

            logging.getLogger("ivfuse").warning(
                "device=%s ignored under torchrun: local rank %d uses cuda:%d", device, local, local
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if dist.is_initialized():
        if dist.get_world_size() != world:
            raise InputError(f"a process group of {dist.get_world_size()} processes exists but WORLD_SIZE={world}")
        return dev, False
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        if k not in os.environ:
            raise InputError(f"WORLD_SIZE={world} but {k} is not set: launch with torchrun (see docs/engine.md)")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = datetime.timedelta(minutes=30)
    store = _restart_store(world, timeout)
    kw = {"store": store, "rank": int(os.environ["RANK"]), "world_size": world} if store is not None else {}
    dist.init_process_group(backend, timeout=timeout, device_id=dev if dev.type == "cuda" else None, **kw)
    return dev, True


def _restart_store(world: int, timeout: datetime.timedelta) -> Any:
    """The store of the process group of a worker that torchrun may have restarted (``--max-restarts``), or ``None``
    (plain ``env://`` initialisation).

    torchrun's workers share the elastic agent's TCP store (``TORCHELASTIC_USE_AGENT_STORE=True``, the default of the
    c10d rendezvous) and it outlives a restart: the workers of the restarted group found the addresses the killed
    group had published under the same keys, and gloo's full-mesh connection waited for dead peers (found by
    ``tests/test_faults.py``, about 2 restarts in 3 hung until the 30-minute timeout; pytorch/pytorch#135712 is the
    same with NCCL). Each restart's keys get their own prefix here, ``TORCHELASTIC_RESTART_COUNT``. That count is
    kept by each node's agent, so it is only the same on every rank on a single node; on several nodes (where it can
    differ after a node loss) nothing is prefixed and docs/engine.md says to launch with
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: then every rendezvous round gets a new store.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "TORCHELASTIC_RESTART_COUNT" not in env:
        return None
    if env.get("LOCAL_WORLD_SIZE") != str(world):  # several nodes: the restart counts may differ between them
        return None
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous("env://", int(env["RANK"]), world, timeout=timeout))
    return dist.PrefixStore(f"ivfuse/restart{env['TORCHELASTIC_RESTART_COUNT']}", store)


def teardown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _mean_(tensors: list[torch.Tensor]) -> None:
    """Average ``tensors`` over the ranks in place: flattened into one buffer per dtype and device (one collective
    each). Every rank must pass tensors of the same shapes in the same order."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    w = dist.get_world_size()
    for ts in groups.values():
        flat = torch.cat([t.reshape(-1) for t in ts])
        dist.all_reduce(flat)
        flat.div_(w)
        i = 0
        for t in ts:
            n = t.numel()
            t.copy_(flat[i : i + n].view_as(t))
            i += n


def all_reduce_grads(params: Iterable[torch.Tensor]) -> None:
    """Average ``p.grad`` over the ranks. Parameters without a gradient are skipped (so an optimiser still skips
    them); which parameters have one must be the same on every rank — it is, since every rank runs the same code
    on the same graph. Gradients are flattened into one buffer per dtype and device (one collective each)."""
    if not is_distributed():
        return
    _mean_([p.grad for p in params if p.grad is not None])


def all_reduce_tensors(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The mean over the ranks of each of ``tensors`` (detached copies; one collective per dtype and device).

    For gradients computed outside an optimiser — e.g. the pieces of TIM's implicit hyper-gradient
    (:mod:`ivfuse.models.tim_search`: ∇F, Hessian-vector products, the mixed term). Not distributed: ``tensors``
    themselves are returned (same objects, so a single process computes exactly what it computed before)."""
    tensors = list(tensors)
    if not is_distributed():
        return tensors
    out = [t.detach().clone() for t in tensors]
    _mean_(out)
    return out


def all_reduce_buffers(modules: dict[str, nn.Module] | Iterable[nn.Module]) -> None:
    """Average the floating-point buffers of ``modules`` over the ranks (BatchNorm running statistics, which each
    rank updates from its own shard). The running mean is an exponential average, linear in the batch means, so its
    average over the ranks is the running mean of the global batches' means (what one process computes, up to float
    order); the averaged running variance misses the spread *between* the shards' means. Integer buffers
    (``num_batches_tracked``) are equal on every rank and left alone."""
    if not is_distributed():
        return
    mods = modules.values() if isinstance(modules, dict) else modules
    with torch.no_grad():
        _mean_([b for m in mods for b in m.buffers() if b.is_floating_point()])


def refuse_distributed(method: str, reason: str) -> None:
    """One-line :class:`InputError` when launched with ``WORLD_SIZE`` > 1: ``method`` cannot train data-parallel,
    because ``reason``. For :meth:`Recipe.check`, which runs before the process group exists."""
    w = env_world_size()
    if w > 1:
        raise InputError(f"{method} cannot train under torchrun (WORLD_SIZE={w}): {reason}")


def all_reduce_mean(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """The mean over the ranks of a dict of floats with the same keys on every rank (epoch metrics)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, (float(x) for x in t.cpu())))


def _comm_device(device: torch.device | str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_modules(modules: dict[str, nn.Module] | Iterable[nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every rank (same order everywhere: the modules' own)."""
    if not is_distributed():
        return
    mods = modules.values() if isinstance(modules, dict) else modules
    with torch.no_grad():
        for m in mods:
            for t in [*m.parameters(), *m.buffers()]:
                dist.broadcast(t.data, 0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; e.g. the checkpoint being resumed and the resume decision)."""
    if not is_distributed():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, 0)
    return box[0]

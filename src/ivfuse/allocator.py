"""The C allocator behind PyTorch's CPU tensors: keep freed memory for reuse instead of handing it back to the kernel.

PyTorch allocates its CPU tensors with ``malloc``. glibc serves every block above ``M_MMAP_THRESHOLD`` (128 KiB,
raised adaptively up to 32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` as soon as the tensor is
freed. A 640×480 map of 64 float32 channels is 79 MB, so at full resolution every layer of a fusion network maps new
memory, and the kernel zero-fills it page by page the first time it is written: ≈ 19,000 page faults per map,
every layer, every image. On the 2-core machine of ``docs/deployment.md`` that was about a third of the forward time
of TSJNet, MetaFusion and OCCO (1 thread, process CPU time).

:func:`tune` switches that off for the process (``mallopt(M_MMAP_MAX, 0)``: large blocks come from the heap too) and
lets the heap keep up to :data:`TRIM` bytes of freed memory at its top (``M_TRIM_THRESHOLD``). The next layer and the
next image then reuse the same pages. The price is memory: a heap cannot hand back a freed block from its middle, so
the peak of one forward pass is higher (+35 to +50 % for TSJNet, MetaFusion, OCCO and DIDFuse at 640×480; the memory
guard's table, :data:`ivfuse.tiling.PEAK_BYTES_PER_PIXEL`, covers both settings), and the process's resident memory
stays near that peak until it exits or calls :func:`release` (PyTorch's CUDA caching allocator does the same on the
GPU). The memory guard counts the retained free memory as available (:func:`retained`,
:func:`ivfuse.tiling.available_memory`).

``ivfuse`` calls :func:`tune` where it runs models: the command line, :class:`ivfuse.fusion.Runner` (every fusion
path of the API: ``fuse``, ``fuse_files``, ``fuse_folder``, :class:`ivfuse.Fuser`), training
(:func:`ivfuse.engine.recipe.train`) and ``ivfuse bench``. It does nothing:

* with ``IVFUSE_MALLOC=system`` in the environment (the allocator as the process found it);
* off Linux, or on a C library other than glibc (musl, macOS, Windows have their own allocators);
* when the user already chose: ``LD_PRELOAD`` names an allocator (jemalloc, tcmalloc, mimalloc) or glibc's malloc
  is configured through the environment (``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
  ``MALLOC_TOP_PAD_`` or a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``).

Standard library only (``ctypes``); imports nothing from ``ivfuse``.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

__all__ = ["tune", "tuned", "retained", "release", "TRIM", "ENV"]

#: environment variable: ``system`` leaves the C allocator as the process found it
ENV = "IVFUSE_MALLOC"
#: freed bytes the heap keeps at its top before it trims (``M_TRIM_THRESHOLD``): 1 GiB, the most an idle process
#: holds at its top; TSJNet's 640×480 working set (≈ 0.8 GB) stays whole, DIDFuse's (≈ 2 GB) gives back what lies above
TRIM = 2**30

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
_USER_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc", "hoard", "snmalloc")

_lock = threading.Lock()
_state: dict[str, object] = {"tuned": False, "libc": None}


class _Mallinfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no such symbol)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def _user_chose() -> str | None:
    """Why the allocator is the user's choice (``None``: it is not)."""
    if os.environ.get(ENV, "").strip().lower() == "system":
        return f"{ENV}=system"
    pre = os.environ.get("LD_PRELOAD", "").lower()
    if any(a in pre for a in _PRELOADED):
        return "LD_PRELOAD names an allocator"
    if any(v in os.environ for v in _USER_ENV) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "glibc's malloc is configured in the environment"
    return None


def tune(trim: int = TRIM) -> bool:
    """Keep freed memory in the heap (see the module docstring); ``True`` if the allocator is (now) tuned. Idempotent
    and thread-safe; does nothing (``False``) where the module docstring says so."""
    with _lock:
        if _state["tuned"]:
            return True
        if _user_chose() is not None:
            return False
        libc = _glibc()
        if libc is None:
            return False
        trim = max(0, min(int(trim), 2**31 - 1))  # mallopt takes an int
        if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, trim)):
            return False
        _state.update(tuned=True, libc=libc)
        return True


def tuned() -> bool:
    """Whether :func:`tune` changed the allocator of this process."""
    return bool(_state["tuned"])


def _free_bytes(libc: ctypes.CDLL) -> int | None:
    try:
        fn = libc.mallinfo2
    except AttributeError:  # glibc < 2.33
        return None
    fn.restype = _Mallinfo2
    return int(fn().fordblks)


def retained() -> int:
    """Bytes of freed memory the tuned heap holds for reuse (glibc's ``mallinfo2().fordblks``, less what
    :func:`release` gave back: glibc still lists those pages as free, but they are no longer resident); 0 when the
    allocator is not tuned or the C library cannot say (glibc < 2.33). An estimate on the safe side: memory reused
    and freed again after :func:`release` is not counted."""
    libc = _state["libc"]
    if not _state["tuned"] or libc is None:
        return 0
    free = _free_bytes(libc)
    return 0 if free is None else max(0, free - int(_state.get("released", 0)))


def release() -> None:
    """Give the freed memory the heap holds back to the kernel (``malloc_trim(0)``): for a long-running process that
    has fused a large image and goes idle. The allocator stays tuned."""
    libc = _state["libc"] or _glibc()
    if libc is not None:
        libc.malloc_trim(0)
        _state["released"] = _free_bytes(libc) or 0

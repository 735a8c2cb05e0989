"""Small shared helpers: atomic writes, shared-data location, checksummed downloads, the device and AMP checks."""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import tempfile
from pathlib import Path

from .errors import InputError, OutputError

__all__ = [
    "atomic_write_text",
    "atomic_write_bytes",
    "write_error",
    "shared_root",
    "sha256sum",
    "resolve_file",
    "check_device",
    "check_amp",
    "AMP_MODES",
    "DEFAULT_DEVICE",
    "NOTICE",
]

#: log level of the ``ivfuse`` logger's notices that change what a run does (resuming from a checkpoint, removing a
#: previous run): between INFO (progress: epoch lines) and WARNING, so that ``-q`` hides progress but not them
NOTICE = 25


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A killed process leaves either the old file or the new one, never a mix (at worst a hidden ``.<name>.*``
    temporary file). ``durable=True`` also ``fsync`` the file before the rename and the folder after it, so that
    the new file survives a power loss (checkpoints; the cost is one disk flush per write). A write that fails (full
    disk, file-size limit, no permission) removes its temporary file and raises a one-line
    :class:`~ivfuse.errors.OutputError` naming ``path`` (:func:`write_error`); the old file, if any, is untouched.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(p, e) from None
    fault = _fault(p) if _FAULT_ENV in os.environ else None
    if fault == "torn":  # the rename reached the disk but half of the data did not (a power loss without fsync)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data[: len(data) // 2])
        os.replace(tmp, p)
        _die()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    except OSError as e:
        raise write_error(p, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if fault == "kill":  # killed inside the write: half of the temporary file written
                f.write(data[: len(data) // 2])
                f.flush()
                _die()
            if fault == "enospc":  # the disk fills up inside the write: half of the temporary file written
                f.write(data[: len(data) // 2])
                f.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, p)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise write_error(p, e) from None
        raise
    if durable:
        _fsync_dir(p.parent)
    return p


#: errno values of a full disk: no space, quota exceeded, file-size limit (``RLIMIT_FSIZE``, ``ulimit -f``)
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def write_error(path: str | os.PathLike, e: OSError) -> OutputError:
    """The one-line :class:`~ivfuse.errors.OutputError` for a failed write of ``path``, e.g.
    ``out/p0.png: cannot be written (File too large: the disk is full or a file-size limit is reached); nothing
    half-written was left, free space and rerun``."""
    why = e.strerror or type(e).__name__
    if e.errno in DISK_FULL:
        why += (
            ": the disk is full or a file-size limit is reached); nothing half-written was left, free space and rerun"
        )
    else:
        why += ")"
    err = OutputError(f"{path}: cannot be written ({why}")
    err.errno, err.strerror, err.filename = e.errno, e.strerror, str(path)
    return err


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not fsync folders
        pass
    finally:
        os.close(fd)


#: fault injection for the tests (tests/test_faults.py, benchmarks/fault_injection.py), inactive unless set:
#: ``IVFUSE_FAULT_WRITE=<file name>:<n>:<kill|torn>`` SIGKILLs this process inside its n-th atomic write of a file of
#: that name (1-based; the name may be a glob, ``*.json``: the n-th write of any match): ``kill`` after half of the
#: temporary file is written, ``torn`` after a file with half of the data has been renamed over the destination (what a
#: power loss can leave when the rename reached the disk and the data did not). ``enospc`` does not kill: the write
#: fails with ``ENOSPC`` after half of the temporary file is written (a disk that fills up in the middle of a run;
#: ``RLIMIT_FSIZE`` can only stop every file above one size).
_FAULT_ENV = "IVFUSE_FAULT_WRITE"
_fault_counts: dict[str, int] = {}


def _fault(p: Path) -> str | None:
    try:
        name, n, mode = os.environ[_FAULT_ENV].rsplit(":", 2)
        n = int(n)
    except ValueError:
        return None
    if not fnmatch.fnmatchcase(p.name, name) or mode not in ("kill", "torn", "enospc"):
        return None
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    return mode if _fault_counts[name] == n else None


def _die() -> None:
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


#: torch device used when none is named (``check_device(None)``, every ``--device``)
DEFAULT_DEVICE = "cpu"


def check_device(device: str | None, option: str = "--device") -> str:
    """Validate a torch device string up front: a one-line :class:`InputError` instead of a traceback deep in a run.

    Accepts ``cpu``, ``cuda``, ``cuda:N`` (that GPU must exist) and ``mps`` (when available); ``gpu`` is refused with
    a "did you mean 'cuda'" hint. Returns the string unchanged.
    """
    import torch

    from .errors import UnknownNameError

    d = DEFAULT_DEVICE if device is None else str(device).strip()
    try:
        dev = torch.device(d)
    except (RuntimeError, ValueError):
        hint = " did you mean 'cuda'?" if d.lower().startswith("gpu") else ""
        raise UnknownNameError(
            f"{option} {d}: not a torch device (use cpu, cuda, cuda:N or mps);{hint}".rstrip(";")
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{option} {d}: no CUDA GPU is available (torch {torch.__version__}); use {option} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"{option} {d}: there are only {torch.cuda.device_count()} CUDA device(s) (cuda:0..)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"{option} {d}: the Apple MPS backend is not available here; use {option} cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"{option} {d}: device type '{dev.type}' is not supported by ivfuse (use cpu, cuda or mps)")
    return d


#: mixed-precision modes of ``ivfuse fuse --amp``, :class:`ivfuse.fusion.Runner` and the training config key ``amp``
AMP_MODES = ("none", "bf16", "fp16")


def check_amp(amp: str | None, device=None, option: str = "--amp") -> str:
    """The mixed-precision mode ``amp`` (one of :data:`AMP_MODES`; ``None`` = ``"none"``, fp32) if it can run on
    ``device``, else a one-line :class:`InputError`. The one AMP check: ``ivfuse fuse --amp`` and
    :class:`ivfuse.fusion.Runner` use it as it is, training (the config key) with ``option="amp="``, which is how the
    messages name the setting (``--amp fp16 ...`` / ``amp=fp16 ...``).

    bf16 runs on the CPU (autocast) and on CUDA GPUs that support it; fp16 needs CUDA (CPU fp16 kernels are slow or
    missing, and a loss-scaled CPU run gains nothing); other devices (MPS) run fp32 only.
    """
    import torch

    def say(mode: str) -> str:
        return f"{option}{mode}" if option.endswith("=") else f"{option} {mode}"

    mode = "none" if amp is None else str(amp)
    if mode not in AMP_MODES:
        name = f"config key '{option[:-1]}'" if option.endswith("=") else option
        raise InputError(f"{name} must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if mode == "none":
        return mode
    dev = torch.device("cpu" if device is None else device)
    if mode == "fp16" and dev.type != "cuda":
        raise InputError(
            f"{say('fp16')} needs a CUDA device, not '{dev}'; use {say('bf16')} (CPU autocast) or {say('none')}"
        )
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"{say(mode)}: mixed precision runs on cpu and cuda, not on '{dev}'; use {say('none')}")
    if mode == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(
            f"{say('bf16')}: the GPU {torch.cuda.get_device_name(dev)} does not support bfloat16; use {say('fp16')}"
        )
    return mode


def shared_root() -> Path:
    """Folder holding shared data and weights: ``$IVFUSE_SHARED`` or ``../shared`` beside the repo/cwd."""
    env = os.environ.get("IVFUSE_SHARED")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for base in [Path.cwd(), *here.parents]:
        cand = base.parent / "shared"
        if (cand / "data").is_dir() or (cand / "weights").is_dir():
            return cand
    return Path.cwd().parent / "shared"


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def resolve_file(
    local: str | os.PathLike | None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    filename: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Return a weights file: ``local`` if given (must exist), else a cached/downloaded copy of ``url``.

    Downloads go to ``$IVFUSE_CACHE`` (default ``~/.cache/ivfuse``) through a temporary file and are
    checked against ``sha256`` before being renamed into place. Offline, pass ``local``.
    """
    if local is not None:
        p = Path(local)
        if not p.is_file():
            raise InputError(f"{p}: weights file not found")
        return p
    if url is None:
        raise InputError("no weights file given and no download URL known; pass a local path")
    cache = Path(cache_dir or os.environ.get("IVFUSE_CACHE", Path.home() / ".cache" / "ivfuse"))
    dest = cache / (filename or url.rsplit("/", 1)[-1])
    if dest.is_file() and (sha256 is None or sha256sum(dest) == sha256):
        return dest
    import urllib.request

    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=cache)
    os.close(fd)
    try:
        try:
            urllib.request.urlretrieve(url, tmp)  # noqa: S310 - fixed https URLs from the weights table
        except OSError as e:
            raise InputError(f"{url}: download failed ({e}); download it yourself and pass the local path") from None
        if sha256 is not None and sha256sum(tmp) != sha256:
            raise InputError(f"{url}: checksum mismatch after download (expected sha256 {sha256[:12]}...)")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest

"""Checkpoint files (training runs and task models): model/optimizer states, config, progress and metrics in one file,
written atomically and read back with ``torch.load(weights_only=True)`` (plain tensors, numbers, strings, lists and
dicts only).

Integrity (``docs/reliability.md``): a checkpoint is a ``torch.save`` zip whose archive comment is
``ivfuse-sha256:<hex>``, the SHA-256 of the archive without it (torch itself checks no CRC of tensor data, so a
flipped byte would otherwise load as a silently different weight). It is written through a temporary file, fsynced
and renamed. With ``keep_previous`` (the trainer's ``last.pt``) the file it replaces is kept as ``last.prev.pt``
(a hard link, no copy; the trainer writes the state it starts from there, so that even a damaged first ``last.pt``
has one); :func:`load_checkpoint` of a damaged file (checksum mismatch, truncated, unreadable) falls back
to that previous checkpoint with a one-line warning on the ``ivfuse`` logger, and otherwise raises a one-line
:class:`~ivfuse.errors.InputError`. Files without the comment (written before it, or by other tools) load as before.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
from pathlib import Path
from typing import Any

import torch

from .errors import InputError
from .utils import atomic_write_bytes

__all__ = ["save_checkpoint", "load_checkpoint", "export_safetensors", "previous_of"]

log = logging.getLogger("ivfuse")
_TAG = b"ivfuse-sha256:"
_EOCD = b"PK\x05\x06"  # zip end-of-central-directory record: the last 22 bytes of an archive without comment


def previous_of(path: str | os.PathLike) -> Path:
    """``run/last.pt`` -> ``run/last.prev.pt``: where :func:`save_checkpoint` keeps the checkpoint it replaced."""
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


def _seal(data: bytes) -> bytes:
    """The archive with its SHA-256 as the zip comment (a valid zip: torch and zipfile read it unchanged)."""
    if len(data) < 22 or data[-22:-18] != _EOCD or data[-2:] != b"\0\0":
        return data  # not the layout torch.save writes: leave it unsealed
    comment = _TAG + hashlib.sha256(data).hexdigest().encode()
    return data[:-2] + struct.pack("<H", len(comment)) + comment


def _check_seal(data: bytes) -> str | None:
    """``None`` when the seal matches or there is none; else what is wrong."""
    n = len(_TAG) + 64
    if len(data) < n + 22 or data[-n:-64] != _TAG:
        return None if data[-n - 22 :].find(_TAG) < 0 else "truncated after its checksum"
    body = data[: -n - 2] + b"\0\0"
    if body[-22:-18] != _EOCD:
        return "damaged archive end"
    return None if hashlib.sha256(body).hexdigest().encode() == data[-64:] else "checksum mismatch"


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any], keep_previous: bool = False) -> Path:
    """Write ``payload`` atomically and durably, sealed with its SHA-256; ``keep_previous``: the file it replaces
    becomes :func:`previous_of` ``(path)``, the fallback of :func:`load_checkpoint`."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    p = Path(path)
    if keep_previous:
        prev = previous_of(p)
        if p.is_file():
            tmp = prev.with_name(f".{prev.name}.{os.getpid()}")
            try:
                tmp.unlink(missing_ok=True)
                os.link(p, tmp)  # the same inode: no copy; then renamed over the older previous one atomically
                os.replace(tmp, prev)
                tmp.unlink(missing_ok=True)  # rename(2) of two links to one file does nothing: drop the extra link
            except OSError:  # no hard links here (some network filesystems): a copy
                tmp.unlink(missing_ok=True)
                atomic_write_bytes(prev, p.read_bytes(), durable=True)
    return atomic_write_bytes(p, _seal(buf.getvalue()), durable=True)


def _load(p: Path) -> dict[str, Any]:
    data = p.read_bytes()
    why = _check_seal(data)
    if why is not None:
        raise InputError(f"{p}: damaged checkpoint ({why})")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(
            f"{p}: not a readable ivfuse checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
        ) from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint (checked against its seal); a damaged one is replaced by its previous one (see module)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: checkpoint not found")
    try:
        return _load(p)
    except InputError as e:
        prev = previous_of(p)
        if not prev.is_file():
            raise
        try:
            ck = _load(prev)
        except InputError:
            raise e from None
        log.warning("%s; using the previous checkpoint %s", e, prev)
        return ck


def export_safetensors(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Weights-only export (safetensors) with string metadata (e.g. the JSON config and metrics)."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)

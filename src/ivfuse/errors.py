"""Exceptions raised by ivfuse.

Every error a user can trigger with bad input is an :class:`IvfuseError` whose message is a single
line naming the offending file (or name) and what is wrong with it. The CLI prints that line and exits
with a non-zero status; Python callers can catch the specific subclasses.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "IvfuseError",
    "InputError",
    "PairingError",
    "UnknownNameError",
    "OutputError",
    "IvfuseWarning",
    "warn",
    "suggest",
]


class IvfuseError(Exception):
    """Base class for all user-facing ivfuse errors (one-line message)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class InputError(IvfuseError, ValueError):
    """A file or array given as input cannot be used (missing, corrupt, wrong shape, non-finite...)."""


class PairingError(IvfuseError, ValueError):
    """Infrared and visible inputs cannot be paired (unmatched names, different sizes)."""


class UnknownNameError(IvfuseError, KeyError):
    """An unknown method, metric, dataset or option name was requested."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class OutputError(IvfuseError, OSError):
    """An output file cannot be written (disk full, file-size limit, no permission); nothing half-written is left.

    Also an :class:`OSError` (``errno``, ``strerror`` and ``filename`` of the failed write), so code that catches
    write errors keeps working."""

    def __str__(self) -> str:  # OSError would otherwise print "[Errno N] ..." once errno is set
        return self.args[0]


class IvfuseWarning(UserWarning):
    """Input that is usable but probably not what was meant (e.g. label files without an image).

    The CLI prints it as one line ``ivfuse: warning: ...``."""


def warn(message: str) -> None:
    """Emit an :class:`IvfuseWarning` (one line) attributed to the caller's caller."""
    import warnings

    warnings.warn(IvfuseWarning(" ".join(str(message).split())), stacklevel=3)


def suggest(name: str, choices: Iterable[str], what: str) -> UnknownNameError:
    """Build an :class:`UnknownNameError` for ``name`` with a "did you mean" hint.

    >>> str(suggest("qabff", ["qabf", "nabf"], "metric"))
    "unknown metric 'qabff'; did you mean 'qabf'? (available: nabf, qabf)"
    """
    choices = sorted(choices)
    close = difflib.get_close_matches(name.lower(), choices, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UnknownNameError(f"unknown {what} '{name}'{hint} (available: {', '.join(choices)})")

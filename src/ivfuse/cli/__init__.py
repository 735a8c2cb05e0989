"""``ivfuse`` command line: ``ivfuse MODE [options]``, one module per mode in this package.

Modes (``ivfuse --help``; :data:`MODES`): ``fuse``, ``export``, ``eval``, ``list``, ``downstream``, ``detect``,
``train``, ``segment``, ``bench``, ``masks``. Each mode's module has ``HELP`` (its line in ``ivfuse --help``),
``add_arguments`` (its options) and ``run`` (the command). The options' defaults and choices are read from the API
the mode calls (a function's signature or a module constant), never restated here, and every mode's ``--help`` shows
each option's default. Shared here: the parser, the ``--device``/``--opt``/``-q``/``-v`` options, the one device
check, logging.

Method options have one form on every mode that builds a fusion method (``fuse``, ``export``, ``train``, ``bench``):
``--opt KEY=VALUE``, repeatable (:func:`parse_options`). ``train`` also takes them as bare ``KEY=VALUE`` items, and
``bench`` per method as ``NAME?KEY=VALUE`` inside ``--methods``.

Every user error prints one line ``ivfuse: error: ...`` naming the file or name at fault, and exits with status 2
without leaving partial output behind.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import IvfuseError

__all__ = ["MODES", "main", "build_parser", "parse_options", "api_default", "add_device", "add_opt", "add_quiet"]

#: the modes, in the order ``ivfuse --help`` lists them -> their modules ``ivfuse.cli.<module>`` (``eval`` and
#: ``list`` are not module names here: a submodule becomes an attribute of this package and would hide the builtin)
MODES = {
    "fuse": "fuse",
    "export": "export",
    "eval": "evaluate",
    "list": "listing",
    "downstream": "downstream",
    "detect": "detect",
    "train": "train",
    "segment": "segment",
    "bench": "bench",
    "masks": "masks",
}


class _Parser(argparse.ArgumentParser):
    """argparse with "did you mean" hints for mistyped modes and options."""

    def error(self, message: str):  # type: ignore[override]
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'?([\w.-]+)'?", m.group(2))
            close = difflib.get_close_matches(m.group(1), choices, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        m = re.search(r"unrecognized arguments: (\S+)", message)
        if m:
            opts = [o for a in self._actions for o in a.option_strings]
            for a in self._actions:  # options of the modes, for errors raised by the top-level parser
                if isinstance(a, argparse._SubParsersAction):
                    opts += [o for sp in a.choices.values() for b in sp._actions for o in b.option_strings]
            close = difflib.get_close_matches(m.group(1).split("=")[0], opts, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Help(argparse.HelpFormatter):
    """Each option's help ends with ``(default: X)`` when it has a default (not ``None``, not a flag's ``False``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def api_default(fn: Callable, name: str) -> Any:
    """Default of the parameter ``name`` of ``fn`` (its signature): where the CLI's defaults come from."""
    return inspect.signature(fn).parameters[name].default


def add_device(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device``, checked once, by :func:`main`, before the mode runs (:func:`ivfuse.utils.check_device`).
    ``default``: the API's (a signature's) where the mode calls a function that has one, else
    :data:`ivfuse.utils.DEFAULT_DEVICE`."""
    from ..utils import DEFAULT_DEVICE

    p.add_argument("--device", default=default or DEFAULT_DEVICE, help="torch device (cpu, cuda, cuda:1, mps)")


def add_opt(p: argparse.ArgumentParser, what: str = "method option", example: str = "levels=5") -> None:
    """``--opt KEY=VALUE``, repeatable: the one form of method options (:func:`parse_options`)."""
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help=f"{what}, repeatable (e.g. --opt {example})")


_QUIET, _VERBOSE = ("-q", "--quiet"), ("-v", "--verbose")


def add_quiet(p: argparse.ArgumentParser) -> None:
    """``-q`` (no progress bars; only notices and warnings) and ``-v`` (debug messages too): on every mode."""
    p.add_argument(*_QUIET, action="store_true", help="no progress bars; only notices (resume) and warnings")
    p.add_argument(*_VERBOSE, action="store_true", help="also debug messages (e.g. tiling)")


def parse_options(items: Sequence[str] | None) -> dict:
    """``["levels=5", "eps1=0.3", "name=x"]`` -> ``{"levels": 5, "eps1": 0.3, "name": "x"}`` (the one ``key=value``
    parser of :mod:`ivfuse.config`, shared with ``ivfuse train``; ``-`` in keys becomes ``_``)."""
    from ..config import parse_items

    return {k.replace("-", "_"): v for k, v in parse_items(items).items()}


def _mode(name: str):
    return importlib.import_module(f"{__name__}.{MODES[name]}")


def build_parser(modes: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``ivfuse`` parser. ``modes``: the modes whose options are added (default: all); the others are listed
    with their one-line help only. :func:`main` adds only the mode it runs, so that ``ivfuse --help`` and a mode's
    ``--help`` import no more of the package (and torch) than that mode's defaults need."""
    from .. import __version__

    p = _Parser(prog="ivfuse", description="Task-driven infrared-visible image fusion.")
    p.add_argument("--version", action="version", version=f"ivfuse {__version__}")
    sub = p.add_subparsers(dest="command", metavar="MODE", parser_class=_Parser, required=True)
    for name in MODES:
        mod = _mode(name)
        sp = sub.add_parser(name, help=mod.HELP, description=mod.HELP, formatter_class=_Help)
        if modes is None or name in modes:
            mod.add_arguments(sp)
            add_quiet(sp)
        sp.set_defaults(run=mod.run)
    return p


class _OneLine(logging.Formatter):
    """``ivfuse: message`` / ``ivfuse: warning: message``: the errors' one-line style for the package's log records."""

    def format(self, record: logging.LogRecord) -> str:
        tag = "" if logging.INFO <= record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"ivfuse: {tag}{record.getMessage()}"


class _TqdmHandler(logging.StreamHandler):
    """Writes through ``tqdm.write`` so that a record does not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise
            self.handleError(record)


def _setup_logging(args: argparse.Namespace) -> None:
    """The CLI's handler on the ``ivfuse`` logger: INFO by default, notices (resume) and warnings with ``-q``
    (:data:`ivfuse.utils.NOTICE`), DEBUG with ``-v``."""
    from ..utils import NOTICE

    items = getattr(args, "items", None) or []
    quiet = getattr(args, "quiet", False) or any(x in _QUIET for x in items)
    verbose = getattr(args, "verbose", False) or any(x in _VERBOSE for x in items)
    log = logging.getLogger("ivfuse")
    for h in [h for h in log.handlers if isinstance(h, _TqdmHandler)]:  # main() called again (tests, notebooks)
        log.removeHandler(h)
    h = _TqdmHandler()
    h.setFormatter(_OneLine())
    log.addHandler(h)
    log.setLevel(logging.DEBUG if verbose else NOTICE if quiet else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    with warnings.catch_warnings():
        default_show = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            from ..errors import IvfuseWarning

            if issubclass(category, IvfuseWarning):  # input warnings: one line, like the errors
                print(f"ivfuse: warning: {message}", file=file or sys.stderr)
            else:
                default_show(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    mode = next((a for a in argv if not a.startswith("-")), None)  # the top level has flags only
    args = build_parser([mode] if mode in MODES else []).parse_args(argv)
    _setup_logging(args)
    from ..allocator import tune

    tune()  # every mode runs models or metrics on full-resolution images (ivfuse.allocator)
    try:
        if getattr(args, "device", None) is not None:  # the one device check of every mode with --device
            from ..utils import check_device

            check_device(args.device)
        return args.run(args)
    except IvfuseError as e:
        print(f"ivfuse: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk met by a write that does not go through ivfuse.utils.atomic_write_bytes
        from ..utils import DISK_FULL, write_error

        if e.errno not in DISK_FULL:
            raise
        print(f"ivfuse: error: {write_error(e.filename or 'a file', e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("ivfuse: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return 130

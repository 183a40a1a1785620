"""The ``hil`` command line: a thin shell over the toolkit's Python API.

Each subcommand lives in its own module under :mod:`hil.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the parsed
arguments and returning an exit status. Heavy imports happen inside those callables, so ``hil --help``
stays fast.

Exit status: 0 on success, 2 for a toolkit error or a file that cannot be read or written (one line on
stderr, no traceback), ``128 + signal`` when interrupted (130 for Ctrl-C, 143 for SIGTERM while a
bench is open).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from onn_core.errors import HilError
from onn_core.progress import set_progress

COMMAND_MODULES = ("hil.commands.devices", "hil.commands.train", "hil.commands.capture", "hil.commands.estimate",
                   "hil.commands.calibrate", "hil.commands.run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hil", description="Hardware-in-the-loop toolkit for hybrid optical neural networks.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="force progress bars on or off (default: only when stderr is a terminal; env ONN_PROGRESS=1/0)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    set_progress(args.progress)  # onn_core.progress: the one console rule
    try:
        return int(args.func(args) or 0)
    except HilError as exc:
        print(f"hil {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # files and folders: permissions, a file where a folder should be, a full disk
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"hil {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM while a bench is open (drivers.bench.Terminated)
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"hil {args.command}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum


def calibrate_main() -> int:
    """The ``hil-calibrate`` console script: ``hil calibrate`` under its own name."""
    return main(["calibrate", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())

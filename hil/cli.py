"""The ``hil`` command line: a thin shell over the toolkit's Python API.

Each subcommand lives in its own module under :mod:`hil.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the parsed
arguments and returning an exit status. Heavy imports happen inside those callables, so ``hil --help``
stays fast.

Exit status, the same for every subcommand (:func:`main` is the one place that decides it):

* 0 on success;
* 2 for a toolkit error or a file that cannot be read or written (a full disk included, whether
  the OS or HDF5 reports it): one line on stderr, no traceback. After HDF5 failed to write a file
  the process ends at once (``os._exit``) instead of letting HDF5 try again at exit, which can crash
  (exit 139); such a file is left as a killed writer would leave it, and the next run recovers it;
* ``128 + signal`` when interrupted: 130 for Ctrl-C (SIGINT), 143 for SIGTERM, with one line on
  stderr. Both signals are raised as ``KeyboardInterrupt`` wherever the command is, so every open
  bench blanks its display and closes its devices, and files are closed consistent, on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading

from onn_core.errors import HilError
from onn_core.progress import set_progress

COMMAND_MODULES = ("hil.commands.devices", "hil.commands.train", "hil.commands.capture", "hil.commands.estimate",
                   "hil.commands.calibrate", "hil.commands.run", "hil.commands.locate", "hil.commands.timing", "hil.commands.live")
#: Exit status of a toolkit error or a file error.
ERROR_EXIT = 2


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
        with interrupts_raise():
            return int(args.func(args) or 0)
    except HilError as exc:
        return _fail(args.command, str(exc))
    except OSError as exc:  # files and folders: permissions, a file where a folder should be, a full disk
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(args.command, f"{exc.strerror or exc}{where}", hdf5=_raised_by_h5py(exc))
    except RuntimeError as exc:  # h5py reports some write failures (a full disk on flush/close) so
        if not _raised_by_h5py(exc):
            raise
        return _fail(args.command, f"HDF5 file error: {exc}", hdf5=True)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM (interrupts_raise), a training run stopped by either
        signum = int(getattr(exc, "signum", signal.SIGINT))
        print(f"hil {args.command}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum


@contextlib.contextmanager
def interrupts_raise():
    """Inside the block, SIGINT raises ``KeyboardInterrupt`` (even where the shell that started the
    command ignores it, as for a background job) and SIGTERM raises :class:`drivers.bench.Terminated`
    (a ``KeyboardInterrupt`` carrying ``signum``); main thread only."""
    from drivers.bench import Terminated

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated(signum)

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                signal.SIGTERM: signal.signal(signal.SIGTERM, terminate)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _fail(command: str, message: str, *, hdf5: bool = False) -> int:
    """One error line on stderr; returns :data:`ERROR_EXIT`, or ends the process with it at once after
    an HDF5 write failure (``hdf5``, or a captures file left open by one: module docstring)."""
    from hil.data.capture_writer import files_left_open

    print(f"hil {command}: error: {message.splitlines()[0] if message else message}", file=sys.stderr)
    if hdf5 or files_left_open():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ERROR_EXIT)
    return ERROR_EXIT


def _raised_by_h5py(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if "h5py" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def calibrate_main() -> int:
    """The ``hil-calibrate`` console script: ``hil calibrate`` under its own name."""
    return main(["calibrate", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())

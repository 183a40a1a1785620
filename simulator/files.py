"""Crash-safe writes of small artifacts (configs, calibrations, checkpoints).

:func:`atomic_write` writes to a temporary file in the destination folder, flushes it to disk and
renames it over the destination, so a reader sees either the old file or the complete new one, never
a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Context manager yielding an open temporary file that replaces ``path`` on a clean exit.

    On an exception the temporary file is removed and ``path`` is left untouched. ``mode`` is ``"wb"``
    or ``"w"`` (text, UTF-8). The new file gets the permissions a plain ``open`` would give it
    (``0o666`` less the umask), not ``mkstemp``'s owner-only ``0o600``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask

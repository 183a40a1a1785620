"""Crash-safe writes of small artifacts (configs, calibrations, checkpoints).

:func:`atomic_write` writes to a temporary file in the destination folder, flushes it to disk and
renames it over the destination, so a reader sees either the old file or the complete new one, never
a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
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
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise



def resolve_relative(path, base_dir) -> Path:
    """``path`` (``~`` expanded) taken relative to ``base_dir`` unless it is absolute: how every config
    file of the toolkit resolves the paths it names (relative to the file's own folder)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, uniquely named file next to ``path``, opened for writing. Created with mode 0o666 so the
    operating system applies the umask, as for a plain ``open`` (``mkstemp`` would give 0o600)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue

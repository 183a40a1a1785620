"""Open an HDF5 file for reading in whatever state its writer left it, at once and without hanging.

HDF5's single-writer/multiple-reader (SWMR) reading skips the end-of-file check: a truncated file
then makes reads block for minutes (retrying, deaf to Ctrl-C) or return zeros for the lost bytes. A
file its writer never closed (killed, or still being written) carries "open for write" flags in its
superblock, which a plain (non-SWMR) open refuses. :func:`open_for_reading` therefore reads the
superblock first (:func:`file_state`):

* a closed, whole file is opened plainly (the normal, fast path);
* otherwise it is opened through a read-only view (:class:`GuardedView`) that clears those flags in
  the superblock it serves (and fixes its end of file and checksum, as ``h5clear -s --increment``
  does on disk) and raises
  ``OSError`` on any read past the real end of the file, so a lost byte fails at once instead of
  blocking or reading as zero.

Only superblock versions 2 and 3 (files written with ``libver="latest"``, as every captures file of
this toolkit) carry the flags this module reads; older files are opened plainly.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Superblock v2/3 with 8-byte addresses: version at byte 8, consistency flags at 11, end-of-file
#: address at 28..35, Jenkins lookup3 checksum of bytes 0..43 at 44..47.
_FLAGS_AT, _EOF_AT, _CHECKSUM_AT = 11, 28, 44
_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class FileState:
    """What an HDF5 file's superblock says about how its writer left it.

    Attributes
    ----------
    size : int
        Bytes on disk.
    stored_eof : int
        End of file (bytes) the superblock records (0 where unknown); a writer in SWMR mode leaves
        the value of when it started.
    left_open : bool
        Its writer did not close it (killed, or still writing).
    """

    size: int
    stored_eof: int
    left_open: bool

    @property
    def truncated(self) -> bool:
        """The file is shorter than its superblock says (a closed file lost its end)."""
        return self.stored_eof > self.size

    @property
    def healthy(self) -> bool:
        return not (self.left_open or self.truncated)


def file_state(path) -> FileState:
    """Read the superblock of ``path`` (module docstring); raises ``OSError`` if it is no HDF5 file."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(_CHECKSUM_AT + 4)
    size = path.stat().st_size
    if not head.startswith(SIGNATURE):
        raise OSError(f"{path} is not an HDF5 file (no HDF5 signature at its start)")
    if len(head) < _CHECKSUM_AT + 4 or head[8] not in (2, 3) or head[9] != 8:
        return FileState(size, 0, False)
    return FileState(size, int.from_bytes(head[_EOF_AT:_EOF_AT + 8], "little"), head[_FLAGS_AT] != 0)


def open_for_reading(path):
    """``(h5py.File opened read-only, FileState)``: plainly for a closed, whole file, else through a
    :class:`GuardedView` (module docstring)."""
    import h5py

    state = file_state(path)
    if state.healthy:
        return h5py.File(path, "r"), state
    view = GuardedView(path, state)
    try:
        handle = h5py.File(view, "r")
    except BaseException:
        view.close()
        raise
    return handle, state


class GuardedView(io.RawIOBase):
    """A read-only view of an HDF5 file: the superblock with cleared consistency flags and an end of
    file no earlier than the real one (a SWMR writer leaves the one of when it started), a size of at
    least the recorded end of file, and ``OSError`` on any read of bytes the file does not hold."""

    def __init__(self, path, state: FileState):
        super().__init__()
        self.path, self.state = Path(path), state
        self._fd = os.open(self.path, os.O_RDONLY)
        self._position = 0
        head = bytearray(os.pread(self._fd, _CHECKSUM_AT + 4, 0))
        if len(head) == _CHECKSUM_AT + 4 and head[8] in (2, 3):
            head[_FLAGS_AT] = 0
            head[_EOF_AT:_EOF_AT + 8] = max(state.size, state.stored_eof).to_bytes(8, "little")
            head[_CHECKSUM_AT:] = lookup3(bytes(head[:_CHECKSUM_AT])).to_bytes(4, "little")
        self._head = bytes(head)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: max(self.state.size, self.state.stored_eof)}
        self._position = base[whence] + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer) -> int:
        start, n = self._position, len(buffer)
        if start + n > self.state.size:
            raise OSError(f"{self.path}: bytes {start}..{start + n} are past the end of the file "
                          f"({self.state.size} bytes): the file is truncated")
        data = os.pread(self._fd, n, start)
        if start < len(self._head):
            patched = self._head[start:start + n]
            data = patched + data[len(patched):]
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` of ``data``: the checksum HDF5 puts on its metadata."""
    def rot(x, k):
        return ((x << k) | (x >> (32 - k))) & _MASK

    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _MASK
    words = data + bytes(-length % 12)  # zero padding: the tail switch of lookup3 adds only real bytes
    i = 0
    while length - i > 12:
        a = (a + int.from_bytes(words[i:i + 4], "little")) & _MASK
        b = (b + int.from_bytes(words[i + 4:i + 8], "little")) & _MASK
        c = (c + int.from_bytes(words[i + 8:i + 12], "little")) & _MASK
        for x, y, z, k in ((0, 2, 1, 4), (1, 0, 2, 6), (2, 1, 0, 8), (0, 2, 1, 16), (1, 0, 2, 19), (2, 1, 0, 4)):
            v = [a, b, c]
            v[x] = ((v[x] - v[y]) & _MASK) ^ rot(v[y], k)
            v[y] = (v[y] + v[z]) & _MASK
            a, b, c = v
        i += 12
    if length == i:
        return c
    a = (a + int.from_bytes(words[i:i + 4], "little")) & _MASK
    b = (b + int.from_bytes(words[i + 4:i + 8], "little")) & _MASK
    c = (c + int.from_bytes(words[i + 8:i + 12], "little")) & _MASK
    for x, y, k in ((2, 1, 14), (0, 2, 11), (1, 0, 25), (2, 1, 16), (0, 2, 4), (1, 0, 14), (2, 1, 24)):
        v = [a, b, c]
        v[x] = ((v[x] ^ v[y]) - rot(v[y], k)) & _MASK
        a, b, c = v
    return c


__all__ = ["FileState", "GuardedView", "file_state", "lookup3", "open_for_reading"]

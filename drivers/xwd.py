"""Reader for X Window Dump (XWD) images, to read a screen back and check what a display shows.

XWD is what ``xwd`` writes and what ``Xvfb -fbdir DIR`` keeps as its live framebuffer
(``DIR/Xvfb_screen0``). The file is a header of 25 big-endian 32-bit fields (``XWDFileHeader``, file
version 7), the window name (the rest of the ``header_size`` bytes), ``ncolors`` 12-byte colour
entries and the pixels, ``bytes_per_line`` per row. This reader handles what true-colour X servers
produce: ZPixmap, 24 or 32 bits per pixel, 8 bits per channel, either byte order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["XwdHeader", "read_xwd", "parse_xwd"]

_FIELDS = (
    "header_size", "file_version", "pixmap_format", "pixmap_depth", "pixmap_width", "pixmap_height",
    "xoffset", "byte_order", "bitmap_unit", "bitmap_bit_order", "bitmap_pad", "bits_per_pixel",
    "bytes_per_line", "visual_class", "red_mask", "green_mask", "blue_mask", "bits_per_rgb",
    "colormap_entries", "ncolors", "window_width", "window_height", "window_x", "window_y",
    "window_border_width",
)
_HEADER_BYTES = 4 * len(_FIELDS)
_ZPIXMAP = 2
_TRUE_COLOR, _DIRECT_COLOR = 4, 5
_COLOR_ENTRY_BYTES = 12


@dataclass(frozen=True)
class XwdHeader:
    """The fields of an XWD file header (see ``X11/XWDFile.h``); names as there."""

    header_size: int
    file_version: int
    pixmap_format: int
    pixmap_depth: int
    pixmap_width: int
    pixmap_height: int
    xoffset: int
    byte_order: int
    bitmap_unit: int
    bitmap_bit_order: int
    bitmap_pad: int
    bits_per_pixel: int
    bytes_per_line: int
    visual_class: int
    red_mask: int
    green_mask: int
    blue_mask: int
    bits_per_rgb: int
    colormap_entries: int
    ncolors: int
    window_width: int
    window_height: int
    window_x: int
    window_y: int
    window_border_width: int


def _channel(pixels: np.ndarray, mask: int, what: str) -> np.ndarray:
    shift = (mask & -mask).bit_length() - 1
    if mask >> shift != 0xFF:
        raise InputError(f"XWD {what} mask {mask:#x} is not 8 contiguous bits (only 8-bit channels are read)")
    return ((pixels >> np.uint32(shift)) & np.uint32(0xFF)).astype(np.uint8)


def parse_xwd(data: bytes) -> tuple[XwdHeader, np.ndarray]:
    """Decode XWD bytes into its header and an RGB image.

    Returns
    -------
    header : XwdHeader
    rgb : np.ndarray
        uint8 (rows, cols, 3) in R, G, B order.

    Raises
    ------
    InputError
        Truncated data, or a format other than true-colour ZPixmap at 24/32 bits per pixel.
    """
    if len(data) < _HEADER_BYTES:
        raise InputError(f"XWD data too short for a header: {len(data)} bytes < {_HEADER_BYTES}")
    header = XwdHeader(*struct.unpack(">25I", data[:_HEADER_BYTES]))
    if header.file_version != 7:
        raise InputError(f"XWD file version {header.file_version} is not supported (expected 7)")
    if header.pixmap_format != _ZPIXMAP or header.visual_class not in (_TRUE_COLOR, _DIRECT_COLOR):
        raise InputError(f"only true-colour ZPixmap XWD images are read, got format {header.pixmap_format} "
                         f"visual class {header.visual_class}")
    bpp = header.bits_per_pixel
    if bpp not in (24, 32):
        raise InputError(f"XWD bits_per_pixel {bpp} is not supported (expected 24 or 32)")
    rows, cols, stride = header.pixmap_height, header.pixmap_width, header.bytes_per_line
    start = header.header_size + _COLOR_ENTRY_BYTES * header.ncolors
    if stride < cols * bpp // 8 or len(data) < start + rows * stride:
        raise InputError(f"XWD data truncated or inconsistent: {len(data)} bytes for {rows}x{cols} pixels, "
                         f"{stride} bytes per line, pixels from byte {start}")
    nbytes = bpp // 8
    raw = np.frombuffer(data, np.uint8, count=rows * stride, offset=start).reshape(rows, stride)
    raw = raw[:, : cols * nbytes].reshape(rows, cols, nbytes).astype(np.uint32)
    order = range(nbytes) if header.byte_order == 0 else range(nbytes - 1, -1, -1)  # 0 = LSB first
    pixels = np.zeros((rows, cols), np.uint32)
    for significance, byte in enumerate(order):
        pixels |= raw[..., byte] << np.uint32(8 * significance)
    rgb = np.stack([_channel(pixels, header.red_mask, "red"), _channel(pixels, header.green_mask, "green"),
                    _channel(pixels, header.blue_mask, "blue")], axis=-1)
    return header, rgb


def read_xwd(path) -> np.ndarray:
    """RGB uint8 image (rows, cols, 3) of an XWD file (e.g. an ``Xvfb -fbdir`` framebuffer)."""
    return parse_xwd(Path(path).read_bytes())[1]

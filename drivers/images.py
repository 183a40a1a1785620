"""Image files on the device side: reading an image to show, writing a camera frame with its metadata.

:func:`read_image` is the toolkit's one image reader (SLM images for ``hil show``/``hil snap``, dataset
images and masks). :func:`write_frame` writes a camera frame losslessly -- ``.png`` or ``.tif`` for 8/16-bit
integer frames, ``.npy`` for any frame, exactly -- together with a JSON sidecar ``NAME.EXT.json``
(``frame.png`` -> ``frame.png.json``, so frames of one stem in several formats keep their own). Other
formats (JPEG, BMP, ...) are refused: they would lose bits or precision silently. The frame and its
sidecar are written as a pair: both to temporary files first, then renamed (sidecar first), so a
failure leaves neither, and a reader never finds a frame without its sidecar.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from onn_core.errors import InputError
from onn_core.files import atomic_write

__all__ = ["FRAME_FORMATS", "READ_MODES", "check_frame_path", "read_image", "sidecar_path", "write_frame"]

#: Frame file suffixes -> integer dtypes they hold without loss (None: any array, ``.npy``).
FRAME_FORMATS = {".png": ("uint8", "uint16"), ".tif": ("uint8", "uint16"), ".tiff": ("uint8", "uint16"), ".npy": None}
#: Modes of :func:`read_image`.
READ_MODES = ("unchanged", "gray", "rgb")


def read_image(path, mode: str = "unchanged") -> np.ndarray:
    """An image file as a numpy array, in the file's own integer type (8 or 16 bits).

    Parameters
    ----------
    path : str or Path
        ``.npy`` (read as stored, no pickles; mode ``"unchanged"`` only) or any format OpenCV reads;
        GIF files (which ``cv2.imread`` does not decode) are read as their first frame.
    mode : {"unchanged", "gray", "rgb"}
        ``"unchanged"``: as stored, (rows, cols) gray, (rows, cols, 3) RGB or (rows, cols, 4) RGBA;
        ``"gray"``: (rows, cols), colour converted with ITU-R 601 weights; ``"rgb"``: (rows, cols, 3).

    Raises
    ------
    InputError
        The file is missing or unreadable, or ``mode`` does not apply.
    """
    if mode not in READ_MODES:
        raise InputError(f"mode must be one of {READ_MODES}, got {mode!r}")
    path = Path(path)
    if path.suffix.lower() == ".npy":
        if mode != "unchanged":
            raise InputError(f"cannot read image {path} as {mode}: .npy files are read as stored")
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read image {path}: {exc}") from exc
    import cv2

    flag = {"unchanged": cv2.IMREAD_UNCHANGED, "gray": cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH,
            "rgb": cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH}[mode]
    image = cv2.imread(str(path), flag)
    if image is None and path.suffix.lower() == ".gif" and path.is_file():
        capture = cv2.VideoCapture(str(path))
        ok, frame = capture.read()
        capture.release()
        if ok:
            image = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if mode == "gray" else frame
    if image is None:
        raise InputError(f"cannot read image {path} (missing, or not a format OpenCV reads)")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image


def sidecar_path(path) -> Path:
    """The JSON sidecar of frame file ``path``: ``NAME.EXT.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def check_frame_path(path) -> Path:
    """Refuse a frame file name whose format is not lossless (see :data:`FRAME_FORMATS`); return it as a Path."""
    path = Path(path)
    if path.suffix.lower() not in FRAME_FORMATS:
        raise InputError(f"{path}: frames are written as .png or .tif (8/16-bit integers, lossless) or .npy "
                         f"(any frame, exactly); {path.suffix or 'a name without extension'} is refused "
                         "(lossy, too narrow or unknown)")
    return path


def write_frame(path, image: np.ndarray, metadata: dict) -> Path:
    """Write a camera frame and its metadata (JSON, non-JSON values as strings) as one atomic pair.

    Parameters
    ----------
    path : str or Path
        Frame file (see :data:`FRAME_FORMATS`); missing folders are created.
    image : np.ndarray
        (rows, cols) or (rows, cols, 3|4) RGB(A) frame.
    metadata : dict
        Written to :func:`sidecar_path` of ``path``.

    Returns
    -------
    Path
        The sidecar's path.

    Raises
    ------
    InputError
        Refused format or dtype, or the files cannot be written (the message names the path and the
        reason; nothing is left behind).
    """
    path = check_frame_path(path)
    data = _encode(path, np.asarray(image))
    try:
        text = json.dumps(metadata, indent=2, default=str) + "\n"
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: its metadata cannot be written as JSON: {exc}") from exc
    sidecar = sidecar_path(path)
    sidecar_renamed = False
    try:
        with atomic_write(path, "wb") as frame_file:
            frame_file.write(data)
            with atomic_write(sidecar, "w") as sidecar_file:
                sidecar_file.write(text)
            sidecar_renamed = True
    except OSError as exc:
        if sidecar_renamed:  # the frame failed after its sidecar was renamed: take the sidecar back
            with contextlib.suppress(OSError):
                sidecar.unlink()
        raise InputError(f"cannot write {path}: {exc.strerror or exc}"
                         + (f" ({exc.filename})" if exc.filename else "")) from exc
    return sidecar


def _encode(path: Path, image: np.ndarray) -> bytes:
    """The bytes of ``path``'s format holding ``image`` exactly."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, image, allow_pickle=False)
        return buffer.getvalue()
    import cv2

    if image.dtype.name not in FRAME_FORMATS[suffix]:
        raise InputError(f"{path}: {suffix} files hold 8/16-bit integer frames, got {image.dtype}; use .npy")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise InputError(f"{path}: {suffix} files hold gray, RGB or RGBA frames, got shape {image.shape}; use .npy")
    if image.ndim == 3:  # frames are RGB(A); OpenCV writes BGR(A)
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(suffix, image)
    if not ok:
        raise InputError(f"{path}: OpenCV cannot encode a {image.dtype} {image.shape} frame as {suffix}")
    return encoded.tobytes()

"""The errors raised when data is missing, malformed, damaged or cannot be written."""

from onn_core.errors import HilError


class DatasetError(HilError):
    """Data is missing, unreadable or malformed; the message names the file and how to fix it."""


class CaptureFileError(DatasetError):
    """A captures file cannot be used or continued: foreign, for other samples, of another design or
    calibration, truncated or damaged. The file is left untouched."""


class TruncatedCaptureError(CaptureFileError):
    """A captures file lost its end (``kill -9`` during a copy, a full disk, a cut transfer).

    Attributes
    ----------
    path : Path
    count : int or None
        Complete rows the file claims (None: unreadable).
    intact_rows : int
        Leading rows whose bytes are all still in the file (what a recovery keeps).
    """

    def __init__(self, path, count: int | None, intact_rows: int, detail: str):
        self.path, self.count, self.intact_rows = path, count, int(intact_rows)
        what = (f"{intact_rows} of its {count} complete rows are intact; running the capture again recovers them "
                "and captures the rest" if intact_rows else
                f"none of its {'' if count is None else f'{count} '}complete rows can be read back: move it away "
                "and capture again")
        super().__init__(f"{path} is truncated or was left half-written ({detail}): {what}")


class CorruptFrameError(CaptureFileError):
    """A row of a captures file fails its checksum (its bytes changed after it was written).

    Attributes
    ----------
    path : Path
    row : int
        The row (frame index in the file) that failed.
    dataset : str
        The dataset it failed in (``frames``, ``labels``, ...).
    """

    def __init__(self, path, row: int, dataset: str, detail: str):
        self.path, self.row, self.dataset = path, int(row), dataset
        super().__init__(f"{path}: frame {row} is corrupt (dataset {dataset!r} fails its checksum: {detail}); "
                         "recapture it (hil capture --recapture-corrupt, or capture(..., recapture_corrupt=True))")


class CaptureWriteError(HilError):
    """Writing a captures file failed (disk full, file system error); the complete rows written before
    are kept and a rerun continues after them."""

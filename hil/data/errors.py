"""The error raised when data is missing or malformed."""

from onn_core.errors import HilError


class DatasetError(HilError):
    """Data is missing, unreadable or malformed; the message names the file and how to fix it."""

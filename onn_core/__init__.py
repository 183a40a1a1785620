"""The toolkit's ground floor: the error hierarchy, YAML config loading and validation, crash-safe
files, look-up tables and value checks. Imports neither torch nor any other package of the toolkit,
so a lab machine that only drives a camera or a display needs nothing heavier than numpy."""

from .errors import ConfigError, HilError, InputError, SamplingError

__all__ = ["ConfigError", "HilError", "InputError", "SamplingError"]

"""The toolkit's exception hierarchy (root of it; ``drivers`` extends it with device errors).

Every error the toolkit raises on purpose derives from :class:`HilError`, so a bench script can catch
the toolkit's failures with one clause. Errors about bad values also derive from ``ValueError`` so
generic callers keep working.
"""


class HilError(Exception):
    """Base of every error the toolkit raises on purpose."""


class InputError(HilError, ValueError):
    """An argument has the wrong shape, dtype, range, or contains NaN/inf."""


class SamplingError(HilError, ValueError):
    """A simulation set-up would alias or wrap around; the message names the parameter and the fix."""


class ConfigError(HilError, ValueError):
    """A configuration field is invalid; the message names its path, its value and what was expected."""

    def __init__(self, path: str, value, expected: str):
        self.path, self.value, self.expected = path, value, expected
        super().__init__(f"config field '{path}' = {value!r}: expected {expected}")

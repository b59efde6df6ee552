"""User-facing errors: each says what is wrong (column, value, field) and what to do.

The CLI, the jobs and the endpoint turn a `SynthError` into a one-line message and a non-zero
exit (or an HTTP 422) instead of a stack trace.
"""


class SynthError(Exception):
    """An error the user can act on."""


class DataError(SynthError):
    """The reference data is unusable as given (missing, not Parquet, empty, bad values)."""


class ConfigError(SynthError):
    """A config, override or request names something that does not exist or is out of range."""


class ArtifactError(SynthError):
    """A model artifact is missing, tampered with or written by an incompatible version."""

"""One exception tree for everything autocompress reports to a user.

Every error carries a one-line message that says what was expected, what was
given and how to fix it. The CLI prints ``error: <message>`` and exits with
code 2 for any :class:`AutocompressError` (no traceback).
"""

from __future__ import annotations


class AutocompressError(Exception):
    """Root of every error autocompress raises on bad input or an impossible request."""

    exit_code: int = 2


class TaskError(AutocompressError):
    """An unknown task name, a task factory that cannot be imported, or bad task data."""


class TaskFactoryError(TaskError):
    """A user's task factory (or its module, on import) raised an exception.

    ``trail`` holds one line per frame of the user's own code the exception passed
    through (outermost first); the CLI prints them under the ``error:`` line, since the
    message alone cannot say where in the user's file to look.
    """

    def __init__(self, message: str, trail: list[str] | None = None) -> None:
        super().__init__(message)
        self.trail: list[str] = list(trail or [])


class CheckpointError(AutocompressError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class InputFileError(AutocompressError):
    """A file the user named is missing or cannot be parsed."""


class PolicyError(AutocompressError):
    """A compression policy that does not fit the model or has out-of-range values."""


class SpaceError(AutocompressError):
    """A search-space YAML file that is malformed or names layers the model lacks."""


class BudgetError(AutocompressError):
    """A budget string that does not follow the grammar, or a budget no policy can meet."""


class TargetError(AutocompressError):
    """A latency target (runtime, threads, batch) that is unknown or unusable."""


class MethodError(AutocompressError):
    """A compression method that cannot be applied to a layer."""


class ConfigError(AutocompressError):
    """A run configuration (CLI flags or --config YAML) that is invalid."""


class DeviceError(AutocompressError):
    """A ``--device`` or ``--precision`` this machine cannot run (no CUDA, no such GPU)."""

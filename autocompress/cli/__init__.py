"""``autocompress`` command line: one module per command, all thin over the Python API."""

from autocompress.cli import inspect_cmd  # noqa: F401  (registers commands)
from autocompress.cli.app import app, run

try:  # commands added by later stages register themselves when present
    from autocompress.cli import apply_cmd  # noqa: F401
except ImportError as _exc:  # pragma: no cover - only while a stage is missing
    if "apply_cmd" not in str(_exc):
        raise

main = run

__all__ = ["app", "main"]

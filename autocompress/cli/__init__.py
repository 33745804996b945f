"""``autocompress`` command line: one module per command (``*_cmd.py``), thin over the API.

Each command module registers itself on :data:`autocompress.cli.app.app`
when imported; this package imports every ``*_cmd`` module it holds.
"""

import importlib
import pkgutil

from autocompress.cli.app import app, run

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.endswith("_cmd"):
        importlib.import_module(f"{__name__}.{_info.name}")

main = run

__all__ = ["app", "main"]

"""The typer app every command registers on, and the error boundary of the CLI.

Any :class:`AutocompressError` becomes one line ``error: <message>`` on stderr
and exit code 2 (no traceback); each command module stays a thin layer over
the Python API.
"""

from __future__ import annotations

import logging
import sys
import warnings
from enum import Enum

import typer
from rich.console import Console
from rich.markup import escape

from autocompress.errors import AutocompressError, TaskFactoryError

app = typer.Typer(
    name="autocompress",
    help="Search per-layer pruning, sparsity, bit-width and low-rank policies under a "
    "measured hardware budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


TASK_HELP = "digits, digits-mlp, minilm, cifar10-resnet20, cifar10-resnet56, torchvision:<name> or pkg.mod:func"


def quiet_third_party() -> None:
    """Silence library chatter that says nothing to a user (fvcore's jit deprecation, etc.)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("fvcore").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``autocompress`` console script; returns the exit code.

    Typer handles usage errors itself (exit 2); any :class:`AutocompressError`
    becomes one ``error:`` line and its exit code.
    """
    import autocompress.cli  # noqa: F401  (registers every command)

    quiet_third_party()
    try:
        app(args=argv, prog_name="autocompress")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except AutocompressError as exc:
        # escape: messages quote grammars like "<metric><=<value>[unit]" that rich would eat
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                          soft_wrap=True)
        if isinstance(exc, TaskFactoryError):  # where in the user's own code it failed
            for line in exc.trail:
                err_console.print(line, highlight=False, soft_wrap=True, markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return 0


@app.callback()
def _root() -> None:
    """Search per-layer pruning, sparsity, bit-width and low-rank policies under a measured
    hardware budget."""


def run() -> None:
    sys.exit(main())

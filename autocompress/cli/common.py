"""Helpers shared by commands: cheap checks of paths and URLs, loading a task with a spinner."""

from __future__ import annotations

from pathlib import Path

from autocompress.cli.app import err_console
from autocompress.errors import InputFileError
from autocompress.inventory import LayerInventory, build_inventory
from autocompress.tasks import Task, load_task


def task_and_inventory(
    task_name: str, data_dir: str | None = None, checkpoint: str | None = None
) -> tuple[Task, LayerInventory]:
    """Load a task (training the cached baseline on first use) and list its layers."""
    with err_console.status(f"loading task {task_name} ..."):
        task = load_task(task_name, data_dir=data_dir, checkpoint=checkpoint)
        inventory = build_inventory(task.model, task.example_input)
    return task, inventory


def check_out_folder(path: str | Path, name: str = "--out") -> None:
    """Raise :class:`InputFileError` when folder ``path`` cannot be created: it or a parent is a file.

    Commands create their output folder only after slow work (loading, training,
    measuring); this check fails first instead.
    """
    p = Path(path)
    for part in (p, *p.parents):
        if part.exists():
            if part.is_dir():
                return
            where = "is a file" if part == p else f"lies under {str(part)!r}, which is a file"
            raise InputFileError(
                f"{name} {str(p)!r} {where}; expected a folder (created when missing): give "
                "the path of a new or existing folder"
            )

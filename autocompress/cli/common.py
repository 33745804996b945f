"""Helpers shared by commands: cheap checks of paths and URLs, loading a task with a spinner."""

from __future__ import annotations

from pathlib import Path

from autocompress.cli.app import err_console
from autocompress.errors import ConfigError, InputFileError
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


def check_out_file(path: str | Path, name: str = "--out") -> None:
    """Raise :class:`InputFileError` when file ``path`` cannot be written: it is a folder, or a
    parent is a file (checked before any slow work, as :func:`check_out_folder`)."""
    p = Path(path)
    if p.is_dir():
        raise InputFileError(
            f"{name} {str(p)!r} is a folder; expected a file path (e.g. "
            f"{str(p / 'latency_lut.json')!r})")
    check_out_folder(p.parent, name=f"{name}'s folder")


def check_storage(url: str | None, name: str = "--storage") -> None:
    """Raise :class:`ConfigError` for a storage that is neither a known database URL nor a
    usable journal file path, before any slow work (the study is opened after the task loads).
    """
    if not url:
        return
    from autocompress.engine.storage import is_rdb_url, open_storage

    if is_rdb_url(url):
        return
    if "://" in url and not url.startswith("journal:"):
        open_storage(url)  # raises its one-line error naming the known schemes; opens nothing
    path = Path(url.removeprefix("journal:").removeprefix("//"))
    if path.is_dir():
        raise ConfigError(
            f"{name} {url!r} is a folder; expected a journal file path (e.g. "
            f"{str(path / 'study.log')!r}) or a database URL such as postgresql://user:pass@host/db"
        )
    for part in path.parents:
        if part.exists():
            if not part.is_dir():
                raise ConfigError(
                    f"{name} {url!r} lies under {str(part)!r}, which is a file; expected a journal "
                    "file path in a folder, or a database URL such as postgresql://user:pass@host/db"
                )
            return

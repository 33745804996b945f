"""Helpers shared by commands: loading a task and its inventory with a spinner."""

from __future__ import annotations

from autocompress.cli.app import err_console
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

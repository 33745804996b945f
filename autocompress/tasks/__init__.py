"""Built-in tasks and loading a user task from ``package.module:function``."""

from autocompress.tasks.base import Task, top1_accuracy
from autocompress.tasks.registry import TASKS, load_task

__all__ = ["TASKS", "Task", "load_task", "top1_accuracy"]

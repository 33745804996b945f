"""Task names -> task factories, plus ``torchvision:<name>`` and ``module:function``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from autocompress.errors import TaskError
from autocompress.tasks.base import Task

TaskFactory = Callable[..., Task]


def _digits(data_dir: str | None, checkpoint: str | None) -> Task:
    from autocompress.tasks.digits import digits_task

    return digits_task(checkpoint)


def _digits_mlp(data_dir: str | None, checkpoint: str | None) -> Task:
    from autocompress.tasks.digits import digits_mlp_task

    return digits_mlp_task(checkpoint)


def _digits_distorted(data_dir: str | None, checkpoint: str | None) -> Task:
    from autocompress.tasks.digits import digits_distorted_task

    return digits_distorted_task(checkpoint)


def _resnet(depth: int) -> TaskFactory:
    def factory(data_dir: str | None, checkpoint: str | None) -> Task:
        from autocompress.tasks.cifar import cifar_task

        return cifar_task(depth, data_dir, checkpoint)

    return factory


TASKS: dict[str, TaskFactory] = {
    "digits": _digits,
    "digits-mlp": _digits_mlp,
    "digits-distorted": _digits_distorted,
    "cifar10-resnet20": _resnet(20),
    "cifar10-resnet56": _resnet(56),
}

GRAMMAR = (
    "expected one of " + ", ".join(TASKS) + ", torchvision:<model name> "
    "or a user task as package.module:function"
)


def load_task(name: str, data_dir: str | None = None, checkpoint: str | None = None) -> Task:
    """Build a task by name.

    >>> load_task("mnist")
    Traceback (most recent call last):
    ...
    autocompress.errors.TaskError: unknown task 'mnist'; expected one of digits, digits-mlp, digits-distorted, cifar10-resnet20, cifar10-resnet56, torchvision:<model name> or a user task as package.module:function

    The first ``digits`` load trains the baseline (about a minute) and caches it:

    >>> load_task("digits").name  # doctest: +SKIP
    'digits'
    """
    if name in TASKS:
        return TASKS[name](data_dir, checkpoint)
    if name.startswith("torchvision:"):
        from autocompress.tasks.synthetic import torchvision_task

        return torchvision_task(name.split(":", 1)[1], checkpoint)
    if ":" in name:
        return _user_task(name, data_dir, checkpoint)
    raise TaskError(f"unknown task {name!r}; {GRAMMAR}")


def _user_task(spec: str, data_dir: str | None, checkpoint: str | None) -> Task:
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskError(
            f"cannot import module {module_name!r} for task {spec!r} ({exc}); "
            "check that it is on PYTHONPATH"
        ) from exc
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise TaskError(
            f"module {module_name!r} has no function {func_name!r}; "
            "a user task is package.module:function returning autocompress.Task"
        )
    import inspect

    params = inspect.signature(factory).parameters
    kwargs = {k: v for k, v in (("data_dir", data_dir), ("checkpoint", checkpoint)) if k in params}
    task = factory(**kwargs)
    if not isinstance(task, Task):
        raise TaskError(
            f"task factory {spec!r} returned {type(task).__name__}, expected autocompress.Task"
        )
    return task

"""Task names -> task factories, plus ``torchvision:<name>`` and ``module:function``."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable

from autocompress.errors import AutocompressError, TaskError, TaskFactoryError
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


def _minilm(data_dir: str | None, checkpoint: str | None) -> Task:
    from autocompress.tasks.minilm import minilm_task

    return minilm_task(checkpoint)


def _resnet(depth: int) -> TaskFactory:
    def factory(data_dir: str | None, checkpoint: str | None) -> Task:
        from autocompress.tasks.cifar import cifar_task

        return cifar_task(depth, data_dir, checkpoint)

    return factory


TASKS: dict[str, TaskFactory] = {
    "digits": _digits,
    "digits-mlp": _digits_mlp,
    "digits-distorted": _digits_distorted,
    "minilm": _minilm,
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
    autocompress.errors.TaskError: unknown task 'mnist'; expected one of digits, digits-mlp, digits-distorted, minilm, cifar10-resnet20, cifar10-resnet56, torchvision:<model name> or a user task as package.module:function

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
    except ModuleNotFoundError as exc:
        if exc.name is not None and not (module_name + ".").startswith(exc.name + "."):
            raise _factory_error(f"importing module {module_name!r} for task {spec!r}",
                                 "the module to import", exc, module_name) from None
        raise TaskError(
            f"cannot import module {module_name!r} for task {spec!r} ({exc}); "
            "check that it is on PYTHONPATH"
        ) from exc
    except Exception as exc:  # the user's module itself fails while it is imported
        raise _factory_error(f"importing module {module_name!r} for task {spec!r}",
                             "the module to import", exc, module_name) from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise TaskError(
            f"module {module_name!r} has no function {func_name!r}; "
            "a user task is package.module:function returning autocompress.Task"
        )
    try:
        params = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        params = set()
    kwargs = {k: v for k, v in (("data_dir", data_dir), ("checkpoint", checkpoint)) if k in params}
    try:
        task = factory(**kwargs)
    except AutocompressError:
        raise  # already one line that says what to fix (e.g. a bad checkpoint)
    except Exception as exc:
        raise _factory_error(f"task factory {spec!r}", "it to return an autocompress.Task",
                             exc, module_name) from None
    if not isinstance(task, Task):
        raise TaskError(
            f"task factory {spec!r} returned {type(task).__name__}, expected autocompress.Task"
        )
    return task


# Frames in these folders are autocompress's or a library's, not the user's task code.
_NOT_USER = tuple(
    os.path.realpath(d) + os.sep
    for d in {
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")),
    }
)
MAX_TRAIL = 8


def _factory_error(what: str, expected: str, exc: Exception, module_name: str) -> TaskFactoryError:
    """``what`` raised ``exc``: a one-line message plus the user's frames it passed through."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    raised = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    trail = _user_frames(exc, module_name)
    where = " (its frames follow)" if trail else ""
    return TaskFactoryError(
        f"{what} raised {raised}; expected {expected}: fix the error in your code{where}", trail
    )


def _user_frames(exc: BaseException, module_name: str) -> list[str]:
    """One line per frame of ``exc``'s traceback in the user's code, outermost first.

    A frame is the user's when it lies in the package of ``module_name`` (wherever it
    is installed) or outside autocompress, the standard library and site-packages.
    """
    roots: list[str] = []
    top = sys.modules.get(module_name.split(".")[0])
    for path in [*getattr(top, "__path__", []), getattr(top, "__file__", None)]:
        if path:
            roots.append(os.path.realpath(path))
    lines = []
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.startswith("<"):  # importlib's frozen frames
            continue
        path = os.path.realpath(frame.filename)
        mine = any(path == r or path.startswith(r + os.sep) for r in roots)
        if mine or not path.startswith(_NOT_USER):
            lines.append(_frame_line(path, frame.lineno, frame.name, frame.line))
    if isinstance(exc, SyntaxError) and exc.filename:  # raised by the parser: no frame of its own
        lines.append(_frame_line(exc.filename, exc.lineno, None, exc.text))
    return lines[-MAX_TRAIL:]


def _frame_line(path: str, lineno: int | None, func: str | None, source: str | None) -> str:
    """``  mymod.py line 7, in factory: raise ValueError(...)``."""
    line = f"  {_shown(path)} line {lineno}"
    if func:
        line += f", in {func}"
    return line + (f": {source.strip()}" if source and source.strip() else "")


def _shown(path: str) -> str:
    """``path`` relative to the working folder when it lies inside it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel

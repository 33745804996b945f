"""Where fine-tunes, scoring, the teacher's outputs and int8 calibration run (``--device``).

Latency is never measured here: it is timed on the CPU target whatever the device. A
device is one of ``auto`` (CUDA when ``torch.cuda.is_available()``, else the CPU, said
once), ``cpu``, ``cuda`` or ``cuda:N``; ``--precision`` picks autocast for the fine-tune's
forward passes (``fp32`` = none; ``bf16`` also runs on the CPU; ``fp16`` needs CUDA).

>>> resolve_device("cpu")
device(type='cpu')
>>> check_precision("bf16", torch.device("cpu"))
'bf16'
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from autocompress import inputs
from autocompress.errors import DeviceError
from autocompress.inputs import ModelInput

LOG = logging.getLogger("autocompress.device")

DEVICE_HELP = "auto|cpu|cuda|cuda:N"
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16,
}
_said_fallback = False


def resolve_device(spec: str | torch.device | None = "cpu") -> torch.device:
    """The :class:`torch.device` ``spec`` names, checked against this machine.

    Raises :class:`DeviceError` (one line) for an unknown name, ``cuda`` without CUDA or
    ``cuda:N`` beyond the GPU count; ``auto`` without CUDA is the CPU (logged once).

    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
    """
    global _said_fallback
    text = str(spec if spec is not None else "cpu").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if not _said_fallback:
            _said_fallback = True
            LOG.warning("device auto: no CUDA GPU here, fine-tunes run on the CPU")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if m is None:
        raise DeviceError(f"device {spec!r} is not one of {DEVICE_HELP}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(f"device {spec!r} needs a CUDA GPU and this machine has none; "
                          "use --device cpu (or auto)")
    index = int(m.group(1)) if m.group(1) is not None else torch.cuda.current_device()
    if index >= count:
        raise DeviceError(f"device {spec!r}: this machine has {count} CUDA GPU(s), "
                          f"cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` when ``device`` can autocast to it, else :class:`DeviceError`.

    >>> check_precision("fp16", torch.device("cpu"))
    Traceback (most recent call last):
    ...
    autocompress.errors.DeviceError: precision 'fp16' needs a CUDA device; use bf16 on the CPU
    """
    if precision not in PRECISIONS:
        raise DeviceError(f"precision {precision!r} is not one of {'|'.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError(f"precision {precision!r} needs a CUDA device; use bf16 on the CPU")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``precision`` on ``device`` (a no-op context for ``fp32``).

    >>> with autocast(torch.device("cpu"), "bf16"):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
    """
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(x: Any, device: torch.device) -> Any:
    """Tensors of a batch, an input or an output (tensor, tuple, list, mapping) on ``device``.

    Non-tensors pass through; CPU-to-CUDA copies are asynchronous (the source is pinned).

    >>> to_device({"a": torch.ones(1), "b": [torch.zeros(1)], "n": 3}, torch.device("cpu"))["n"]
    3
    """
    if isinstance(x, torch.Tensor):
        if x.device == device:
            return x
        return x.to(device, non_blocking=device.type == "cuda")
    if isinstance(x, Mapping):
        # In place for dict subclasses (a Hugging Face ModelOutput keeps its attributes).
        if type(x) is not dict and hasattr(x, "__setitem__"):
            for k in list(x.keys()):
                x[k] = to_device(x[k], device)  # type: ignore[index]
            return x
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple
        return type(x)(*(to_device(v, device) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x


def input_on(x: ModelInput, device: torch.device) -> ModelInput:
    """A model input (tensor, tuple or dict of tensors) on ``device``."""
    return x if inputs.device_of(x) == device else to_device(x, device)


class OnDevice(nn.Module):
    """``model`` on ``device`` behind a CPU face: inputs go to the device, outputs come back.

    A task's metric receives CPU batches and compares with CPU labels, so scoring a model
    on a GPU needs no change to the metric.

    >>> m = OnDevice(nn.Linear(2, 1), torch.device("cpu")); m(torch.ones(1, 2)).shape
    torch.Size([1, 1])
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.device = device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.model(*to_device(args, self.device), **to_device(kwargs, self.device))
        return to_device(out, torch.device("cpu"))


def scored_on(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` itself on the CPU, else wrapped in :class:`OnDevice` for a task's metric."""
    return model if device.type == "cpu" else OnDevice(model, device)


def teacher_on(model: nn.Module, device: torch.device) -> nn.Module:
    """The teacher on ``device``: ``model`` itself on the CPU, else one copy moved there.

    The task's own model stays on the CPU, where latency is timed.

    >>> m = nn.Linear(2, 2); teacher_on(m, torch.device("cpu")) is m
    True
    """
    if all(p.device == device for p in model.parameters()):
        return model
    return copy.deepcopy(model).to(device).eval()


def loader_options(device: torch.device, dataset: Any = None) -> dict[str, Any]:
    """Extra ``DataLoader`` arguments for fine-tuning on ``device``.

    On CUDA, CPU-held data loads in worker processes into pinned memory, so copies to the
    GPU overlap the compute; on the CPU (or data already on the GPU) nothing changes.

    >>> loader_options(torch.device("cpu"))
    {}
    >>> loader_options(torch.device("cuda"))["pin_memory"]
    True
    """
    if device.type != "cuda":
        return {}
    held = getattr(dataset, "tensors", None)
    if held and any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in held):
        return {}
    workers = max(1, min(4, (os.cpu_count() or 2) // 2))
    # Persistent: a fine-tune cycles its loader many times; new workers each pass cost a fork.
    return {"num_workers": workers, "pin_memory": True, "persistent_workers": True}


def describe(device: torch.device) -> str:
    """``cpu`` or ``cuda:N (GPU name)``, for env.json and logs."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Yield a dict that holds ``peak_mib`` (CUDA's peak allocation inside the block) at exit.

    >>> with peak_memory(torch.device("cpu")) as mem: pass
    >>> mem
    {'peak_mib': None}
    """
    box: dict[str, Any] = {"peak_mib": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield box
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            box["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20

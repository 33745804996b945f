"""A model input of any signature: one tensor, a tuple of tensors, or a dict of named tensors.

Every stage that runs a model (inventory, apply, latency on torch and ONNX Runtime,
export, fine-tune, evaluation) goes through these helpers instead of assuming one
float tensor. Tensors keep their dtype everywhere: token ids (int64) are repeated
to a batch and fed to ONNX Runtime as int64, never cast to float.

- :data:`ModelInput`: ``Tensor | tuple[Tensor, ...] | dict[str, Tensor]``;
- :func:`normalize` checks one and turns a list into a tuple;
- :func:`batched` / :func:`take` / :func:`batch_size` work along dim 0 of every tensor;
- :func:`call` runs a model on one (positional or keyword arguments);
- :func:`positional_forward` lets tracers (ONNX export, fvcore) pass keyword inputs;
- :func:`onnx_input_names` / :func:`ort_feed` name the inputs of an ONNX graph and feed it;
- :func:`split_batch` splits a loader batch into ``(inputs, labels)``;
- :func:`output_tensors` / :func:`select_output` read a model output of any structure.

>>> ids = torch.tensor([[1, 2, 3]])
>>> batched({"input_ids": ids}, 4)["input_ids"].dtype, batch_size(batched(ids, 4))
(torch.int64, 4)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import nn

from autocompress.errors import TaskError

ModelInput: TypeAlias = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
# Which output tensor a task scores: a key of a dict-like output, an index, or a callable.
OutputSelector: TypeAlias = str | int | Callable[[Any], torch.Tensor] | None

GRAMMAR = "a tensor, a tuple of tensors or a dict of named tensors, each with a batch axis 0"


def normalize(x: Any, what: str = "the example input") -> ModelInput:
    """``x`` as a :data:`ModelInput` (a list becomes a tuple); :class:`TaskError` otherwise.

    >>> normalize([torch.zeros(2, 3), torch.ones(2)])[1].shape
    torch.Size([2])
    >>> normalize({"a": 1})
    Traceback (most recent call last):
    ...
    autocompress.errors.TaskError: the example input['a'] is a int, expected a tensor; the example input must be a tensor, a tuple of tensors or a dict of named tensors, each with a batch axis 0
    """
    if isinstance(x, torch.Tensor):
        out: ModelInput = x
    elif isinstance(x, Mapping):
        out = {str(k): v for k, v in x.items()}
    elif isinstance(x, (tuple, list)):
        out = tuple(x)
    else:
        raise TaskError(f"{what} is a {type(x).__name__}; expected {GRAMMAR}")
    parts = _named(out)
    if not parts:
        raise TaskError(f"{what} holds no tensor; expected {GRAMMAR}")
    for key, t in parts:
        label = what if key is None else f"{what}[{key!r}]"
        if not isinstance(t, torch.Tensor):
            raise TaskError(f"{label} is a {type(t).__name__}, expected a tensor; {what} must be "
                            f"{GRAMMAR}")
        if t.dim() == 0:
            raise TaskError(f"{label} is a scalar tensor; {what} must be {GRAMMAR}")
    sizes = {int(t.shape[0]) for _, t in parts}
    if len(sizes) > 1:
        raise TaskError(f"the tensors of {what} have different batch sizes {sorted(sizes)}; "
                        "each needs the same batch axis 0")
    return out


def _named(x: Any) -> list[tuple[Any, Any]]:
    """``(key, tensor)`` pairs: ``None`` for a lone tensor, indices for a tuple, names for a dict."""
    if isinstance(x, torch.Tensor):
        return [(None, x)]
    if isinstance(x, Mapping):
        return list(x.items())
    return list(enumerate(x))


def tensors(x: ModelInput) -> list[torch.Tensor]:
    """Every tensor of ``x``, in order.

    >>> [t.shape[1] for t in tensors((torch.zeros(1, 2), torch.zeros(1, 5)))]
    [2, 5]
    """
    return [t for _, t in _named(x)]


def _map(x: ModelInput, fn: Callable[[torch.Tensor], torch.Tensor]) -> ModelInput:
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: fn(v) for k, v in x.items()}
    return tuple(fn(t) for t in x)


def batch_size(x: ModelInput) -> int:
    """Rows along dim 0 (the same for every tensor of a normalised input)."""
    return int(tensors(x)[0].shape[0])


def batched(x: ModelInput, batch: int) -> ModelInput:
    """The first sample of every tensor of ``x`` repeated to ``batch`` rows (contiguous, same dtype).

    >>> batched(torch.tensor([[5, 6], [7, 8]]), 3).tolist()
    [[5, 6], [5, 6], [5, 6]]
    """
    return _map(x, lambda t: t[:1].expand(batch, *t.shape[1:]).contiguous())


def take(x: ModelInput, rows: int) -> ModelInput:
    """The first ``rows`` samples of every tensor of ``x``."""
    return _map(x, lambda t: t[:rows])


def skip(x: ModelInput, rows: int) -> ModelInput:
    """Every tensor of ``x`` without its first ``rows`` samples."""
    return _map(x, lambda t: t[rows:])


def concat(parts: Sequence[ModelInput]) -> ModelInput:
    """Inputs of the same structure joined along dim 0 (loader batches into one)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts))  # type: ignore[arg-type]
    cols = [tensors(p) for p in parts]
    joined = [torch.cat([c[i] for c in cols]) for i in range(len(cols[0]))]
    if isinstance(first, Mapping):
        return dict(zip(first, joined, strict=True))
    return tuple(joined)


def detached(x: ModelInput) -> ModelInput:
    """``x`` detached and on the CPU (for export and ONNX Runtime)."""
    return _map(x, lambda t: t.detach().cpu())


def device_of(x: ModelInput) -> torch.device:
    """The device of ``x``'s first tensor."""
    return tensors(x)[0].device


def call(model: Callable[..., Any], x: ModelInput) -> Any:
    """``model(x)``, ``model(*x)`` or ``model(**x)`` for a tensor, a tuple or a dict.

    >>> call(lambda a, b: a + b, (torch.ones(1), torch.ones(1))).item()
    2.0
    """
    if isinstance(x, torch.Tensor):
        return model(x)
    if isinstance(x, Mapping):
        return model(**x)
    return model(*x)


def forward_error(model: nn.Module, x: ModelInput, what: str = "the example input") -> None:
    """Run ``model`` once on ``x``; a failure becomes a one-line :class:`TaskError`.

    >>> forward_error(nn.Linear(3, 2), torch.zeros(1, 4))
    Traceback (most recent call last):
    ...
    autocompress.errors.TaskError: Linear's forward fails on the example input (tensor 1x4 float32): RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x4 and 3x2); give an example input the model's forward accepts
    """
    try:
        with torch.no_grad():
            call(model, x)
    except Exception as exc:  # any error of user code: reported in one line, not a traceback
        message = " ".join(str(exc).split()) or "(no message)"
        if len(message) > 300:
            message = message[:297] + "..."
        how = ("" if isinstance(x, torch.Tensor) else
               " (a dict is passed as keyword arguments, a tuple as positional ones)")
        raise TaskError(
            f"{type(model).__name__}'s forward fails on {what} ({describe(x)}): "
            f"{type(exc).__name__}: {message}; give an example input the model's forward "
            f"accepts{how}"
        ) from exc


def describe(x: ModelInput) -> str:
    """A short text of the structure, shapes and dtypes of ``x``.

    >>> describe({"input_ids": torch.zeros(1, 8, dtype=torch.long)})
    'dict input_ids=1x8 int64'
    """
    def one(t: torch.Tensor) -> str:
        return "x".join(map(str, t.shape)) + " " + str(t.dtype).removeprefix("torch.")

    if isinstance(x, torch.Tensor):
        return f"tensor {one(x)}"
    if isinstance(x, Mapping):
        return "dict " + ", ".join(f"{k}={one(v)}" for k, v in x.items())
    return "tuple " + ", ".join(one(t) for t in x)


def signature_key(x: ModelInput) -> str:
    """Shapes (batch axis left out) and dtypes of ``x``: what a latency table keys a model by.

    A single float32 tensor keeps the plain ``CxHxW`` form older tables were keyed by.

    >>> signature_key(torch.zeros(1, 3, 8, 8)), signature_key({"ids": torch.zeros(1, 7).long()})
    ('3x8x8', 'ids:7:int64')
    """
    if isinstance(x, torch.Tensor) and x.dtype == torch.float32:
        return "x".join(map(str, x.shape[1:]))
    parts = []
    for key, t in _named(x):
        shape = "x".join(map(str, t.shape[1:]))
        dtype = str(t.dtype).removeprefix("torch.")
        parts.append(f"{'' if key is None else f'{key}:'}{shape}:{dtype}")
    return ",".join(parts)


# ---- ONNX ---------------------------------------------------------------------------


@contextlib.contextmanager
def positional_forward(model: nn.Module, x: ModelInput) -> Iterator[tuple[torch.Tensor, ...]]:
    """Inside the block ``model(*args)`` runs ``call(model, x)``'s forward on the yielded ``args``.

    Tracers (the TorchScript ONNX exporter, fvcore) pass positional tensors only, and the
    exporter fills every other parameter of ``forward`` with its default, positionally,
    which breaks a forward taking keyword arguments (a Hugging Face model's ``use_cache``).
    The module tree is untouched, so traced node scopes keep the model's own layer names.

    >>> class M(nn.Module):
    ...     def forward(self, ids, mask=None):
    ...         return ids * mask
    >>> m = M()
    >>> with positional_forward(m, {"mask": torch.ones(1), "ids": torch.full((1,), 3.0)}) as args:
    ...     m(*args).item()
    3.0
    """
    names = list(x) if isinstance(x, Mapping) else None
    args = tuple(tensors(x))
    original = type(model).forward
    own = model.__dict__.get("forward")  # a forward set on the instance wins; keep it
    inner = own if own is not None else original.__get__(model)

    def forward(*a: torch.Tensor) -> Any:
        return inner(**dict(zip(names, a, strict=True))) if names is not None else inner(*a)

    model.forward = forward  # type: ignore[method-assign]
    try:
        yield args
    finally:
        if own is not None:
            model.forward = own  # type: ignore[method-assign]
        else:
            del model.forward


def onnx_dynamic_axes(x: ModelInput) -> dict[str, dict[int, str]]:
    """ONNX dynamic axes of each input: the batch axis, and for integer tensors (token ids,
    attention masks) every other axis too, as padded text batches vary in length.

    Float inputs keep their other axes fixed, so ONNX Runtime plans their kernels (an
    image's layout, a conv's algorithm) for the one shape it will see.

    >>> onnx_dynamic_axes({"input_ids": torch.zeros(1, 8).long(), "pixels": torch.zeros(1, 3)})
    {'input_ids': {0: 'batch', 1: 'input_ids_1'}, 'pixels': {0: 'batch'}}
    """
    axes: dict[str, dict[int, str]] = {}
    for name, t in zip(onnx_input_names(x), tensors(x), strict=True):
        free = range(1, t.dim()) if not (t.is_floating_point() or t.is_complex()) else range(0)
        axes[name] = {0: "batch"} | {i: f"{name}_{i}" for i in free}
    return axes


def onnx_input_names(x: ModelInput) -> list[str]:
    """ONNX input names: ``input`` for a tensor, ``input0``, ``input1``, ... for a tuple's
    tensors, a dict's own names (in the dict's order, which is the graph's order).

    >>> onnx_input_names(torch.zeros(1, 2)), onnx_input_names((torch.zeros(1), torch.zeros(1)))
    (['input'], ['input0', 'input1'])
    """
    if isinstance(x, torch.Tensor):
        return ["input"]
    if isinstance(x, Mapping):
        return [str(k) for k in x]
    return [f"input{i}" for i in range(len(x))]


def ort_feed(session: Any, x: ModelInput | np.ndarray) -> dict[str, np.ndarray]:
    """ONNX Runtime's feed of ``x`` for ``session``: each input by name, in its own dtype.

    A tuple feeds the graph's inputs in order, a dict by name (inputs the exporter dropped
    because the graph never reads them are left out). A float64 array fed to a float32
    input is cast, as the callers' NumPy data often is float64; integers are never cast.
    """
    inputs = session.get_inputs()
    if isinstance(x, (torch.Tensor, np.ndarray)):
        parts: list[tuple[str, Any]] = [(inputs[0].name, x)]
    elif isinstance(x, Mapping):
        wanted = {i.name for i in inputs}
        parts = [(k, v) for k, v in x.items() if k in wanted]
    else:
        named = [(f"input{i}", t) for i, t in enumerate(x)]
        wanted = {i.name for i in inputs}
        # Our own exports name a tuple's tensors; a graph from elsewhere is fed in order.
        parts = ([(k, v) for k, v in named if k in wanted] if any(k in wanted for k, _ in named)
                 else [(i.name, t) for i, t in zip(inputs, x, strict=False)])
    types = {i.name: i.type for i in inputs}
    feed = {}
    for name, value in parts:
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if types.get(name) == "tensor(float)" and arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        feed[name] = np.ascontiguousarray(arr)
    return feed


# ---- loader batches and outputs --------------------------------------------------------


def split_batch(batch: Any) -> tuple[ModelInput, Any]:
    """``(inputs, labels)`` of a loader batch; ``labels`` is None when the batch has none.

    A batch is the model input itself (a tensor or a dict without a ``labels`` key), a
    ``(inputs, labels)`` pair, or a dict with a ``labels`` (or ``label``) key, as Hugging
    Face collators make. A pair's inputs may be a tensor, a tuple or a dict.

    >>> x, y = split_batch({"input_ids": torch.zeros(2, 4).long(), "labels": torch.tensor([0, 1])})
    >>> list(x), y.tolist()
    (['input_ids'], [0, 1])
    """
    if isinstance(batch, Mapping):
        label_key = next((k for k in ("labels", "label") if k in batch), None)
        named = {k: v for k, v in batch.items() if k != label_key}
        return named, batch[label_key] if label_key is not None else None
    if isinstance(batch, (tuple, list)):
        first = batch[0]
        return (tuple(first) if isinstance(first, list) else first,
                batch[1] if len(batch) > 1 else None)
    return batch, None


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor of a model output (a tensor, tuple, list, dict or Hugging Face ModelOutput).

    >>> [t.shape[0] for t in output_tensors({"a": torch.zeros(2), "b": (torch.zeros(3), None)})]
    [2, 3]
    """
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in output_tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in output_tensors(v)]
    return []


class NamedOutputs(dict):
    """Named output tensors read as a Hugging Face ``ModelOutput`` is: by key, attribute or index.

    What an ONNX model with named outputs answers, so a metric written for the PyTorch
    model's ``ModelOutput`` (``out.logits``, ``out["logits"]``, ``out[0]``) scores it too.

    >>> out = NamedOutputs(logits=torch.ones(1, 2), hidden=torch.zeros(1, 4))
    >>> out.logits.shape, out[1].shape, out["hidden"].shape
    (torch.Size([1, 2]), torch.Size([1, 4]), torch.Size([1, 4]))
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, slice)):
            return tuple(self.values())[key]
        return super().__getitem__(key)


def output_names(out: Any) -> list[str] | None:
    """Names for the ONNX outputs of a model output: a dict's keys, else None (numbered).

    Only a flat dict of tensors (a ModelOutput is one) has names that map one to one.
    """
    if isinstance(out, Mapping) and all(isinstance(v, torch.Tensor) for v in out.values()):
        return [str(k) for k in out]
    return None


def select_output(out: Any, selector: OutputSelector = None) -> torch.Tensor:
    """The tensor of a model output that a task scores.

    ``selector``: a key of a dict-like output, an index into a tuple, or a callable;
    None takes the output itself when it is a tensor, else its first tensor (a Hugging
    Face ``ModelOutput``'s first field, e.g. ``logits`` or ``last_hidden_state``).

    >>> select_output({"hidden": torch.zeros(1, 4), "logits": torch.ones(1, 2)}, "logits").shape
    torch.Size([1, 2])
    """
    if callable(selector):
        return selector(out)
    if selector is not None:
        try:
            picked = out[selector]
        except (KeyError, IndexError, TypeError) as exc:
            raise TaskError(f"the model output has no {selector!r} "
                            f"(it is a {type(out).__name__}); set the task's output to "
                            "a key, an index or a callable that picks the scored tensor") from exc
        if isinstance(picked, torch.Tensor):
            return picked
        out = picked
    found = output_tensors(out)
    if not found:
        raise TaskError(f"the model output ({type(out).__name__}) holds no tensor")
    return found[0]

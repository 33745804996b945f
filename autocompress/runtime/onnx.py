"""ONNX export (named inputs, each with a dynamic batch axis) and ONNX Runtime sessions."""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress.errors import MethodError
from autocompress.inputs import (
    ModelInput,
    OutputSelector,
    call,
    detached,
    onnx_dynamic_axes,
    onnx_input_names,
    ort_feed,
    output_names,
    output_tensors,
    positional_forward,
    select_output,
)

OPSET = 17


# The torch.export-based exporter emits opset 18 or later.
TORCH_EXPORT_OPSET = 18


def _export_with_torch_export(model: nn.Module, args: Any, input_names: list[str],
                              output_names: list[str], axes: dict[str, Any]) -> bytes | None:
    """``model`` exported by the newer, torch.export-based exporter, or None when it fails too.

    Only where the TorchScript exporter gave up: the newer one decomposes ops the older one
    rejects, such as an adaptive pool whose output size does not divide its input (AlexNet
    below 224 pixels); it is slower, and the older one writes fake-quant ops as the
    QuantizeLinear/DequantizeLinear pairs the latency table expects.
    """
    # The forward takes the inputs as ``*args`` (:func:`positional_forward`), so their
    # dynamic axes are one tuple in the first place.
    shapes = (tuple({axis: torch.export.Dim.AUTO for axis in axes.get(name, {})}
                    for name in input_names),)
    try:
        program = torch.onnx.export(model, args, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=shapes,
                                    opset_version=max(OPSET, TORCH_EXPORT_OPSET), dynamo=True,
                                    verbose=False)
        assert program is not None
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            program.save(path)
            return path.read_bytes()
    except Exception:  # the caller reports the first exporter's error, the one a user can act on
        return None


def export_onnx(
    model: nn.Module, example_input: ModelInput, path: str | Path | None = None
) -> bytes:
    """Export ``model`` to ONNX with a dynamic batch axis on every input and output.

    ``example_input`` is a tensor (ONNX input ``input``), a tuple (``input0``, ``input1``,
    ...) or a dict of named tensors (their names); each keeps its dtype, so token ids stay
    int64, and an integer input's other axes are dynamic too (a sequence's length). A single output is named ``output``; a dict output (a Hugging Face
    ``ModelOutput``) keeps its keys; other outputs are ``output0``, ``output1``, ...
    The file is written to ``path`` if given; a model the exporter cannot export raises a
    one-line :class:`~autocompress.errors.MethodError`.

    Uses the TorchScript exporter: it needs no extra packages and exports
    fake-quant ops as QuantizeLinear/DequantizeLinear. A model it rejects is tried once more
    with the torch.export-based exporter (:func:`_export_with_torch_export`).

    >>> data = export_onnx(nn.Linear(4, 2), torch.zeros(1, 4))
    >>> run_onnx(data, np.zeros((3, 4), np.float32)).shape
    (3, 2)
    >>> emb = nn.Embedding(10, 3)
    >>> run_onnx(export_onnx(emb, torch.zeros(1, 5, dtype=torch.long)),
    ...          np.ones((2, 5), np.int64)).shape
    (2, 5, 3)
    """
    model = model.eval()
    x = detached(example_input)
    input_names = onnx_input_names(x)
    with torch.no_grad():
        out = call(model, x)
    names = output_names(out)
    if names is None:
        n = len(output_tensors(out))
        names = ["output"] if n == 1 else [f"output{i}" for i in range(n)]
    axes = onnx_dynamic_axes(x) | {name: {0: "batch"} for name in names}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), positional_forward(model, x) as args, \
            _no_attention_fastpath():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                args,
                buf,  # type: ignore[arg-type]  # file-like objects are accepted
                input_names=input_names,
                output_names=names,
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
        except Exception as exc:  # the exporter's errors name an op; the user gets one line
            fallback = _export_with_torch_export(model, args, input_names, names, axes)
            if fallback is None:
                first = next((line.strip() for line in str(exc).splitlines() if line.strip()),
                             "")
                raise MethodError(
                    f"{type(model).__name__} cannot be exported to ONNX ({type(exc).__name__}: "
                    f"{first[:300]}); measure it on a torch target (e.g. --target torch) or "
                    "make its forward exportable"
                ) from exc
            buf = io.BytesIO(fallback)
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def session_options(threads: int = 1):
    """ONNX Runtime options every run and measurement shares: fixed intra-op threads,
    sequential execution, full graph optimisation, quiet logs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def ort_session(model: bytes | str | Path, threads: int = 1):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and full optimisation."""
    import onnxruntime as ort

    opts = session_options(threads)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_agreement(
    model: nn.Module, onnx_model: bytes | str | Path, x: ModelInput, output: OutputSelector = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``(ONNX Runtime's, PyTorch's)`` scored output of ``model`` on ``x`` (any input form).

    ``output`` picks the scored tensor of a structured output (as a task's ``output``
    does); ONNX Runtime's matching output is the one at the same place in the flattened
    outputs, which is how :func:`export_onnx` orders them.

    >>> m = nn.Linear(4, 2)
    >>> got, ref = onnx_agreement(m, export_onnx(m, torch.zeros(1, 4)), torch.ones(3, 4))
    >>> got.shape == ref.shape and bool(np.abs(got - ref).max() < 1e-5)
    True
    """
    with torch.no_grad():
        out = call(model.eval(), x)
    flat = output_tensors(out)
    scored = select_output(out, output)
    index = next((i for i, t in enumerate(flat) if t is scored), 0)
    sess = ort_session(onnx_model, threads)
    got = sess.run(None, ort_feed(sess, x))
    return np.asarray(got[index]), scored.detach().cpu().numpy()


def run_onnx(
    model: bytes | str | Path, x: ModelInput | np.ndarray, threads: int = 1
) -> np.ndarray:
    """Run an ONNX model once on ``x`` and return its first output.

    ``x``: an array or any :data:`~autocompress.inputs.ModelInput`; each input keeps its
    dtype (float64 data fed to a float32 input is cast).
    """
    sess = ort_session(model, threads)
    return sess.run(None, ort_feed(sess, x))[0]


@contextlib.contextmanager
def _no_attention_fastpath() -> Iterator[None]:
    """PyTorch's fused eval-mode attention (``nn.MultiheadAttention``'s fast path) has no ONNX
    export; the plain path computes the same outputs and exports."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)

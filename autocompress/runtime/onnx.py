"""ONNX export (named inputs, each with a dynamic batch axis) and ONNX Runtime sessions."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
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

# protobuf caps one serialised message at 2 GiB, so past this many bytes of weights a graph is
# written as a file with its weights beside it (ONNX external data) instead of as bytes.
EXTERNAL_DATA_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class OnnxFile:
    """An exported graph kept as a file because its weights are too large for one message.

    ``path`` is the graph; its weights lie in external data files in the same folder, which
    ONNX Runtime finds by themselves. An ``OnnxFile`` from :func:`export_onnx` without a path
    owns a temporary folder, removed when the object is collected.
    """

    path: Path
    folder: tempfile.TemporaryDirectory[str] | None = dataclasses.field(
        default=None, repr=False, compare=False)

    def __fspath__(self) -> str:
        return str(self.path)


# What export_onnx returns: the serialised graph, or a file with external data.
OnnxModel = bytes | OnnxFile


def onnx_nbytes(model: OnnxModel | str | Path) -> int:
    """Bytes of an exported graph, its external data files included.

    >>> onnx_nbytes(b"abc")
    3
    """
    if isinstance(model, bytes):
        return len(model)
    path = Path(os.fspath(model))
    if isinstance(model, OnnxFile) and model.folder is not None:
        return sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file())
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers, each counted once."""
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()
            if isinstance(t, torch.Tensor)}
    return sum(seen.values())


def _save_with_external_data(source: Path, path: Path) -> None:
    """Write ``source``'s graph to ``path`` with every weight in one file, ``path.data``.

    The TorchScript exporter writes one file per weight; one file beside the graph is the
    layout users copy and ONNX tools expect.
    """
    import onnx

    data = path.with_name(path.name + ".data")
    # onnx appends to an existing data file, so an older export's weights would stay in it.
    data.unlink(missing_ok=True)
    proto = onnx.load(str(source))
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name)


# The torch.export-based exporter emits opset 18 or later.
TORCH_EXPORT_OPSET = 18


def _export_with_torch_export(model: nn.Module, args: Any, input_names: list[str],
                              output_names: list[str], axes: dict[str, Any],
                              path: Path, external_data: bool) -> bool:
    """Export ``model`` to ``path`` (its weights beside it where ``external_data``) with the
    newer, torch.export-based exporter; False when it fails too.

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
        program.save(path, external_data=external_data)
        return True
    except Exception:  # the caller reports the first exporter's error, the one a user can act on
        return False


def export_onnx(
    model: nn.Module, example_input: ModelInput, path: str | Path | None = None
) -> OnnxModel:
    """Export ``model`` to ONNX with a dynamic batch axis on every input and output.

    ``example_input`` is a tensor (ONNX input ``input``), a tuple (``input0``, ``input1``,
    ...) or a dict of named tensors (their names); each keeps its dtype, so token ids stay
    int64, and an integer input's other axes are dynamic too (a sequence's length). A single
    output is named ``output``; a dict output (a Hugging Face ``ModelOutput``) keeps its keys;
    other outputs are ``output0``, ``output1``, ...

    Returns the serialised graph, written to ``path`` too if given. A model with more than
    :data:`EXTERNAL_DATA_BYTES` of weights cannot be one protobuf message: it is returned as
    an :class:`OnnxFile`, with its weights in ``path.data`` beside the graph (or in a
    temporary folder when no path is given). A model the exporter cannot export raises a
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
    large = weight_bytes(model) > EXTERNAL_DATA_BYTES
    folder = tempfile.TemporaryDirectory(prefix="autocompress-onnx-")
    raw = Path(folder.name) / "model.onnx"
    # The TorchScript exporter writes external data only when given a file name; a graph
    # that fits one message stays in memory.
    target: str | io.BytesIO = str(raw) if large else io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), positional_forward(model, x) as args, \
            _no_attention_fastpath():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                args,
                target,  # type: ignore[arg-type]  # file-like objects are accepted
                input_names=input_names,
                output_names=names,
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
        except Exception as exc:  # the exporter's errors name an op; the user gets one line
            if not _export_with_torch_export(model, args, input_names, names, axes, raw, large):
                folder.cleanup()
                first = next((line.strip() for line in str(exc).splitlines() if line.strip()),
                             "")
                raise MethodError(
                    f"{type(model).__name__} cannot be exported to ONNX ({type(exc).__name__}: "
                    f"{first[:300]}); measure it on a torch target (e.g. --target torch) or "
                    "make its forward exportable"
                ) from exc
            target = str(raw)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not large:
        data = target.getvalue() if isinstance(target, io.BytesIO) else raw.read_bytes()
        folder.cleanup()
        if path is not None:
            Path(path).write_bytes(data)
            # A larger model exported here before left its weights beside the graph.
            Path(path).with_name(Path(path).name + ".data").unlink(missing_ok=True)
        return data
    if path is None:
        return OnnxFile(raw, folder)
    _save_with_external_data(raw, Path(path))
    folder.cleanup()
    return OnnxFile(Path(path))


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


def ort_session(model: OnnxModel | str | Path, threads: int = 1, opts: Any = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and full optimisation
    (``opts`` replaces :func:`session_options`), from bytes or a file."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, sess_options=opts or session_options(threads),
                                providers=["CPUExecutionProvider"])


def onnx_agreement(
    model: nn.Module, onnx_model: OnnxModel | str | Path, x: ModelInput, output: OutputSelector = None,
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
    model: OnnxModel | str | Path, x: ModelInput | np.ndarray, threads: int = 1
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

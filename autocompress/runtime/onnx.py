"""ONNX export (dynamic batch) and ONNX Runtime sessions with fixed threads."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 17


def export_onnx(
    model: nn.Module, example_input: torch.Tensor, path: str | Path | None = None
) -> bytes:
    """Export ``model`` to ONNX with a dynamic batch axis; write it to ``path`` if given.

    Uses the TorchScript exporter: it needs no extra packages and exports
    fake-quant ops as QuantizeLinear/DequantizeLinear.

    >>> data = export_onnx(nn.Linear(4, 2), torch.zeros(1, 4))
    >>> run_onnx(data, np.zeros((3, 4), np.float32)).shape
    (3, 2)
    """
    model = model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example_input,),
            buf,  # type: ignore[arg-type]  # file-like objects are accepted
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
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


def run_onnx(model: bytes | str | Path, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Run an ONNX model once on ``x`` and return its first output."""
    sess = ort_session(model, threads)
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]

"""``model_best.int8.onnx``: ONNX Runtime static int8 quantisation (QDQ, per-channel weights).

Used when the best policy quantises some layer's weights to 8 bits or fewer:
the policy's bit widths are then a claim that the model survives integer
weights, and this file is that model in the form ONNX Runtime runs with
integer kernels. The float graph it starts from has autocompress's own
activation fake-quantisers removed (:func:`strip_fake_quant`), so that
``quantize_static`` calibrates every activation itself from real data.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from torch import nn

from autocompress.errors import MethodError
from autocompress.methods.quantize import QUANT_BITS, ActFakeQuant
from autocompress.policy import CompressionPolicy
from autocompress.runtime.onnx import export_onnx

CALIBRATION_BATCHES = 4


def needs_int8(policy: CompressionPolicy) -> bool:
    """True when some layer's weights are quantised to 8 bits or fewer.

    >>> from autocompress.policy import LayerPolicy
    >>> needs_int8(CompressionPolicy(layers={"fc": LayerPolicy(bits=6)}))
    True
    >>> needs_int8(CompressionPolicy(layers={"fc": LayerPolicy(bits=16, prune=0.5)}))
    False
    """
    return any(lp.bits in QUANT_BITS for lp in policy.layers.values())


class BatchReader(CalibrationDataReader):
    """Feeds ``batches`` (float32 arrays) to ONNX Runtime's calibrator under ``input_name``."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name = input_name
        self._batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
        self._it: Iterator[np.ndarray] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def calibration_batches(
    loader: Iterable | None, example_input: torch.Tensor, batch_size: int,
    n_batches: int = CALIBRATION_BATCHES,
) -> list[np.ndarray]:
    """Up to ``n_batches`` input batches of ``batch_size`` rows from ``loader``'s inputs.

    Rows are regrouped so every batch has exactly the target batch size (the
    last short one is dropped); with no data, the example input repeated.
    """
    rows: list[torch.Tensor] = []
    need = batch_size * n_batches
    if loader is not None:
        for batch in loader:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            rows.append(torch.as_tensor(x).detach().cpu())
            if sum(r.shape[0] for r in rows) >= need:
                break
    if not rows:
        x = example_input[:1].expand(batch_size, *example_input.shape[1:])
        return [x.contiguous().numpy().astype(np.float32)]
    data = torch.cat(rows)[:need]
    full = max(1, data.shape[0] // batch_size)
    return [data[i * batch_size:(i + 1) * batch_size].numpy().astype(np.float32)
            for i in range(full)]


def strip_fake_quant(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every activation fake-quantiser replaced by ``nn.Identity``."""
    out = copy.deepcopy(model)
    for name, module in list(out.named_modules()):
        if isinstance(module, ActFakeQuant):
            parent_name, _, attr = name.rpartition(".")
            parent = out.get_submodule(parent_name) if parent_name else out
            setattr(parent, attr, nn.Identity())
    return out.eval()


def export_int8(
    model: nn.Module,
    example_input: torch.Tensor,
    out_path: str | Path,
    batches: list[np.ndarray],
) -> Path:
    """Quantise ``model`` statically to int8 (QDQ; per-channel int8 weights, uint8 activations).

    Calibration runs ``batches`` through ONNX Runtime (MinMax). Raises
    :class:`MethodError` when ONNX Runtime cannot quantise the graph.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(strip_fake_quant(model), example_input, fp32)
        prep = Path(tmp) / "prep.onnx"
        try:
            # Shape inference + graph clean-up, as ONNX Runtime's docs advise before quantising.
            quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
            source = prep
        except Exception:  # pre-processing is an optimisation; the raw graph quantises too
            source = fp32
        import onnx

        input_name = onnx.load(str(source)).graph.input[0].name
        try:
            quantize_static(
                str(source), str(out), BatchReader(input_name, batches),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )
        except Exception as exc:
            raise MethodError(
                f"ONNX Runtime could not quantise the best model to int8 ({exc}); the float "
                "model_best.onnx is still exported"
            ) from exc
    return out

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
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from torch import nn

from autocompress import inputs
from autocompress.errors import MethodError
from autocompress.inputs import ModelInput
from autocompress.methods.quantize import QUANT_BITS, ActFakeQuant
from autocompress.policy import CompressionPolicy
from autocompress.runtime.onnx import export_onnx, ort_session

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
    """Feeds ``feeds`` (ONNX Runtime feed dicts: input name -> array) to its calibrator."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._batches = list(feeds)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def calibration_batches(
    loader: Iterable | None, example_input: ModelInput, batch_size: int,
    n_batches: int = CALIBRATION_BATCHES,
) -> list[ModelInput]:
    """Up to ``n_batches`` input batches of ``batch_size`` rows from ``loader``'s inputs.

    Rows are regrouped so every batch has exactly the target batch size (the
    last short one is dropped); with no data, the example input repeated. Inputs keep
    their form (tensor, tuple or dict) and every tensor its dtype; batches whose shapes
    differ beyond the batch axis (padded text) are used one by one, as they come.

    >>> import torch
    >>> batches = calibration_batches(None, {"ids": torch.ones(1, 4, dtype=torch.long)}, 2)
    >>> len(batches), batches[0]["ids"].shape, batches[0]["ids"].dtype
    (1, torch.Size([2, 4]), torch.int64)
    """
    rows: list[ModelInput] = []
    need = batch_size * n_batches
    if loader is not None:
        for batch in loader:
            rows.append(inputs.detached(inputs.split_batch(batch)[0]))
            if sum(inputs.batch_size(r) for r in rows) >= need:
                break
    if not rows:
        return [inputs.batched(example_input, batch_size)]
    if len({inputs.signature_key(r) for r in rows}) > 1:
        # Padded text batches differ in length and cannot be joined: each one calibrates.
        return [inputs.take(r, batch_size) for r in rows[:n_batches]]
    data = inputs.take(inputs.concat(rows), need)
    full = max(1, inputs.batch_size(data) // batch_size)
    return [inputs.take(inputs.skip(data, i * batch_size), batch_size) for i in range(full)]


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
    example_input: ModelInput,
    out_path: str | Path,
    batches: list[ModelInput],
) -> Path:
    """Quantise ``model`` statically to int8 (QDQ; per-channel int8 weights, uint8 activations).

    Calibration runs ``batches`` (model inputs of any form, fed to ONNX Runtime by
    name in their own dtypes) through ONNX Runtime (MinMax). Raises
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
        reference = ort_session(source)
        feeds = [inputs.ort_feed(reference, b) for b in batches]
        root = logging.getLogger()
        level = root.level
        # The quantiser logs to the root logger that a 1-D weight (a LayerNorm's) has no
        # channel axis and is quantised per tensor: expected, and nothing a user can act on.
        root.setLevel(logging.ERROR)
        try:
            quantize_static(
                str(source), str(out), BatchReader(feeds),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )
        except Exception as exc:
            raise MethodError(
                f"ONNX Runtime could not quantise the best model to int8 ({exc}); the float "
                "model_best.onnx is still exported"
            ) from exc
        finally:
            root.setLevel(level)
    return out

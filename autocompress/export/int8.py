"""``model_best.int8.onnx``: ONNX Runtime int8 quantisation with per-channel int8 weights.

Used when the best policy quantises some layer's weights to 8 bits or fewer:
the policy's bit widths are then a claim that the model survives integer
weights, and this file is that model in the form ONNX Runtime runs with
integer kernels. The float graph it starts from has autocompress's own
activation fake-quantisers removed (:func:`strip_fake_quant`).

Which quantisation depends on the graph (:func:`int8_mode`):

- with convolutions, ``static``: QDQ, activation ranges calibrated once on real batches
  (MinMax), so convs, adds and pools run as one int8 chain;
- without (transformers, MLPs), ``dynamic``: only MatMul and Gemm, each activation's
  range taken per call. A transformer's activations (LayerNorm outputs, attention
  scores) have outliers that one calibrated range cannot hold: all-MiniLM-L6-v2 kept a
  cosine of 0.40 to its float embeddings under static quantisation, 0.94 with only its
  Linear layers static, and 0.993 dynamic, which also ran fastest.
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
    quantize_dynamic,
    quantize_static,
)
from torch import nn

from autocompress import inputs
from autocompress.errors import MethodError
from autocompress.inputs import ModelInput
from autocompress.methods.quantize import QUANT_BITS, ActFakeQuant
from autocompress.policy import CompressionPolicy
from autocompress.runtime.onnx import OnnxFile, export_onnx, ort_session

CALIBRATION_BATCHES = 4
DYNAMIC_OPS = ("MatMul", "Gemm")


def needs_int8(policy: CompressionPolicy) -> bool:
    """True when some layer's weights are quantised to 8 bits or fewer while its inputs stay
    float: only then does an int8 file add integer kernels to ``model_best.onnx``.

    A layer with 8-bit inputs too exports as a QuantizeLinear/DequantizeLinear pair that
    ONNX Runtime already runs as an integer kernel, with the ranges its fine-tune trained;
    quantising that graph again would discard them (ONNX Runtime warns that a QAT model
    needs no quantisation) and, for MiniLM at 8/8 everywhere, ran slower (109 ms against
    50 ms).

    >>> from autocompress.policy import LayerPolicy
    >>> needs_int8(CompressionPolicy(layers={"fc": LayerPolicy(bits=6)}))
    True
    >>> needs_int8(CompressionPolicy(layers={"fc": LayerPolicy(bits=8, act_bits=8)}))
    False
    >>> needs_int8(CompressionPolicy(layers={"fc": LayerPolicy(bits=16, prune=0.5)}))
    False
    """
    return any(lp.bits in QUANT_BITS and lp.act_bits != 8 for lp in policy.layers.values())


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


def int8_mode(onnx_path: str | Path) -> str:
    """``static`` for a graph with convolutions, else ``dynamic`` (see the module doc).

    >>> import tempfile, torch
    >>> from autocompress.runtime.onnx import export_onnx
    >>> tmp = Path(tempfile.mkdtemp())
    >>> _ = export_onnx(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), torch.zeros(1, 4),
    ...                 tmp / "mlp.onnx")
    >>> _ = export_onnx(nn.Conv2d(1, 2, 3), torch.zeros(1, 1, 5, 5), tmp / "cnn.onnx")
    >>> int8_mode(tmp / "mlp.onnx"), int8_mode(tmp / "cnn.onnx")
    ('dynamic', 'static')
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return "static" if any(node.op_type == "Conv" for node in graph.node) else "dynamic"


def export_int8(
    model: nn.Module,
    example_input: ModelInput,
    out_path: str | Path,
    batches: list[ModelInput],
) -> Path:
    """Quantise ``model`` to int8: per-channel int8 weights, activations as :func:`int8_mode`
    decides (static: uint8 QDQ calibrated on ``batches``; dynamic: ranges per call).

    Calibration runs ``batches`` (model inputs of any form, fed to ONNX Runtime by
    name in their own dtypes) through ONNX Runtime (MinMax). Raises
    :class:`MethodError` when ONNX Runtime cannot quantise the graph.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        # A graph past protobuf's 2 GiB is quantised with its weights kept beside it.
        large = isinstance(export_onnx(strip_fake_quant(model), example_input, fp32), OnnxFile)
        prep = Path(tmp) / "prep.onnx"
        try:
            # Shape inference + graph clean-up, as ONNX Runtime's docs advise before quantising.
            quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True,
                              save_as_external_data=large)
            source = prep
        except Exception:  # pre-processing is an optimisation; the raw graph quantises too
            source = fp32
        mode = int8_mode(source)
        root = logging.getLogger()
        level = root.level
        # The quantiser logs to the root logger that a 1-D weight (a LayerNorm's) has no
        # channel axis and is quantised per tensor: expected, and nothing a user can act on.
        root.setLevel(logging.ERROR)
        try:
            if mode == "dynamic":
                quantize_dynamic(str(source), str(out), per_channel=True,
                                 weight_type=QuantType.QInt8,
                                 op_types_to_quantize=list(DYNAMIC_OPS),
                                 use_external_data_format=large)
            else:
                reference = ort_session(source)
                feeds = [inputs.ort_feed(reference, b) for b in batches]
                quantize_static(
                    str(source), str(out), BatchReader(feeds),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    use_external_data_format=large,
                )
        except Exception as exc:
            raise MethodError(
                f"ONNX Runtime could not quantise the best model to int8 ({exc}); the float "
                "model_best.onnx is still exported"
            ) from exc
        finally:
            root.setLevel(level)
    return out

"""``quantize``: per-layer weight fake-quantisation (2..8 bits), optional 8-bit input activations.

Weights: symmetric, per output channel, ``scale = max|w_c| / (2^(b-1) - 1)``,
values ``round(w / scale)`` clipped to ``[-(2^(b-1) - 1), 2^(b-1) - 1]``; the
quantised values are baked into the float weight, so every runtime and the
ONNX export see them with nothing special. ``bits`` 16 and 32 leave the
weights as they are (float).

Activations (``act_bits: 8``): the layer's *input* is fake-quantised per
tensor (asymmetric uint8) with a scale and zero point observed by
``torch.ao.quantization.MinMaxObserver`` on calibration batches (by default
the example input). The layer is wrapped as
``Sequential(ActFakeQuant, layer)``, so it sits at ``<fqn>.1`` (its low-rank
factors at ``<fqn>.1.0``/``<fqn>.1.1``) and exports to ONNX
QuantizeLinear/DequantizeLinear.

Where a layer has both quantised weights and 8-bit inputs, the module that
reads the quantised input (the layer, or its first factor) also carries its
weight scales and exports its weight as int8 QuantizeLinear/DequantizeLinear
(:class:`QDQConv2d`, :class:`QDQLinear`). ONNX Runtime then fuses it into an
integer kernel with exactly these weights; with a bare float weight it would
re-quantise the weight itself (per tensor) and disagree with PyTorch. Integer
kernels re-quantise their outputs, so ONNX Runtime still differs from PyTorch
by a rounding step here and there. With 8-bit weights, ONNX Runtime's
uint8 x int8 kernels can saturate on CPUs without VNNI: there they sum pairs of
products in 16 bits (VPMADDUBSW); 7 bits or fewer avoid that.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver

from autocompress import inputs
from autocompress.errors import MethodError
from autocompress.inputs import ModelInput
from autocompress.inventory import LayerInventory
from autocompress.methods.registry import register_method, replace_module, weight_modules
from autocompress.policy import CompressionPolicy

QUANT_BITS = range(2, 9)  # bits that fake-quantise; 16 and 32 stay float


def weight_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale ``max|w_c| / (2^(bits-1) - 1)`` (1.0 for an all-zero channel).

    >>> weight_scale(torch.tensor([[0.5, -1.4], [0.0, 0.0]]), 8)
    tensor([0.0110, 1.0000])
    """
    qmax = 2 ** (bits - 1) - 1
    amax = weight.detach().reshape(weight.shape[0], -1).abs().amax(dim=1)
    # any scale represents an all-zero channel; 1.0 keeps int32 bias scales in range
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel fake-quantisation of ``weight`` (dim 0 = output channels).

    >>> w = torch.tensor([[0.5, -1.0, 0.26], [2.0, 0.1, -0.9]])
    >>> quantize_weight(w, 2)
    tensor([[ 0., -1.,  0.],
            [ 2.,  0., -0.]])
    >>> len(quantize_weight(torch.randn(8, 50), 4)[0].unique()) <= 15
    True
    """
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach()
    s = weight_scale(w, bits).reshape((-1,) + (1,) * (w.dim() - 1))
    return torch.clamp(torch.round(w / s), -qmax, qmax) * s


class _WeightQDQ:
    """Fake-quantises the (already quantised) weight with fixed per-channel scales in forward.

    The values do not change (they are on the grid already); the point is the
    ONNX graph: the weight becomes int8 + DequantizeLinear, as ONNX Runtime
    needs to run the layer as an integer kernel with exactly these weights.
    """

    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor

    def qdq_weight(self) -> torch.Tensor:
        weight: torch.Tensor = self.weight  # type: ignore[attr-defined]
        return torch.fake_quantize_per_channel_affine(
            weight, self.weight_scale, self.weight_zero_point, 0, -128, 127
        )


class QDQConv2d(_WeightQDQ, nn.Conv2d):
    """A Conv2d whose weight exports as int8 QuantizeLinear/DequantizeLinear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.qdq_weight(), self.bias)


class QDQLinear(_WeightQDQ, nn.Linear):
    """A Linear whose weight exports as int8 QuantizeLinear/DequantizeLinear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.qdq_weight(), self.bias)


def attach_weight_qdq(module: nn.Conv2d | nn.Linear, scale: torch.Tensor) -> None:
    """Turn ``module`` into a :class:`QDQConv2d`/:class:`QDQLinear` in place (same parameters)."""
    module.register_buffer("weight_scale", scale.detach().float().clone())
    module.register_buffer(
        "weight_zero_point", torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
    )
    module.__class__ = QDQConv2d if isinstance(module, nn.Conv2d) else QDQLinear


class ActFakeQuant(nn.Module):
    """Per-tensor uint8 fake-quantisation of the input (QuantizeLinear/DequantizeLinear in ONNX).

    >>> q = ActFakeQuant(scale=0.5, zero_point=0)
    >>> q(torch.tensor([0.2, 0.3, 200.0]))
    tensor([  0.0000,   0.5000, 127.5000])
    """

    quant_min = 0
    quant_max = 255
    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, scale: float, zero_point: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(int(zero_point), dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max
        )

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):.6g}, zero_point={int(self.zero_point)}, uint8"


def _batches(calibration: Iterable | None, example_input: ModelInput) -> Iterable[ModelInput]:
    """Calibration inputs; DataLoader batches ``(inputs, labels)`` give their inputs."""
    if calibration is None:
        yield example_input
        return
    for batch in calibration:
        yield inputs.split_batch(batch)[0]


@torch.no_grad()
def calibrate_inputs(
    model: nn.Module, fqns: list[str], batches: Iterable[ModelInput]
) -> dict[str, MinMaxObserver]:
    """Run ``batches`` through ``model`` and observe the input range of each layer in ``fqns``."""
    observers = {
        fqn: MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine) for fqn in fqns
    }
    hooks = []
    for fqn in fqns:
        def hook(mod: nn.Module, args: tuple, fqn: str = fqn) -> None:
            observers[fqn](args[0].detach())
        hooks.append(model.get_submodule(fqn).register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            inputs.call(model, x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for fqn, obs in observers.items():
        if not torch.isfinite(obs.min_val) or not torch.isfinite(obs.max_val):
            raise MethodError(
                f"quantize: layer {fqn!r} saw no input during calibration; give calibration "
                "batches that reach it, or set its act_bits to 32"
            )
    return observers


@register_method
class Quantize:
    """Fake-quantise weights (``bits`` 2..8) and, with ``act_bits: 8``, the layer inputs."""

    name = "quantize"
    knob = "bits"

    def apply(
        self,
        model: nn.Module,
        policy: CompressionPolicy,
        inventory: LayerInventory,
        example_input: ModelInput,
        calibration: Iterable[Any] | None,
    ) -> nn.Module:
        scales: dict[str, torch.Tensor] = {}  # fqn -> scales of the module reading its input
        with torch.no_grad():
            for fqn, lp in policy.layers.items():
                if lp.bits is None or lp.bits not in QUANT_BITS:
                    continue
                for i, (_name, module) in enumerate(weight_modules(model, fqn)):
                    if i == 0:
                        scales[fqn] = weight_scale(module.weight, lp.bits)
                    module.weight.copy_(quantize_weight(module.weight, lp.bits))
        act = [fqn for fqn, lp in policy.layers.items() if lp.act_bits == 8]
        if act:
            # Observed on the weight-quantised model, all layers in one pass (as torch.ao's
            # post-training calibration does).
            observers = calibrate_inputs(model, act, _batches(calibration, example_input))
            for fqn in act:
                scale, zero_point = observers[fqn].calculate_qparams()
                layer = model.get_submodule(fqn)
                if fqn in scales:
                    attach_weight_qdq(weight_modules(model, fqn)[0][1], scales[fqn])
                quant = ActFakeQuant(float(scale), int(zero_point)).to(inputs.device_of(example_input))
                replace_module(model, fqn, nn.Sequential(quant, layer))
        return model

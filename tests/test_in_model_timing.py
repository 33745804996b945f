"""Layers timed inside the uncompressed model: which kernel is which layer, and the excess the
latency table keeps per layer (autocompress.cost.timing.in_model_layer_ms)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from autocompress.cost.latency import layer_kernels


def test_layer_kernels_names_each_digits_layer_in_onnx_runtimes_optimised_graph(tmp_path) -> None:
    from autocompress.inventory import build_inventory
    from autocompress.models import DigitsCNN
    from autocompress.runtime.onnx import export_onnx, ort_session, session_options

    model, x = DigitsCNN().eval(), torch.zeros(1, 1, 8, 8)
    inv = build_inventory(model, x)
    opts = session_options(1)
    opts.optimized_model_filepath = os.path.join(tmp_path, "optimized.onnx")
    ort_session(export_onnx(model, x), opts=opts)
    graph = onnx.load(opts.optimized_model_filepath).graph
    nodes = layer_kernels(graph, list(inv.fqns))
    ops = {n.name: n.op_type for n in graph.node}
    # Each conv is fused with its ReLU (named after the ReLU's output), so order decides;
    # the Linear layers are found by name.
    assert sorted(nodes) == sorted(inv.fqns)
    assert len(set(nodes.values())) == 4
    assert ops[nodes["features.0"]] == "Conv" and ops[nodes["features.2"]] == "Conv"
    assert "classifier.1" in nodes["classifier.1"] and "classifier.3" in nodes["classifier.3"]
    order = [n.name for n in graph.node]
    assert order.index(nodes["features.0"]) < order.index(nodes["features.2"])


def test_a_layer_named_by_its_node_keeps_it_when_the_graph_runs_it_out_of_order() -> None:
    # resnet's downsample conv runs before conv2 in ONNX Runtime's graph, in the model after it.
    w = [numpy_helper.from_array(np.zeros((4, 4), np.float32), f"w{i}") for i in range(3)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="/layer/relu/Relu_output_0"),
             helper.make_node("Conv", ["x", "w1"], ["b"], name="/layer/downsample/Conv"),
             helper.make_node("Conv", ["a", "w2"], ["c"], name="/layer/relu_1/Relu_output_0"),
             helper.make_node("Add", ["b", "c"], ["y"], name="/layer/Add")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], w)
    got = layer_kernels(graph, ["layer.conv1", "layer.conv2", "layer.downsample"])
    assert got == {"layer.downsample": "/layer/downsample/Conv",
                   "layer.conv1": "/layer/relu/Relu_output_0",
                   "layer.conv2": "/layer/relu_1/Relu_output_0"}


def test_each_layers_excess_in_the_model_is_kept_and_goes_as_its_weights(tmp_path) -> None:
    from autocompress.cost import LatencyLUT, parse_target
    from autocompress.cost.analytic import compressed_shapes
    from autocompress.inventory import build_inventory
    from autocompress.models import DigitsMLP
    from autocompress.policy import CompressionPolicy, LayerPolicy

    model, x = DigitsMLP().eval(), torch.zeros(1, 1, 8, 8)
    inv = build_inventory(model, x)
    lut = LatencyLUT(tmp_path / "lut.json", parse_target("ort-1t-b64"))
    fit = lut.whole_model_fit(inv, model, x)
    assert set(fit["excess_ms"]) == set(inv.fqns)  # every Linear placed in ONNX Runtime's graph
    # The uncompressed model is predicted at its measured time, excess and all.
    assert lut.predict(None, inv, model, x) == pytest.approx(fit["model_ms"])
    half = CompressionPolicy(layers={"net.3": LayerPolicy(rank=128)})  # 512x512 -> 2 x 512x128
    pred = lut.predict_breakdown(half, inv, model, x)
    shape = compressed_shapes(half, inv)[1]
    entry = lut.layer_ms(shape, compressed_shapes(CompressionPolicy(layers={}), inv)[1])
    assert shape.mac_units == 512 * 128 * 2
    assert pred.layers_ms["net.3"] == pytest.approx(entry + fit["excess_ms"]["net.3"] * 0.5)
    assert pred.remainder_ms == pytest.approx(
        fit["remainder_ms"] - sum(fit["excess_ms"].values()))


def test_a_torch_table_keeps_no_excess(tmp_path) -> None:
    from autocompress.cost import LatencyLUT, parse_target
    from autocompress.inventory import build_inventory
    from autocompress.models import DigitsMLP

    model, x = DigitsMLP().eval(), torch.zeros(1, 1, 8, 8)
    lut = LatencyLUT(tmp_path / "lut.json", parse_target("torch-1t-b8"))
    assert "excess_ms" not in lut.whole_model_fit(build_inventory(model, x), model, x)

"""benchmarks/layer_probes.py --context: which kernel of a model's ONNX Runtime graph is which layer."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def _bench():  # the benchmark is a script, not a package module
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("layer_probes",
                                                  ROOT / "benchmarks" / "layer_probes.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_layer_nodes_names_each_digits_layer_in_onnx_runtimes_optimised_graph(tmp_path) -> None:
    from autocompress.inventory import build_inventory
    from autocompress.models import DigitsCNN
    from autocompress.runtime.onnx import export_onnx, ort_session, session_options

    model, x = DigitsCNN().eval(), torch.zeros(1, 1, 8, 8)
    inv = build_inventory(model, x)
    opts = session_options(1)
    opts.optimized_model_filepath = os.path.join(tmp_path, "optimized.onnx")
    ort_session(export_onnx(model, x), opts=opts)
    graph = onnx.load(opts.optimized_model_filepath).graph
    nodes = _bench().layer_nodes(graph, list(inv.fqns))
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
    got = _bench().layer_nodes(graph, ["layer.conv1", "layer.conv2", "layer.downsample"])
    assert got == {"layer.downsample": "/layer/downsample/Conv",
                   "layer.conv1": "/layer/relu/Relu_output_0",
                   "layer.conv2": "/layer/relu_1/Relu_output_0"}

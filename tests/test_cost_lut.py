"""The per-layer latency table: measures what apply_policy builds, caches it by target
fingerprint in one JSON file, and learns (never assumes) what 8-bit QDQ costs."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from torch import nn

from autocompress.cost import LatencyLUT, compressed_shapes, parse_target
from autocompress.cost.lut import activation_share
from autocompress.cost.lut_store import layer_key
from autocompress.cost.timing import layer_module
from autocompress.errors import InputFileError, TargetError
from autocompress.inventory import build_inventory
from autocompress.methods import apply_policy
from autocompress.models import DigitsCNN
from autocompress.policy import CompressionPolicy, LayerPolicy
from autocompress.runtime.onnx import export_onnx

pytestmark = pytest.mark.filterwarnings("ignore::autocompress.methods.LowRankSkipped")

X = torch.zeros(1, 1, 8, 8)
FAST = "torch-1t-b4"


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    return model, build_inventory(model, X)


def _structure(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(type(m).__name__, tuple(m.weight.shape) if hasattr(m, "weight") else ())
            for m in module.modules() if not isinstance(m, nn.Sequential)]


@pytest.mark.parametrize(
    "lp",
    [LayerPolicy(prune=0.5), LayerPolicy(rank=8), LayerPolicy(act_bits=8),
     LayerPolicy(rank=8, bits=4, act_bits=8), LayerPolicy(bits=6, act_bits=8, sparsity=0.5)],
)
def test_layer_module_has_the_structure_apply_policy_builds(cnn, lp):
    model, inv = cnn
    policy = CompressionPolicy(layers={"features.2": lp, "features.0": LayerPolicy(prune=0.25)})
    small = apply_policy(model, policy, X, inventory=inv)
    for shape in compressed_shapes(policy, inv):
        built = small.get_submodule(shape.fqn)
        assert _structure(layer_module(shape)) == _structure(built), shape.fqn


def test_caching_counts_measurements_and_reuses_the_file(cnn, tmp_path):
    model, inv = cnn
    path = tmp_path / "latency_lut.json"
    policy = CompressionPolicy(layers={"features.0": LayerPolicy(prune=0.5)})
    lut = LatencyLUT(path, parse_target(FAST))
    first = lut.predict(policy, inv, model, X)
    n_layers, n_models = lut.measured, lut.model_measurements
    # one whole-model measurement: the uncompressed model
    assert first > 0 and n_layers >= len(inv) and n_models == 1
    fit = lut.whole_model_fit(inv, None, X)
    assert set(fit) == {"model_ms", "layers_ms", "remainder_ms"}
    assert fit["remainder_ms"] == pytest.approx(fit["model_ms"] - fit["layers_ms"])
    # the uncompressed model is predicted as measured; bits alone leave the graph as it is
    assert lut.predict(None, inv) == pytest.approx(fit["model_ms"])
    assert lut.predict(CompressionPolicy(layers={"features.2": LayerPolicy(bits=4)}), inv) \
        == pytest.approx(fit["model_ms"])
    assert lut.predict(policy, inv, model, X) == first and lut.measured == n_layers  # cache hit

    again = LatencyLUT(path, parse_target(FAST))  # a new process would do the same
    assert again.predict(policy, inv) == first  # remainder cached: model not even needed
    assert again.measured == 0 and again.model_measurements == 0

    other = LatencyLUT(path, parse_target("torch-1t-b2"))  # other fingerprint: its own entries
    other.predict(policy, inv, model, X)
    assert other.measured >= len(inv)
    data = json.loads(path.read_text())
    assert data["format"] == "autocompress.latency_lut"
    assert set(data["targets"]) == {lut.key, other.key} and lut.key != other.key
    for entry in data["targets"].values():
        assert entry["env"]["cpu"] and entry["layers"] and entry["models"]


def test_weight_bits_and_sparsity_share_the_float_entry_but_act8_is_measured(cnn):
    model, inv = cnn
    lut = LatencyLUT(None, parse_target(FAST))
    lut.predict(None, inv, model, X)
    base = lut.measured
    lut.predict(CompressionPolicy(layers={"features.2": LayerPolicy(bits=4, sparsity=0.7)}), inv)
    assert lut.measured == base  # baked into float weights: the float entry serves
    act8 = CompressionPolicy(layers={"features.2": LayerPolicy(act_bits=8)})
    pred = lut.predict_breakdown(act8, inv)
    # the QDQ variant is an entry of its own, measured (now, or by a calibration model
    # that happened to hold the same layer), never derived from the float one
    assert lut.measured in (base, base + 1)
    shape = compressed_shapes(act8, inv)[1]
    key = layer_key(shape, 4)
    float_key = layer_key(compressed_shapes(CompressionPolicy(layers={}), inv)[1], 4)
    assert "|a=8|" in key and key in lut.entries and key != float_key
    assert lut.entries[key]["runs"] > 0
    # the prediction is what was measured for the QDQ layer, speed-up or not
    assert pred.layers_ms["features.2"] == lut.entries[key]["ms"]
    # 8-bit inputs change the graph: the prediction is the layers' sum, with the QDQ layer's
    # own entry, plus the remainder, which is not scaled: the layers write what they wrote
    fit = lut.whole_model_fit(inv, None, X)
    layers = sum(pred.layers_ms.values())
    assert pred.latency_ms == pytest.approx(layers + max(fit["remainder_ms"], -0.5 * layers))
    # pruned channels shrink the remainder with the activations the layers write
    pruned = CompressionPolicy(layers={"features.2": LayerPolicy(prune=0.5)})
    share = activation_share(compressed_shapes(pruned, inv), inv)
    assert 0 < share < 1
    assert lut.predict_breakdown(pruned, inv, model, X).remainder_ms == pytest.approx(
        max(fit["remainder_ms"] * share, -0.5 * sum(lut.predict_breakdown(
            pruned, inv).layers_ms.values())))


def test_ort_layer_module_exports_qdq(cnn):
    _model, inv = cnn
    policy = CompressionPolicy(layers={"features.2": LayerPolicy(act_bits=8, bits=8)})
    shape = compressed_shapes(policy, inv)[1]
    graph = onnx.load_from_string(export_onnx(layer_module(shape), torch.zeros(1, 32, 8, 8)))
    ops = [n.op_type for n in graph.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "Conv" in ops
    assert "|w=8|" in layer_key(shape, 1)


def test_ort_predict_is_positive_and_sums_parts(cnn, tmp_path):
    model, inv = cnn
    lut = LatencyLUT(tmp_path / "lut.json", parse_target("ort-1t-b4"))
    p = lut.predict_breakdown(CompressionPolicy(layers={"features.2": LayerPolicy(rank=8)}), inv,
                              model, X)
    assert p.latency_ms == pytest.approx(sum(p.layers_ms.values()) + p.remainder_ms)
    assert all(v > 0 for v in p.layers_ms.values())
    table = lut.layer_table(inv)
    assert [r["fqn"] for r in table] == inv.fqns
    assert sum(r["share"] for r in table) == pytest.approx(1.0)
    assert table[1]["macs"] == inv["features.2"].macs * 4  # at the target batch


def test_lut_errors(cnn, tmp_path):
    _model, inv = cnn
    with pytest.raises(TargetError, match="no batch size"):
        LatencyLUT(None, parse_target("torch"))
    with pytest.raises(TargetError, match="no whole-model measurement"):
        LatencyLUT(None, parse_target(FAST)).predict(None, inv)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputFileError, match="delete it to rebuild"):
        LatencyLUT(bad, parse_target(FAST))


def test_costs_and_baseline_feed_a_budget(cnn):
    from autocompress.cost import parse_budget

    model, inv = cnn
    lut = LatencyLUT(None, parse_target(FAST))
    base = lut.baseline_costs(inv, model, X)
    assert base.latency_ms == pytest.approx(lut.predict(None, inv))  # empty policy = measured
    small = lut.costs(CompressionPolicy(layers={"features.2": LayerPolicy(prune=0.5)}), inv)
    assert small.macs < base.macs and small.latency_ms is not None and small.latency_ms > 0
    ok, violations = parse_budget("macs<=0.9x,latency<=100x").check(small, base)
    assert ok and set(violations) == {"macs", "latency"}


def test_a_stale_whole_model_fit_is_forgotten_and_remeasured(cnn, tmp_path):
    model, inv = cnn
    lut = LatencyLUT(tmp_path / "lut.json", parse_target(FAST))
    fit = lut.whole_model_fit(inv, model, X)
    true_ms = fit["model_ms"]
    assert not lut.forget_model_if_stale(inv, X, true_ms * 1.1)  # within tolerance: kept
    fit["model_ms"] = true_ms * 5  # as if measured while another job loaded the machine
    assert lut.forget_model_if_stale(inv, X, true_ms)
    assert lut.entries == {}  # layers timed in the same period are redone too
    lut.save()
    assert LatencyLUT(tmp_path / "lut.json", parse_target(FAST)).entries == {}  # not merged back
    before = lut.model_measurements
    again = lut.whole_model_fit(inv, model, X)
    assert lut.model_measurements > before  # re-measured, not read back
    assert again["model_ms"] < true_ms * 5


def test_validate_scores_given_policies_absolute_and_relative(cnn, tmp_path):
    """validate() scores the policies it is given (here: a random search's draws from the
    digits space), each timed alongside the uncompressed model."""
    from autocompress.cost.fidelity import validate
    from autocompress.cost.sampling import space_policies
    from autocompress.space import SearchSpace

    model, inv = cnn
    policies = space_policies(SearchSpace.embedded("digits").resolve(inv), 3, seed=1)
    lut = LatencyLUT(tmp_path / "lut.json", parse_target(FAST), model_runs=5)
    seen = []
    report = validate(model, X, inv, lut, n=99, runs=6, policies=policies, retest=True,
                      progress=lambda i, total: seen.append((i, total)))
    assert [r["layers"] for r in report.rows] == [p.to_dict()["layers"] for p in policies]
    rows, base = report.rows, report.baseline_ms
    measured, ratios = [r["measured_ms"] for r in rows], [r["measured_ratio"] for r in rows]
    # each score compares its own predictions with its own measurements (absolute or ratio)
    pairs = {
        "lut": ([r["lut_ms"] for r in rows], measured),
        "macs": ([r["macs_ms"] for r in rows], measured),
        "lut_relative": ([r["lut_ms"] / base for r in rows], ratios),
        "macs_relative": ([r["macs_ms"] / base for r in rows], ratios),
        "retest": ([r["retest_measured_ms"] for r in rows], measured),
        "retest_relative": ([r["retest_ratio"] for r in rows], ratios),
    }
    for name, (predicted, truth) in pairs.items():
        scores = getattr(report, name)
        assert set(scores) == {"kendall_tau", "mape", "within_10pct"}
        errors = [abs(p - m) / m for p, m in zip(predicted, truth, strict=True)]
        assert scores["mape"] == pytest.approx(100 * sum(errors) / len(errors)), name
        assert scores["within_10pct"] == pytest.approx(
            100 * sum(e <= 0.10 for e in errors) / len(errors)), name
    # the digits space prunes at most 75% of channels: every model keeps a measurable share
    # (no upper bound: on a loaded 2-core machine 6 runs of a small model read over 2x)
    assert all(r["measured_ratio"] > 0.05 for r in report.rows)
    # the retest measured every policy a second time, in a pass of its own
    assert seen[-1] == (6, 6)
    assert all(r["retest_measured_ms"] > 0 and r["retest_ratio"] > 0.05 for r in report.rows)
    first = [r["measured_ms"] for r in report.rows]
    assert report.retest["mape"] == pytest.approx(100 * sum(
        abs(r["retest_measured_ms"] - m) / m for r, m in zip(report.rows, first, strict=True)) / 3)


@pytest.mark.parametrize("target", [FAST, "ort-1t-b4"])
def test_a_compressed_layer_is_stored_as_a_ratio_to_its_uncompressed_layer(cnn, target):
    """Timed in blocks alternating with the uncompressed layer, so both share one scale."""
    model, inv = cnn
    lut = LatencyLUT(None, parse_target(target))
    policy = CompressionPolicy(layers={"features.0": LayerPolicy(prune=0.5)})
    lut.layers_ms(policy, inv)
    base = {s.fqn: layer_key(s, 4) for s in compressed_shapes(CompressionPolicy(layers={}), inv)}
    pruned = {s.fqn: layer_key(s, 4) for s in compressed_shapes(policy, inv)}
    changed = [fqn for fqn in pruned if pruned[fqn] != base[fqn]]
    assert changed == ["features.0", "features.2"]  # the pruned conv and the next one's input
    for fqn in changed:
        entry, ref = lut.entries[pruned[fqn]], lut.entries[base[fqn]]
        assert entry["reference"] == base[fqn] and "reference" not in ref
        assert entry["ms"] == pytest.approx(entry["ratio"] * ref["ms"])
        assert 0 < entry["ratio"] < 1.5 and entry["alone_ms"] > 0


def test_a_table_timed_the_old_way_is_measured_again(cnn, tmp_path):
    model, inv = cnn
    path = tmp_path / "lut.json"
    lut = LatencyLUT(path, parse_target(FAST))
    lut.predict(None, inv, model, X)
    data = json.loads(path.read_text())
    entry = data["targets"][lut.key]
    del entry["layer_method"]  # as written before layer entries were paired
    entry["layers"]["Conv2d|stale"] = {"ms": 1.0}
    path.write_text(json.dumps(data))
    again = LatencyLUT(path, parse_target(FAST))
    assert again.entries == {} and again._entry["models"] == {}
    again.predict(None, inv, model, X)
    assert again.measured >= len(inv)
    assert "Conv2d|stale" not in json.loads(path.read_text())["targets"][lut.key]["layers"]


def _optimized_graph(module: nn.Module, x: torch.Tensor, tmp_path) -> onnx.GraphProto:
    import onnxruntime as ort

    from autocompress.runtime.onnx import session_options

    opts = session_options(1)
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(export_onnx(module, x), sess_options=opts,
                         providers=["CPUExecutionProvider"])
    return onnx.load(opts.optimized_model_filepath).graph


def _optimized_ops(module: nn.Module, x: torch.Tensor, tmp_path) -> list[str]:
    return [n.op_type for n in _optimized_graph(module, x, tmp_path).node]


def test_a_layer_whose_consumer_quantises_its_input_is_timed_as_the_integer_kernel(tmp_path):
    """ONNX Runtime fuses DQ -> Gemm -> Q into QGemm inside the model; the entry must see that."""
    from autocompress.cost.lut import with_int8_fusion
    from autocompress.cost.timing import kernel_ops_elsewhere
    from autocompress.models import DigitsMLP

    inv = build_inventory(DigitsMLP(), X)
    policy = CompressionPolicy(layers={"net.3": LayerPolicy(act_bits=8),
                                       "net.5": LayerPolicy(act_bits=8)})
    plain = compressed_shapes(policy, inv)
    fused = with_int8_fusion(plain, inv, ["net.1", "net.3"])
    net3, net5 = fused[1], fused[2]
    assert (net3.q_out, net3.q_in, net5.q_in, net5.q_out) == (True, False, True, False)
    # Alone, net.3 is a float Gemm between quantisers; with q_out it is the integer kernel.
    assert "QGemm" not in _optimized_ops(layer_module(plain[1]), torch.zeros(1, 512), tmp_path)
    assert "QGemm" in _optimized_ops(layer_module(net3), torch.zeros(1, 512), tmp_path)
    assert kernel_ops_elsewhere(net3) == {"DequantizeLinear"}
    assert kernel_ops_elsewhere(net5) == {"QuantizeLinear"}
    assert layer_key(net3, 64) == layer_key(plain[1], 64) + "|qo=1"
    # A low-rank layer is two kernels: no fusion; nor without 8-bit inputs on the consumer.
    low = CompressionPolicy(layers={"net.3": LayerPolicy(act_bits=8, rank=64),
                                    "net.5": LayerPolicy(act_bits=8)})
    assert not any(s.q_out for s in with_int8_fusion(compressed_shapes(low, inv), inv,
                                                      ["net.1", "net.3"]))
    alone = CompressionPolicy(layers={"net.3": LayerPolicy(act_bits=8)})
    assert with_int8_fusion(compressed_shapes(alone, inv), inv, ["net.3"]) == \
        compressed_shapes(alone, inv)


def test_the_table_finds_fusable_layers_once_and_predicts_with_them(tmp_path):
    from autocompress.models import DigitsMLP

    torch.manual_seed(0)
    model = DigitsMLP().eval()
    inv = build_inventory(model, X)
    path = tmp_path / "lut.json"
    lut = LatencyLUT(path, parse_target("ort-1t-b8"))
    policy = CompressionPolicy(layers={"net.3": LayerPolicy(act_bits=8),
                                       "net.5": LayerPolicy(act_bits=8)})
    pred = lut.predict_breakdown(policy, inv, model, X)
    lut.save()
    assert lut.int8_fusable(inv, model, X) == ["net.1", "net.3"]
    # (the whole-model fit's random calibration policies add fused entries of their own)
    mine = {"Linear|in=512|out=512|x=-|b=8|r=0|a=8|w=32|bias=1|qo=1",
            "Linear|in=512|out=10|x=-|b=8|r=0|a=8|w=32|bias=1|qi=1"}
    assert mine <= set(lut.entries) and all(lut.entries[k]["ms"] > 0 for k in mine)
    # Another process reads the fusable layers and entries back: nothing is measured again.
    again = LatencyLUT(path, parse_target("ort-1t-b8"))
    assert again.int8_fusable(inv, None, X) == ["net.1", "net.3"]
    assert again.predict(policy, inv, model, X) == pytest.approx(pred.latency_ms)
    assert again.measured == 0
    # torch eager runs no integer kernels: the same policy's shapes stay plain there.
    eager = LatencyLUT(None, parse_target(FAST))
    assert not any(s.q_out or s.q_in for s in eager.runtime_shapes(policy, inv, model, X))


def test_a_conv_with_8_bit_inputs_is_timed_with_the_reorders_it_costs_in_the_model(tmp_path):
    """Between two NCHWc convolutions, an 8-bit input quantiser takes the tensor out of the
    blocked layout and back in; the entry counts those two reorders and nothing of the
    stand-in producer or of the lone graph's edges."""
    from autocompress.cost.timing import timed_layer

    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1)).eval()
    x = torch.randn(1, 16, 32, 32)
    inv = build_inventory(model, x)
    policy = CompressionPolicy(layers={"2": LayerPolicy(act_bits=8)})
    in_model = _optimized_graph(apply_policy(model, policy, x), x, tmp_path)
    made_by = {o: n.op_type for n in in_model.node for o in n.output}
    quantiser = next(n for n in in_model.node if n.op_type == "QuantizeLinear")
    assert made_by[quantiser.input[0]] == "ReorderOutput"  # the model pays it
    shape = compressed_shapes(policy, inv)[1]
    module, scope = timed_layer(shape, "ort")
    graph = _optimized_graph(module, torch.randn(*shape.input_shape), tmp_path)
    left_out = scope.left_out(graph)
    counted = sorted(n.op_type for n in graph.node if n.name not in left_out)
    assert counted == ["Conv", "DequantizeLinear", "QuantizeLinear", "ReorderInput",
                       "ReorderOutput"]
    assert len([n for n in graph.node if n.op_type == "Conv"]) == 2  # the stand-in is left out
    plain, plain_scope = timed_layer(compressed_shapes(CompressionPolicy(layers={}), inv)[1],
                                     "ort")
    assert isinstance(plain, nn.Conv2d) and not plain_scope.producer  # float: timed alone

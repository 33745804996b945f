"""CompressionPolicy: exact round trip and strict loading with messages that name the layer."""

from __future__ import annotations

import json

import pytest
import torch

from autocompress.errors import InputFileError, PolicyError
from autocompress.inventory import build_inventory
from autocompress.models import DigitsCNN
from autocompress.policy import CompressionPolicy, LayerPolicy


@pytest.fixture(scope="module")
def inv():
    return build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))


def _policy(layers: dict, **extra) -> dict:
    return {"format": "autocompress.policy", "schema_version": 1, "layers": layers, **extra}


def test_round_trip_is_exact(tmp_path, inv):
    policy = CompressionPolicy(
        layers={"features.0": LayerPolicy(prune=0.25, bits=8),
                "classifier.1": LayerPolicy(rank=16, bits=6, sparsity=0.5, act_bits=8)},
        budget={"metric": "latency_ms", "limit": 0.42, "target": "ort-cpu-2t-b64"},
        metrics={"accuracy": 0.981},
        provenance={"trial": 42},
    ).with_fingerprint(inv, task="digits")
    path = policy.save(tmp_path / "p.json")
    loaded = CompressionPolicy.load(path, inv)
    assert loaded == policy
    assert loaded.to_json() == policy.to_json()
    assert json.loads(path.read_text())["order"] == ["prune", "lowrank", "sparsity", "quantize"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_policy({"features.0": {"prune": 0.5, "prunning": 0.1}}),
         "layer 'features.0' has unknown key 'prunning'; valid keys are prune, rank"),
        (_policy({}, extra_key=1), "unknown key 'extra_key'"),
        (_policy({"features.9": {"prune": 0.5}}), "layer 'features.9' is not a Conv2d/Linear"),
        (_policy({"features.0": {"prune": 1.0}}), "layer 'features.0' prune=1.0 is invalid"),
        (_policy({"features.2": {"bits": 9}}), "bits must be one of [2, 3, 4, 5, 6, 7, 8, 16, 32]"),
        (_policy({"classifier.1": {"rank": 200}}),
         "layer 'classifier.1' rank 200 is out of range; valid range is 1..128"),
        (_policy({"classifier.3": {"prune": 0.5}}), "layer 'classifier.3' cannot be pruned"),
        (_policy({}, model={"inventory_sha256": "0" * 64}), "was made for a different model"),
        ({"format": "other", "layers": {}}, "format must be 'autocompress.policy'"),
        ({"format": "autocompress.policy", "schema_version": 1}, "missing required key 'layers'"),
    ],
)
def test_strict_loading_names_the_problem(tmp_path, inv, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PolicyError) as err:
        CompressionPolicy.load(path, inv)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_not_json_and_missing_file(tmp_path, inv):
    path = tmp_path / "bad.json"
    path.write_text("{layers: ")
    with pytest.raises(PolicyError, match="is not valid JSON"):
        CompressionPolicy.load(path, inv)
    with pytest.raises(InputFileError, match="does not exist"):
        CompressionPolicy.load(tmp_path / "nope.json", inv)


def test_empty_knobs_are_recognised():
    assert LayerPolicy().is_empty()
    assert LayerPolicy(bits=32, act_bits=32, prune=0.0).is_empty()
    assert not LayerPolicy(bits=8).is_empty()
    p = CompressionPolicy(layers={"a": LayerPolicy(bits=32), "b": LayerPolicy(prune=0.1)})
    assert list(p.active_layers()) == ["b"]

"""``autocompress apply``: files, the JSON report, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress.cli.app import main
from autocompress.inventory import build_inventory
from autocompress.policy import CompressionPolicy, LayerPolicy
from autocompress.runtime.onnx import run_onnx

CLI = str(Path(sys.executable).parent / "autocompress")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=dict(os.environ), timeout=300
    )


@pytest.fixture(scope="module")
def digits_inventory(digits_task):
    return build_inventory(digits_task.model, digits_task.example_input)


@pytest.fixture(scope="module")
def done_when_policy(digits_inventory, tmp_path_factory) -> Path:
    """Issue 2's check: half of every prunable conv's channels, 4 bits on every layer."""
    layers = {
        lay.fqn: LayerPolicy(prune=0.5 if lay.kind == "Conv2d" and lay.prunable else None, bits=4)
        for lay in digits_inventory
    }
    policy = CompressionPolicy(layers=layers).with_fingerprint(digits_inventory, task="digits")
    return policy.save(tmp_path_factory.mktemp("policy") / "half-4bit.json")


def test_apply_writes_models_and_reports_before_and_after(done_when_policy, tmp_path) -> None:
    out = tmp_path / "out"
    proc = _run("apply", "--task", "digits", "--policy", str(done_when_policy),
                "--out", str(out), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    for side in ("before", "after"):
        assert set(report[side]) == {"macs", "params", "size_bytes", "accuracy"}
    before, after = report["before"], report["after"]
    assert after["macs"] < 0.40 * before["macs"]
    assert after["params"] < before["params"] and after["size_bytes"] < before["size_bytes"] / 8
    assert 0.0 <= after["accuracy"] <= 1.0 and before["accuracy"] > 0.9
    assert report["onnx_max_abs_diff"] < 1e-3 and report["onnx_agrees"] is True

    # the files: the whole module (architecture changed), ONNX, and the policy
    model = torch.load(out / "model.pt", weights_only=False)
    assert model.features[0].out_channels == 16 and model.features[2].out_channels == 32
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(run_onnx(out / "model.onnx", x.numpy()) - ref).max() < 1e-3
    saved = CompressionPolicy.load(out / "policy.json")
    assert saved == CompressionPolicy.load(done_when_policy)


def test_apply_table_and_lowrank_warning(digits_task, tmp_path, capsys) -> None:
    # classifier.1 is 128x1024: rank 120 is past the break-even rank (113.8), so it stays dense
    policy = CompressionPolicy(layers={"classifier.1": LayerPolicy(rank=120),
                                       "features.0": LayerPolicy(bits=4, act_bits=8),
                                       "features.2": LayerPolicy(sparsity=0.5, bits=6)})
    path = policy.save(tmp_path / "p.json")
    rc = main(["apply", "--policy", str(path), "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "after/before" in out and "size_bytes" in out and "accuracy" in out
    assert "warning: lowrank: layer 'classifier.1' rank 120 would not reduce MACs" in err
    assert "differs from PyTorch" not in err  # ORT's integer kernel agrees within tolerance
    assert (tmp_path / "o" / "model.onnx").is_file()


BAD_POLICIES = {
    "unknown key": ({"layers": {"features.0": {"prun": 0.5}}},
                    ["'features.0'", "unknown key 'prun'", "prune, rank, sparsity, bits"]),
    "unknown fqn": ({"layers": {"features.9": {"bits": 8}}},
                    ["'features.9'", "autocompress inspect"]),
    "prune 1": ({"layers": {"features.2": {"prune": 1.0}}}, ["'features.2'", "[0, 1)"]),
    "rank above max": ({"layers": {"classifier.1": {"rank": 200}}},
                       ["'classifier.1'", "rank 200", "1..128"]),
    "bits 9": ({"layers": {"features.0": {"bits": 9}}},
               ["'features.0'", "bits=9", "[2, 3, 4, 5, 6, 7, 8, 16, 32]"]),
    "prune the output layer": ({"layers": {"classifier.3": {"prune": 0.5}}},
                               ["'classifier.3'", "cannot be pruned"]),
    "other model": ({"model": {"inventory_sha256": "0" * 64}, "layers": {}},
                    ["different model", "inventory_sha256"]),
    "unknown top-level key": ({"layers": {}, "layer": {}}, ["unknown key 'layer'"]),
}


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", list(BAD_POLICIES))
def test_bad_policy_is_one_line_error(case: str, digits_task, tmp_path, capsys) -> None:
    body, expected = BAD_POLICIES[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": "autocompress.policy", "schema_version": 1, **body}))
    rc = main(["apply", "--task", "digits", "--policy", str(path), "--out", str(tmp_path / "o")])
    _out, err = capsys.readouterr()
    assert rc == 2
    line = _one_error_line(err)
    for text in expected:
        assert text in line, line
    assert not (tmp_path / "o").exists()  # nothing written for a rejected policy


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--policy", "{missing}"], ["does not exist", "missing.json"]),
        (["--policy", "{good}", "--task", "no-such-task"], ["unknown task 'no-such-task'",
                                                             "digits-mlp", "torchvision:"]),
    ],
    ids=["missing file", "bad task"],
)
def test_errors_in_a_real_process(args, expected, digits_task, tmp_path) -> None:
    files = {"missing": tmp_path / "missing.json", "good": tmp_path / "good.json"}
    CompressionPolicy(layers={}).save(files["good"])
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    proc = _run("apply", *argv, "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    for text in expected:
        assert text in line, line


def test_not_json_and_out_is_a_file(digits_task, tmp_path, capsys) -> None:
    bad = tmp_path / "notjson.json"
    bad.write_text("{this is not json")
    assert main(["apply", "--policy", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not valid JSON" in _one_error_line(capsys.readouterr().err)
    good = CompressionPolicy(layers={}).save(tmp_path / "good.json")
    (tmp_path / "file").write_text("")
    assert main(["apply", "--policy", str(good), "--out", str(tmp_path / "file")]) == 2
    assert "is a file; expected a folder" in _one_error_line(capsys.readouterr().err)

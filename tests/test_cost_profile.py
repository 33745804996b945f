"""``autocompress profile``: the per-layer table, the --validate JSON shape, bad targets."""

from __future__ import annotations

import json
import math

import pytest

from autocompress.cli.app import main

pytestmark = pytest.mark.filterwarnings("ignore::autocompress.methods.LowRankSkipped")


def test_profile_json_with_validate(digits_task, tmp_path, capsys):
    lut = tmp_path / "latency_lut.json"
    args = ["profile", "--task", "digits", "--target", "torch-1t", "--batch", "8",
            "--validate", "3", "--runs", "5", "--format", "json", "--lut", str(lut)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for model in ("lut", "macs", "lut_relative", "macs_relative"):
        assert set(out[model]) == {"kendall_tau", "mape", "within_10pct"}
        tau = out[model]["kendall_tau"]
        assert tau != tau or -1.0 <= tau <= 1.0  # NaN when 3 noisy timings tie
        assert math.isfinite(out[model]["mape"]) and 0 <= out[model]["within_10pct"] <= 100
    # the absolute scores are those of the policies' rows the output lists
    rows = out["policies"]
    for model, key in (("lut", "lut_ms"), ("macs", "macs_ms")):
        errors = [abs(r[key] - r["measured_ms"]) / r["measured_ms"] for r in rows]
        assert out[model]["mape"] == pytest.approx(100 * sum(errors) / len(errors)), model
    assert out["target"] == "torch-cpu-1t-b8"
    assert [row["fqn"] for row in out["layers"]] == [
        "features.0", "features.2", "classifier.1", "classifier.3"]
    assert len(out["policies"]) == 3
    assert all(r["measured_ms"] > 0 and r["lut_ms"] > 0 for r in out["policies"])
    # each policy is timed alongside the uncompressed model: random policies compress it
    assert all(0 < r["measured_ratio"] < 1.5 and r["reference_ms"] > 0 for r in out["policies"])
    assert lut.exists() and out["fingerprint"] in json.loads(lut.read_text())["targets"]


def test_profile_table(digits_task, tmp_path, capsys):
    args = ["profile", "--task", "digits", "--target", "torch-1t-b8", "--runs", "5",
            "--lut", str(tmp_path / "lut.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "features.2" in out and "latency ms" in out and "whole model" in out


@pytest.mark.parametrize("target", ["tflite", "ort-0t"])
def test_profile_bad_target_exit_2_one_line(target, capsys):
    assert main(["profile", "--task", "digits", "--target", target]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "<runtime>" in err

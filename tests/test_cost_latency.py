"""Targets, whole-model latency measurement (both runtimes) and the environment fingerprint.

Only structure and relations that hold on any machine are asserted, never speed-ups.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.cost import LatencyStats, Target, env_fingerprint, measure_latency, parse_target
from autocompress.cost.latency import summarize, time_call
from autocompress.cost.target import default_threads
from autocompress.errors import TargetError


@pytest.mark.parametrize(
    ("text", "runtime", "threads", "batch"),
    [
        ("ort", "ort", default_threads(), None),
        ("torch", "torch", default_threads(), None),
        ("ort-cpu-2t-b64", "ort", 2, 64),
        ("torch-1t", "torch", 1, None),
        ("ort-b8", "ort", default_threads(), 8),
        ("ORT-CPU-3T", "ort", 3, None),
    ],
)
def test_parse_target_forms(text, runtime, threads, batch):
    t = parse_target(text)
    assert (t.runtime, t.threads, t.batch) == (runtime, threads, batch)
    assert parse_target(t.name) == t  # the canonical name reads back


@pytest.mark.parametrize("text", ["tflite", "ort-gpu", "ort-0t", "ort-b0", "torch-2x", "", "ort-2t-b"])
def test_bad_target_is_one_line_error_with_grammar(text):
    with pytest.raises(TargetError) as exc:
        parse_target(text)
    msg = str(exc.value)
    assert "\n" not in msg and "<runtime>[-cpu][-<threads>t][-b<batch>]" in msg


def test_flags_override_and_batch_resolution():
    t = parse_target("ort-2t-b4", threads=1, batch=16)
    assert (t.threads, t.batch) == (1, 16)
    assert parse_target("ort").with_batch(64).batch == 64
    assert parse_target("ort-b2").with_batch(64).batch == 2  # an explicit batch is kept
    with pytest.raises(TargetError, match="no batch size"):
        Target("ort").require_batch()
    with pytest.raises(TargetError):
        parse_target("ort", threads=0)


@pytest.mark.parametrize("runtime", ["torch", "ort"])
def test_measure_latency_sane_stats(runtime):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 4))
    model.train()
    before = torch.get_num_threads()
    s = measure_latency(model, torch.randn(1, 3, 8, 8), parse_target(f"{runtime}-1t-b4"), blocks=3)
    assert isinstance(s, LatencyStats)
    assert s.runs >= 30 and s.calls_per_run >= 1 and s.blocks == 3
    assert 0 < s.min_ms <= s.stable_ms and s.min_ms <= s.median_ms <= s.p90_ms
    # the interquartile range lies within [min, p90]
    assert 0 <= s.spread_ms <= s.p90_ms - s.min_ms and s.target == f"{runtime}-cpu-1t-b4"
    assert torch.get_num_threads() == before  # restored
    assert model.training  # the caller's mode is restored


def test_measure_latency_runs_the_target_batch():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.shape[0])
            return x * 2

    measure_latency(Spy(), torch.zeros(1, 3), parse_target("torch-1t-b5"), runs=30, warmup=1)
    assert set(seen) == {5}


def test_time_call_groups_short_calls():
    times, k = time_call(lambda: None, runs=4, warmup=1, min_run_ms=1.0)
    assert len(times) == 4 and k > 10  # a no-op takes far less than 1 ms: many calls per run


def test_summarize_stable_is_smallest_block_median():
    s = summarize([5.0, 5.0, 5.0, 1.0, 1.0, 1.0, 9.0, 9.0, 9.0], 1, blocks=3)
    assert s.stable_ms == 1.0 and s.median_ms == 5.0 and s.p90_ms == 9.0


def test_env_fingerprint_records_environment_and_splits_targets():
    a = env_fingerprint(parse_target("ort-1t-b8"))
    for key in ("cpu", "arch", "isa_flags", "flags", "torch", "onnxruntime", "threads", "runtime",
                "batch"):
        assert key in a
    assert a["torch"] == torch.__version__ and a["threads"] == 1 and a["runtime"] == "ort"
    assert a == env_fingerprint(parse_target("ort-1t-b8"))  # stable
    others = [env_fingerprint(parse_target(t))["hash"] for t in ("ort-2t-b8", "torch-1t-b8", "ort-1t-b9")]
    assert len({a["hash"], *others}) == 4

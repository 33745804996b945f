"""``--device`` / ``--precision`` on a machine without a GPU: every GPU code path's CPU twin."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autocompress import device as dev
from autocompress.engine import search
from autocompress.errors import AutocompressError, ConfigError, DeviceError
from autocompress.evaluate import FinetuneSettings, compress_and_score, finetune
from autocompress.inventory import build_inventory
from autocompress.policy import CompressionPolicy, LayerPolicy

CPU = torch.device("cpu")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(dev, "_said_fallback", False)


def test_resolve_device_without_a_gpu(no_cuda, caplog):
    assert dev.resolve_device("cpu") == CPU
    with caplog.at_level(logging.WARNING, logger="autocompress.device"):
        assert dev.resolve_device("auto") == CPU
        assert dev.resolve_device("AUTO") == CPU
    assert [r.getMessage() for r in caplog.records] == [
        "device auto: no CUDA GPU here, fine-tunes run on the CPU"]  # said once
    for spec in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(DeviceError, match="needs a CUDA GPU and this machine has none"):
            dev.resolve_device(spec)
    with pytest.raises(DeviceError, match="is not one of auto|cpu|cuda|cuda:N"):
        dev.resolve_device("gpu0")
    assert issubclass(DeviceError, AutocompressError)


def test_resolve_device_beyond_the_gpu_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert dev.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert dev.resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="has 2 CUDA GPU"):
        dev.resolve_device("cuda:2")


def test_precision_and_loader_options():
    assert dev.check_precision("bf16", CPU) == "bf16"
    with pytest.raises(DeviceError, match="needs a CUDA device"):
        dev.check_precision("fp16", CPU)
    with pytest.raises(DeviceError, match="not one of"):
        dev.check_precision("int4", CPU)
    assert dev.loader_options(CPU) == {}
    opts = dev.loader_options(torch.device("cuda"), TensorDataset(torch.zeros(2, 1)))
    assert opts["pin_memory"] and opts["num_workers"] >= 1


def test_outputs_come_back_in_their_own_form():
    from autocompress.inputs import NamedOutputs

    class Two(nn.Module):
        def forward(self, a, b=None):
            return NamedOutputs(logits=a, extra=(a, b))

    out = dev.OnDevice(Two(), CPU)(torch.ones(1), b=torch.zeros(1))
    assert isinstance(out, NamedOutputs) and out.logits.device == CPU
    assert isinstance(out["extra"], tuple)


def _toy() -> tuple[nn.Module, nn.Module, DataLoader]:
    torch.manual_seed(0)
    teacher, student = nn.Linear(8, 4), nn.Linear(8, 4)
    data = TensorDataset(torch.randn(64, 8), torch.randint(0, 4, (64,)))
    return teacher, student, DataLoader(data, batch_size=16)


def test_bf16_autocast_finetune_on_cpu():
    teacher, student, dl = _toy()
    before = student.weight.detach().clone()
    r = finetune(student, teacher, dl, steps=8, lr=1e-2, device=CPU, precision="bf16")
    assert r.steps == 8 and r.last_loss is not None and torch.isfinite(torch.tensor(r.last_loss))
    assert student.weight.dtype == torch.float32  # autocast leaves the weights in float32
    assert not torch.equal(before, student.weight)
    with pytest.raises(DeviceError):
        finetune(student, teacher, dl, steps=1, precision="fp16")


def test_teacher_is_the_model_on_the_cpu_and_moved_once_elsewhere():
    m = nn.Linear(2, 2)
    assert dev.teacher_on(m, CPU) is m
    moved = dev.teacher_on(m, torch.device("meta"))  # a device that is not the model's
    assert moved is not m and moved.weight.device.type == "meta" and m.weight.device == CPU
    assert dev.teacher_on(moved, torch.device("meta")) is moved  # already there: no copy


def test_compress_and_score_copies_the_student_from_the_given_teacher(digits_task, monkeypatch):
    import autocompress.methods as methods

    inv = build_inventory(digits_task.model, digits_task.example_input)
    seen: list[nn.Module] = []
    real = methods.apply_policy

    def spy(model, *a, **k):
        seen.append(model)
        return real(model, *a, **k)

    monkeypatch.setattr(methods, "apply_policy", spy)
    policy = CompressionPolicy(layers={"features.0": LayerPolicy(prune=0.5, act_bits=8)})
    settings = FinetuneSettings(steps=2, val_samples=32, device="cpu", precision="bf16")
    teacher = digits_task.model
    r = compress_and_score(digits_task, policy, settings, inv, teacher=teacher)
    assert seen == [teacher] and 0.0 <= r.metric <= 1.0
    assert all(p.device == CPU for p in r.model.parameters())


def fast(digits_task, out: Path, **kw):
    settings = dict(budget="macs<=60%", target="torch-1t", trials=2, finetune_steps=4,
                    out=out, export=False, report_every=0, val_samples=64, strategy="random")
    settings.update(kw)
    return search(digits_task, **settings)


def _trials(out: Path) -> list[optuna.trial.FrozenTrial]:
    storage = JournalStorage(JournalFileBackend(str(out / "study.log")))
    study = optuna.load_study(study_name="autocompress", storage=storage)
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_search_on_the_cpu_device_writes_the_same_trials(digits_task, tmp_path, monkeypatch):
    from autocompress.engine import objective as objective_mod
    from autocompress.engine import session as session_mod

    made: list[nn.Module] = []
    real = session_mod.teacher_on
    monkeypatch.setattr(session_mod, "teacher_on",
                        lambda m, d: made.append(real(m, d)) or made[-1])
    monkeypatch.setattr(objective_mod, "teacher_on", lambda m, d: pytest.fail("per trial"))
    a = fast(digits_task, tmp_path / "default")
    b = fast(digits_task, tmp_path / "cpu", device="cpu")
    assert len(made) == 2 and all(t is digits_task.model for t in made)  # once per run
    ta, tb = _trials(tmp_path / "default"), _trials(tmp_path / "cpu")
    assert [t.user_attrs["metric"] for t in ta] == [t.user_attrs["metric"] for t in tb]
    assert [sorted(t.user_attrs) for t in ta] == [sorted(t.user_attrs) for t in tb]
    assert list(a.trials.columns) == list(b.trials.columns)
    env = (tmp_path / "cpu" / "env.json").read_text()
    assert '"finetune_device": "cpu"' in env
    assert "device: cpu" in (tmp_path / "cpu" / "config.resolved.yaml").read_text()


def test_cuda_without_a_gpu_fails_before_any_work(digits_task, tmp_path, no_cuda):
    with pytest.raises(DeviceError):
        fast(digits_task, tmp_path / "run", device="cuda")
    assert not (tmp_path / "run").exists()


def test_cli_device_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from autocompress.cli.app import main

    monkeypatch.chdir(tmp_path)
    cases = [
        ["search", "--task", "digits", "--device", "cuda:99", "--out", "r"],
        ["search", "--task", "digits", "--device", "tpu", "--out", "r"],
        ["search", "--task", "digits", "--precision", "fp16", "--device", "cpu", "--out", "r"],
        ["worker", "--storage", str(tmp_path / "s.log"), "--device", "cuda:99"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "s.log").exists()


def test_a_worker_keeps_its_own_device(digits_task, tmp_path):
    from autocompress.engine.workers import config_from_study

    study = optuna.create_study()
    study.set_user_attr("autocompress", {"task": "digits", "device": "cuda:0",
                                         "precision": "bf16"})
    cfg = config_from_study(study, None, {"device": None})
    assert cfg.device == "cpu" and cfg.precision == "bf16"  # the study's precision, not device
    assert config_from_study(study, None, {"device": "cuda:1"}).device == "cuda:1"


def test_ray_gpus_per_trial(tmp_path):
    from autocompress.engine.config import SearchConfig
    from autocompress.engine.ray_backend import run_ray, trial_resources

    assert trial_resources(1, 0.5) == {"cpu": 1, "gpu": 0.5}
    assert trial_resources(1) == {"cpu": 1}
    cfg = SearchConfig.build(None, {"backend": "ray", "gpus_per_trial": 1,
                                    "out": str(tmp_path / "r")})
    with pytest.raises(ConfigError, match="--device cpu leaves idle"):
        run_ray(cfg)


def test_export_rebuilds_a_gpu_study_on_the_cpu(no_cuda):
    from autocompress.export import finetune_settings

    s = finetune_settings({"finetune": {"steps": 5, "device": "cuda:1", "precision": "fp16"}})
    assert (s.steps, s.device, s.precision) == (5, "cpu", "bf16")

"""Tasks: digits, digits-mlp, digits-distorted, CIFAR on-disk format, torchvision by name, user tasks, checkpoints."""

from __future__ import annotations

import pickle
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress.errors import CheckpointError, TaskError
from autocompress.tasks import Task, load_task
from autocompress.tasks.checkpoint import load_checkpoint


def test_digits_baseline_is_trained_and_cached(digits_task, _cache_dir):
    assert digits_task.name == "digits"
    assert digits_task.baseline_metric is not None and digits_task.baseline_metric > 0.9
    assert digits_task.target_batch_size == 64
    assert list(Path(_cache_dir).glob("digits-baseline-*.pt"))
    # a second load reuses the cache and gives the same weights and accuracy
    again = load_task("digits")
    assert again.baseline_metric == digits_task.baseline_metric
    for a, b in zip(again.model.parameters(), digits_task.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_digits_mlp_is_linear_only(digits_mlp_task):
    kinds = {type(m).__name__ for m in digits_mlp_task.model.modules()}
    assert "Conv2d" not in kinds and "Linear" in kinds
    assert digits_mlp_task.evaluate() > 0.9


def test_distorted_digits_are_seeded_disjoint_and_harder(digits_task):
    from torch.utils.data import DataLoader

    from autocompress.space import default_space_name
    from autocompress.tasks.base import top1_accuracy
    from autocompress.tasks.digits import digits_tensors, distort, distorted_digits_tensors

    train, val = distorted_digits_tensors()
    again_train, again_val = distorted_digits_tensors()
    assert torch.equal(val.tensors[0], again_val.tensors[0])  # seeded: the same set every run
    clean_train, clean_val = digits_tensors()
    assert len(train) == 10 * len(clean_train) and len(val) == 5 * len(clean_val)
    # every copy keeps its image's label, in order: distortions never mix the split
    assert torch.equal(val.tensors[1], clean_val.tensors[1].repeat(5))
    assert float(val.tensors[0].min()) >= 0.0 and float(val.tensors[0].max()) <= 1.0
    assert not torch.equal(distort(clean_val, 1, seed=0).tensors[0], clean_val.tensors[0])
    # the point of the task: the clean-trained CNN loses accuracy on the distorted images
    clean_acc = top1_accuracy(digits_task.model, DataLoader(clean_val, batch_size=512))
    distorted_acc = top1_accuracy(digits_task.model, DataLoader(val, batch_size=512))
    assert distorted_acc < clean_acc - 0.05
    assert default_space_name("digits-distorted") == "digits"


@pytest.mark.slow
def test_digits_distorted_task_trains_its_own_baseline(digits_task):
    task = load_task("digits-distorted")
    assert task.info["val"] == 1795 and task.target_batch_size == 64
    assert 0.85 < task.baseline_metric < 0.99
    # same CNN as digits (so one latency table serves both), different weights
    assert [p.shape for p in task.model.parameters()] == [
        p.shape for p in digits_task.model.parameters()]
    assert not torch.equal(next(task.model.parameters()), next(digits_task.model.parameters()))


def _write_cifar(root: Path, n_train: int = 20, n_test: int = 10) -> None:
    """A tiny copy of CIFAR-10 in torchvision's on-disk pickle format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n: int) -> dict:
        return {
            "data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8),
            "labels": [int(x) for x in rng.integers(0, 10, size=n)],
        }

    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump(batch(n_train), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def test_cifar_task_reads_torchvision_format(tmp_path):
    _write_cifar(tmp_path)
    task = load_task("cifar10-resnet20", data_dir=str(tmp_path))
    assert task.info["train"] == 20 and task.info["val"] == 10
    x, y = next(iter(task.val_loader))
    assert x.shape == (10, 3, 32, 32) and y.shape == (10,)
    assert task.model(x).shape == (10, 10)
    assert 0.0 <= task.evaluate() <= 1.0


def test_cifar_task_without_data_says_what_to_pass(tmp_path):
    with pytest.raises(TaskError, match="needs --data-dir"):
        load_task("cifar10-resnet56")
    with pytest.raises(TaskError, match="cifar-10-batches-py"):
        load_task("cifar10-resnet20", data_dir=str(tmp_path))


def test_torchvision_task_has_synthetic_inputs_and_a_cosine_metric():
    """The metric is the class scores' cosine to the original model's: 1.0 for the model
    itself, and below it for a pruned one (top-1 agreement read 1.0 on every trial)."""
    from autocompress.inventory import build_inventory
    from autocompress.methods import apply_policy
    from autocompress.policy import CompressionPolicy, LayerPolicy

    task = load_task("torchvision:mobilenet_v3_small")
    assert task.example_input.shape == (1, 3, 224, 224)
    assert task.metric_name == "cosine"
    assert task.evaluate() == 1.0
    inventory = build_inventory(task.model, task.example_input)
    policy = CompressionPolicy(layers={inventory.fqns[0]: LayerPolicy(prune=0.5)})
    pruned = apply_policy(task.model, policy, task.example_input, inventory)
    assert 0.0 < task.evaluate(pruned) < 0.999


def test_unknown_tasks_are_refused_with_the_grammar():
    with pytest.raises(TaskError, match="expected one of digits"):
        load_task("imagenet")
    with pytest.raises(TaskError, match="unknown torchvision model 'resnet19'"):
        load_task("torchvision:resnet19")
    with pytest.raises(TaskError, match="cannot import module 'no_such_pkg.tasks'"):
        load_task("no_such_pkg.tasks:make")


def test_user_task_from_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import DataLoader, TensorDataset
        import autocompress as ac

        def tiny(checkpoint=None):
            dl = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)))
            return ac.Task(name="tiny", model=torch.nn.Linear(4, 2),
                           example_input=torch.zeros(1, 4), train_loader=dl, val_loader=dl,
                           metric=ac.tasks.top1_accuracy)

        def not_a_task():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    task = load_task("my_tasks:tiny")
    assert isinstance(task, Task) and task.name == "tiny"
    with pytest.raises(TaskError, match="returned int"):
        load_task("my_tasks:not_a_task")
    with pytest.raises(TaskError, match="has no function 'missing'"):
        load_task("my_tasks:missing")
    sys.modules.pop("my_tasks", None)


def test_checkpoints_load_with_weights_only_and_refuse_mismatches(tmp_path):
    from autocompress.models import DigitsCNN, DigitsMLP

    good = tmp_path / "cnn.pt"
    torch.save({"state_dict": DigitsCNN().state_dict()}, good)
    assert isinstance(load_checkpoint(DigitsCNN(), good), DigitsCNN)

    wrong = tmp_path / "mlp.pt"
    torch.save(DigitsMLP().state_dict(), wrong)
    with pytest.raises(CheckpointError, match="does not fit the DigitsCNN model"):
        load_checkpoint(DigitsCNN(), wrong)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(DigitsCNN(), garbage)

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(DigitsCNN(), tmp_path / "missing.pt")


def test_digits_task_with_checkpoint(tmp_path, digits_task):
    path = tmp_path / "digits.pt"
    torch.save(digits_task.model.state_dict(), path)
    task = load_task("digits", checkpoint=str(path))
    assert task.baseline_metric == pytest.approx(digits_task.baseline_metric)


def test_torchvision_task_fine_tune_brings_the_scores_back():
    """A pruned random model's class scores move towards the original's in its fine-tune
    (batch-norm statistics set on the inputs, cosine distillation); with KL over a nearly
    uniform softmax and the initial statistics they drifted away with every step (resnet18
    at 224 pixels: 0.63 untrained, 0.19 after 30 steps). Past a few epochs of the 64
    synthetic images the student overfits them a little, so later steps need not gain."""
    from autocompress.evaluate import FinetuneSettings, compress_and_score
    from autocompress.inventory import build_inventory
    from autocompress.policy import CompressionPolicy, LayerPolicy
    from autocompress.tasks.synthetic import torchvision_task

    task = torchvision_task("resnet18", image_size=64)
    inventory = build_inventory(task.model, task.example_input)
    policy = CompressionPolicy(layers={f: LayerPolicy(prune=0.3) for f in inventory.fqns[:-1]})
    scores = [compress_and_score(task, policy, FinetuneSettings(steps=steps), inventory).metric
              for steps in (0, 15, 40)]
    assert scores[1] > scores[0] + 0.1
    assert scores[2] > scores[0] + 0.1


def test_a_random_vit_answers_each_input_with_its_own_scores():
    """torchvision's ViT starts its classifier at zero; the task gives it random weights, so
    its scores differ per input and the cosine metric reads 1.0 for the model itself."""
    from autocompress.tasks.synthetic import torchvision_task

    task = torchvision_task("vit_b_32", image_size=224)
    x = torch.cat([inputs for inputs, _ in task.val_loader])[:4]
    with torch.no_grad():
        scores = task.model(x)
    assert float(scores.std(0).mean()) > 0
    assert task.evaluate() == pytest.approx(1.0)

"""The candidate evaluation: seeded KD fine-tune, fixed validation subset, PTQ after fine-tune."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.evaluate import (
    FinetuneSettings,
    compress_and_score,
    evaluate,
    finetune,
    structural_policy,
    val_subset,
)
from autocompress.inventory import build_inventory
from autocompress.methods import apply_policy, model_stats
from autocompress.policy import CompressionPolicy, LayerPolicy


@pytest.fixture(scope="module")
def inv(digits_task):
    return build_inventory(digits_task.model, digits_task.example_input)


POLICY = CompressionPolicy(layers={
    "features.0": LayerPolicy(prune=0.5, bits=6),
    "features.2": LayerPolicy(prune=0.5, rank=8, sparsity=0.5, bits=4),
    "classifier.1": LayerPolicy(rank=16, bits=8, act_bits=8),
    "classifier.3": LayerPolicy(sparsity=0.25),
})


def test_val_subset_is_fixed_and_sized(digits_task):
    a, b = val_subset(digits_task, 100), val_subset(digits_task, 100)
    xa = torch.cat([x for x, _ in a])
    xb = torch.cat([x for x, _ in b])
    assert xa.shape[0] == 100 and torch.equal(xa, xb)
    assert val_subset(digits_task, None) is digits_task.val_loader
    assert val_subset(digits_task, 10_000) is digits_task.val_loader


def test_finetune_is_deterministic_and_helps(digits_task, inv):
    settings = FinetuneSettings(steps=40, val_samples=None)
    r1 = compress_and_score(digits_task, POLICY, settings, inv)
    r2 = compress_and_score(digits_task, POLICY, settings, inv)
    assert r1.metric == r2.metric
    for (n1, p1), (n2, p2) in zip(r1.model.state_dict().items(), r2.model.state_dict().items(),
                                  strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1
    untuned = compress_and_score(digits_task, POLICY, FinetuneSettings(steps=0, val_samples=None),
                                 inv)
    assert r1.metric > untuned.metric + 0.05  # a heavy policy recovers with KD
    assert r1.finetune_s > 0 and untuned.finetune_s == 0
    other_seed = compress_and_score(digits_task, POLICY,
                                    FinetuneSettings(steps=40, val_samples=None, seed=1), inv)
    assert not torch.equal(other_seed.model.state_dict()["features.2.0.weight"],
                           r1.model.state_dict()["features.2.0.weight"])


def test_result_has_exactly_the_structure_of_apply_policy(digits_task, inv):
    """MACs, params and size of the fine-tuned model are what `autocompress apply` reports."""
    r = compress_and_score(digits_task, POLICY, FinetuneSettings(steps=10), inv)
    applied = apply_policy(digits_task.model, POLICY, digits_task.example_input, inv)
    x = digits_task.example_input
    assert model_stats(r.model, x, POLICY) == model_stats(applied, x, POLICY)
    assert [n for n, _ in r.model.named_modules()] == [n for n, _ in applied.named_modules()]


def test_sparsity_and_quantisation_survive_the_finetune(digits_task, inv):
    r = compress_and_score(digits_task, POLICY, FinetuneSettings(steps=30), inv)
    sd = r.model.state_dict()
    # classifier.3: 25% of its weights stay exactly zero
    w3 = sd["classifier.3.weight"]
    assert (w3 == 0).float().mean().item() >= 0.25 - 1e-3
    # features.2 was factorised; both factors are 50% sparse and 4-bit per output channel
    for name in ("features.2.0.weight", "features.2.1.weight"):
        w = sd[name]
        assert (w == 0).float().mean().item() >= 0.5 - 1e-3
        for row in w.reshape(w.shape[0], -1):
            assert row.unique().numel() <= 2**4 - 1
    # the 8-bit activation quantiser sits in front of classifier.1 (as apply_policy puts it)
    assert type(r.model.get_submodule("classifier.1.0")).__name__ == "ActFakeQuant"


def test_report_can_stop_a_finetune(digits_task, inv):
    seen: list[tuple[int, float]] = []

    def report(step: int, metric: float) -> bool:
        seen.append((step, metric))
        return step >= 20  # a pruner's verdict at the second report

    r = compress_and_score(digits_task, POLICY, FinetuneSettings(steps=100, report_every=10),
                           inv, report=report)
    assert [s for s, _ in seen] == [10, 20]
    assert r.stopped_at == 20 and r.metric == seen[-1][1]
    assert all(0.0 <= m <= 1.0 for _, m in seen)


def test_finetune_keeps_masks_and_checks_arguments(digits_task):
    student = apply_policy(digits_task.model, structural_policy(POLICY), digits_task.example_input)
    w = student.get_submodule("classifier.3").weight
    zeros = w == 0
    assert zeros.any()
    res = finetune(student, digits_task.model, digits_task.train_loader, steps=5,
                   masks={"classifier.3": ~zeros})
    assert res.steps == 5 and not res.stopped and res.last_loss is not None
    assert (student.get_submodule("classifier.3").weight[zeros] == 0).all()
    with pytest.raises(ValueError, match="report needs eval_fn"):
        finetune(student, digits_task.model, digits_task.train_loader, steps=5,
                 report=lambda s, m: False)
    assert 0.0 <= evaluate(student, digits_task) <= 1.0


# ---- the distillation loss fits the output ---------------------------------------------
def test_each_distillation_loss_is_zero_on_the_teacher_and_grows_away_from_it():
    from autocompress.evaluate import DISTILL_LOSSES, kd_loss

    torch.manual_seed(0)
    teacher = torch.randn(8, 16)
    for name in DISTILL_LOSSES:
        same = float(kd_loss(teacher, teacher, None, 4.0, 1.0, name))
        near = float(kd_loss(teacher + 0.1 * torch.randn(8, 16), teacher, None, 4.0, 1.0, name))
        far = float(kd_loss(-teacher, teacher, None, 4.0, 1.0, name))
        assert abs(same) < 1e-5 and 0 < near < far, name
    # cosine ignores the scale of an embedding, MSE does not
    assert float(kd_loss(3 * teacher, teacher, None, 4.0, 1.0, "cosine")) < 1e-5
    assert float(kd_loss(3 * teacher, teacher, None, 4.0, 1.0, "mse")) > 1.0


def test_auto_takes_kl_for_class_scores_and_mse_for_embeddings_with_float_targets():
    from autocompress.evaluate import distill_for

    logits, emb = torch.zeros(4, 10), torch.zeros(4, 384)
    assert distill_for("auto", logits, torch.zeros(4, dtype=torch.long)) == "kl"
    assert distill_for("auto", emb, torch.zeros(4, 384)) == "mse"  # float labels shaped like it
    assert distill_for("auto", torch.zeros(4, 12, 32), None) == "mse"  # hidden states


def _embedding_task(distill: str = "auto", loss=None):
    from torch.utils.data import DataLoader, TensorDataset

    from autocompress.tasks.base import Task

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32)).eval()
    x = torch.randn(128, 16)
    with torch.no_grad():
        y = model(x)  # the teacher's embeddings as float labels

    def cosine(m, loader):
        with torch.no_grad():
            return float(torch.cat([nn.functional.cosine_similarity(m(a), b, dim=1)
                                    for a, b in loader]).mean())

    dl = DataLoader(TensorDataset(x, y), batch_size=32)
    return Task(name="emb", model=model, example_input=x[:1], train_loader=dl, val_loader=dl,
                metric=cosine, metric_name="cosine", distill=distill, loss=loss)


@pytest.mark.parametrize("distill", ["cosine", "mse"])
def test_an_embedding_model_is_distilled_back_toward_its_teacher(distill):
    from autocompress.evaluate import FinetuneSettings, compress_and_score
    from autocompress.inventory import build_inventory

    task = _embedding_task(distill)
    inv = build_inventory(task.model, task.example_input)
    policy = CompressionPolicy(layers={"0": LayerPolicy(prune=0.5)})
    before = compress_and_score(task, policy, FinetuneSettings(steps=0), inv).metric
    after = compress_and_score(task, policy, FinetuneSettings(steps=150, lr=1e-2), inv).metric
    assert before < 0.99 and after > before + 0.01


def test_a_task_loss_replaces_distillation_and_a_bad_distill_is_one_error():
    from autocompress.errors import TaskError
    from autocompress.evaluate import FinetuneSettings, compress_and_score
    from autocompress.inventory import build_inventory

    seen = []

    def loss(student_out, teacher_out, batch):
        seen.append(len(batch))  # the whole batch, labels included
        return nn.functional.l1_loss(student_out, batch[1])

    task = _embedding_task(loss=loss)
    inv = build_inventory(task.model, task.example_input)
    compress_and_score(task, CompressionPolicy(layers={"0": LayerPolicy(prune=0.5)}),
                       FinetuneSettings(steps=5), inv)
    assert seen == [2] * 5
    with pytest.raises(TaskError, match="distill='hinge' is not one of auto, kl, mse, cosine"):
        _embedding_task("hinge")

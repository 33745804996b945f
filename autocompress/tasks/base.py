"""The Task: a model with its example input, data and metric."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from autocompress import inputs
from autocompress.errors import TaskError
from autocompress.inputs import ModelInput, OutputSelector
from autocompress.models.attention import split_fused_attention

log = logging.getLogger(__name__)

Metric = Callable[[nn.Module, DataLoader], float]


@torch.no_grad()
def top1_accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of ``model`` over ``loader`` (batches of ``(inputs, labels)``).

    Inputs may be any :data:`~autocompress.inputs.ModelInput` (a dict batch carries its
    labels under ``labels``); a structured output (a Hugging Face ``ModelOutput``) is
    scored on its first tensor, e.g. ``logits``.

    >>> from torch.utils.data import TensorDataset
    >>> m = nn.Linear(2, 2); _ = m.weight.data.copy_(torch.eye(2)); _ = m.bias.data.zero_()
    >>> dl = DataLoader(TensorDataset(torch.eye(2), torch.tensor([0, 1])))
    >>> top1_accuracy(m, dl)
    1.0
    """
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in loader:
        x, labels = inputs.split_batch(batch)
        pred = inputs.select_output(inputs.call(model, x)).argmax(dim=1)
        correct += int((pred == labels).sum())
        total += int(labels.numel())
    model.train(was_training)
    return correct / max(total, 1)


@torch.no_grad()
def mean_cosine(model: nn.Module, loader: Iterable[Any]) -> float:
    """Mean cosine similarity of ``model``'s outputs to the labels (reference outputs, e.g.
    embeddings), per row.

    >>> from torch.utils.data import TensorDataset
    >>> x = torch.randn(4, 3)
    >>> mean_cosine(nn.Identity(), DataLoader(TensorDataset(x, 2 * x)))
    1.0
    """
    was_training = model.training
    model.eval()
    total, rows = 0.0, 0
    for batch in loader:
        x, reference = inputs.split_batch(batch)
        got = inputs.select_output(inputs.call(model, x)).float()
        sims = nn.functional.cosine_similarity(got.flatten(1), reference.flatten(1).float(), dim=1)
        total += float(sims.sum())
        rows += int(sims.numel())
    model.train(was_training)
    return round(total / max(rows, 1), 6)


@dataclass
class Task:
    """Everything a search needs to know about one model.

    ``target_batch_size`` is the batch at which latency is measured by
    default: tiny models must be measured where compute, not per-call
    overhead, dominates.

    ``example_input`` is a tensor, a tuple of tensors (positional arguments) or a dict
    of named tensors (keyword arguments), of any dtype, with a batch axis 0; loader
    batches take the same forms, with labels. ``output`` names the output tensor that
    fine-tuning and export checks compare when the model returns several (a key of a
    dict or ``ModelOutput``, an index, or a callable); None takes the first.
    A Hugging Face classifier, for example (its dataset yields dicts with ``labels``)::

        Task(name="bert", model=BertForSequenceClassification(config).eval(),
             example_input={"input_ids": ids[:1], "attention_mask": mask[:1]},
             train_loader=DataLoader(train, batch_size=16), val_loader=DataLoader(val),
             metric=top1_accuracy, output="logits", target_batch_size=8)

    >>> from torch.utils.data import TensorDataset
    >>> dl = DataLoader(TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)))
    >>> t = Task(name="toy", model=nn.Linear(2, 2), example_input=torch.zeros(1, 2),
    ...          train_loader=dl, val_loader=dl, metric=top1_accuracy)
    >>> t.metric_name
    'accuracy'
    """

    name: str
    model: nn.Module
    example_input: ModelInput
    train_loader: DataLoader | None
    val_loader: DataLoader | None
    metric: Metric
    higher_is_better: bool = True
    metric_name: str = "accuracy"
    target_batch_size: int = 1
    baseline_metric: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    output: OutputSelector = None
    #: The fine-tune's distillation loss: ``auto`` (KL on class scores, else MSE), ``kl``,
    #: ``mse`` or ``cosine`` (embeddings); ``loss(student_out, teacher_out, batch)``
    #: replaces it with the task's own.
    distill: str = "auto"
    loss: Callable[[Any, Any, Any], torch.Tensor] | None = None
    #: The fine-tune's learning rate when the search is given none: pretrained weights
    #: want a smaller step than a model trained from scratch on a small task.
    lr: float = 1e-3

    def __post_init__(self) -> None:
        self.example_input = inputs.normalize(self.example_input,
                                              f"task {self.name!r}'s example input")
        # Fused attention hides its projections from the search; the split computes the same.
        if split := split_fused_attention(self.model):
            log.info("task %r: %d nn.MultiheadAttention split into Linear projections",
                     self.name, split)
        from autocompress.evaluate import DISTILL_CHOICES

        if self.distill not in DISTILL_CHOICES:
            raise TaskError(f"task {self.name!r}: distill={self.distill!r} is not one of "
                            f"{', '.join(DISTILL_CHOICES)}; give one of them, or a loss "
                            "callable (loss=...) for anything else")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise TaskError(f"task {self.name!r}: lr must be a number > 0, got {self.lr!r}")
        if self.loss is not None and not callable(self.loss):
            raise TaskError(f"task {self.name!r}: loss must be a callable (student_out, "
                            f"teacher_out, batch) -> tensor, got {type(self.loss).__name__}")

    def evaluate(self, model: nn.Module | None = None) -> float:
        """The task metric of ``model`` (default: the task's own model) on the validation data."""
        if self.val_loader is None:
            raise ValueError(f"task {self.name!r} has no validation data")
        return float(self.metric(self.model if model is None else model, self.val_loader))

    def batch_input(self, batch_size: int | None = None) -> ModelInput:
        """The example input repeated to ``batch_size`` rows (default: ``target_batch_size``)."""
        return inputs.batched(self.example_input, batch_size or self.target_batch_size)

    def validation_batch(self, rows: int = 64) -> Any:
        """Up to ``rows`` real validation inputs (for PyTorch/ONNX agreement checks).

        A :data:`~autocompress.inputs.ModelInput`, typed ``Any`` so that callers written
        for one tensor still type-check.

        Falls back to the example input when the task has no validation data.
        """
        if self.val_loader is not None:
            batch = next(iter(self.val_loader), None)
            if batch is not None:
                return inputs.take(inputs.split_batch(batch)[0], rows)
        return self.example_input

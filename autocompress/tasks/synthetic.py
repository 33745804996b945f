"""torchvision classification models with synthetic inputs, for latency work.

Without a checkpoint the weights are random, so accuracy means nothing; the
metric is the top-1 agreement of the compressed model with the original one
on synthetic inputs: a label-free metric, so a model without labelled data can still be
searched for latency.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autocompress.errors import TaskError
from autocompress.tasks.base import Task

SYNTHETIC_TRAIN = 64
SYNTHETIC_VAL = 32


def agreement_metric(reference: nn.Module):
    """A metric: share of inputs where ``model`` and ``reference`` pick the same top-1 class."""
    reference = reference.eval()

    @torch.no_grad()
    def agreement(model: nn.Module, loader: DataLoader) -> float:
        was_training = model.training
        model.eval()
        same = total = 0
        for inputs, _ in loader:
            same += int((model(inputs).argmax(1) == reference(inputs).argmax(1)).sum())
            total += inputs.shape[0]
        model.train(was_training)
        return same / max(total, 1)

    return agreement


def synthetic_loaders(model: nn.Module, shape: tuple[int, ...]) -> tuple[DataLoader, DataLoader]:
    """Random inputs labelled by the model's own predictions (for KD fine-tunes and agreement)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SYNTHETIC_TRAIN + SYNTHETIC_VAL, *shape, generator=gen)
    with torch.no_grad():
        y = torch.cat([model(x[i : i + 16]).argmax(1) for i in range(0, len(x), 16)])
    train = TensorDataset(x[:SYNTHETIC_TRAIN], y[:SYNTHETIC_TRAIN])
    val = TensorDataset(x[SYNTHETIC_TRAIN:], y[SYNTHETIC_TRAIN:])
    return (DataLoader(train, batch_size=16, shuffle=True, generator=gen),
            DataLoader(val, batch_size=16))


def drop_aux_heads(model: nn.Module) -> nn.Module:
    """Remove the auxiliary classifiers of GoogLeNet and Inception v3 (in place).

    They run only in training mode, where they turn the output into a tuple, and the
    inventory, traced in eval mode, never sees them: a pruned model's fine-tune would feed
    them the wrong number of channels. The distillation fine-tune needs only the main output.

    >>> import torchvision
    >>> net = drop_aux_heads(torchvision.models.googlenet(weights=None, init_weights=False))
    >>> net.aux1 is None, net.train()(torch.zeros(2, 3, 64, 64)).shape
    (True, torch.Size([2, 1000]))
    """
    if getattr(model, "aux_logits", False):
        # setattr: nn.Module types its attributes as tensors or modules, not flags.
        setattr(model, "aux_logits", False)  # noqa: B010
        for name in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, name):
                setattr(model, name, None)
    return model


def torchvision_task(name: str, checkpoint: str | None = None, image_size: int = 224) -> Task:
    """Any torchvision classification model by name, e.g. ``resnet18`` or ``mobilenet_v2``."""
    import copy

    import torchvision

    from autocompress.tasks.checkpoint import load_checkpoint

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = [m for m in available if name.split("_")[0] in m][:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise TaskError(
            f"unknown torchvision model {name!r}{hint}; expected one of "
            "torchvision.models.list_models(), e.g. torchvision:resnet18"
        )
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    drop_aux_heads(model)
    model.eval()
    shape = (3, image_size, image_size)
    train_loader, val_loader = synthetic_loaders(model, shape)
    return Task(
        name=f"torchvision:{name}",
        model=model,
        example_input=torch.randn(1, *shape, generator=torch.Generator().manual_seed(1)),
        train_loader=train_loader,
        val_loader=val_loader,
        metric=agreement_metric(copy.deepcopy(model)),
        metric_name="agreement",
        target_batch_size=1,
        baseline_metric=1.0,
        info={"weights": checkpoint or "random", "inputs": "synthetic"},
    )

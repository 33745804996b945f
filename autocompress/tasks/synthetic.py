"""torchvision classification models with synthetic inputs, for latency work.

Without a checkpoint the weights are random, so accuracy means nothing; the
metric is the mean cosine similarity of the compressed model's class scores to the original
model's on synthetic inputs: a label-free metric, so a model without labelled data can still be
searched for latency. The fine-tune distils the class scores by the same cosine.

Why not top-1 agreement: a random model picks one or two classes for every input, which a
short fine-tune restores, so agreement read 1.0 on every trial and gave the search nothing to
rank by. Why not KL over the softmax: a random model's softmax is nearly uniform, so the hard
labels' cross-entropy dominates the loss and the fine-tune moves the scores away from the
original's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autocompress.errors import TaskError
from autocompress.tasks.base import Task, mean_cosine

SYNTHETIC_TRAIN = 64
SYNTHETIC_VAL = 32
# Images that set a random model's batch-norm statistics (see calibrate_batch_norm).
CALIBRATION_IMAGES = 16


def output_cosine_metric(reference: nn.Module):
    """A metric: mean cosine similarity of ``model``'s outputs to ``reference``'s, per input.

    >>> net = nn.Linear(4, 3)
    >>> metric = output_cosine_metric(net)
    >>> loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8)), batch_size=4)
    >>> metric(net, loader)
    1.0
    >>> metric(nn.Linear(4, 3), loader) < 1.0
    True
    """
    reference = reference.eval()

    def cosine(model: nn.Module, loader: DataLoader) -> float:
        # Each batch labelled by the reference's outputs, as mean_cosine takes them.
        return mean_cosine(model, ((x, reference(x)) for x, _ in loader))

    return cosine


def synthetic_loaders(model: nn.Module, shape: tuple[int, ...]) -> tuple[DataLoader, DataLoader]:
    """Random inputs labelled by the model's own top-1 predictions (for KD fine-tunes)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SYNTHETIC_TRAIN + SYNTHETIC_VAL, *shape, generator=gen)
    with torch.no_grad():
        y = torch.cat([model(x[i : i + 16]).argmax(1) for i in range(0, len(x), 16)])
    train = TensorDataset(x[:SYNTHETIC_TRAIN], y[:SYNTHETIC_TRAIN])
    val = TensorDataset(x[SYNTHETIC_TRAIN:], y[SYNTHETIC_TRAIN:])
    return (DataLoader(train, batch_size=16, shuffle=True, generator=gen),
            DataLoader(val, batch_size=16))


def calibrate_batch_norm(model: nn.Module, shape: tuple[int, ...],
                         images: int = CALIBRATION_IMAGES) -> nn.Module:
    """Set ``model``'s batch-norm running statistics on synthetic inputs (in place; eval mode).

    A random model's statistics are the initial zero mean and unit variance, which its
    activations do not have, so its eval-mode outputs differ from what a fine-tune in train
    mode sees: the student's statistics move and its outputs drift from the teacher's with
    every step. Statistics set on the inputs make it behave as a trained model does.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    >>> bn = calibrate_batch_norm(net, (3, 8, 8))[1]
    >>> bool(bn.running_var.mean() < 0.9), bn.momentum, net.training
    (True, 0.1, False)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every calibration batch
    gen = torch.Generator().manual_seed(2)
    model.train()
    with torch.no_grad():
        for _ in range(0, images, 8):
            model(torch.randn(8, *shape, generator=gen))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


def init_zero_layers(model: nn.Module) -> nn.Module:
    """Give random weights (std 0.02) to Linear layers initialised to zero (in place).

    torchvision's ViT starts its classifier at zero, so a random ViT answers every input
    with the same zero scores: no metric can tell a compressed one from it.

    >>> head = nn.Linear(4, 3)
    >>> _ = nn.init.zeros_(head.weight)
    >>> bool(init_zero_layers(nn.Sequential(head))[0].weight.abs().sum() > 0)
    True
    """
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and not bool(m.weight.any()):
                m.weight.copy_(0.02 * torch.randn(m.weight.shape, generator=gen))
    return model


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
    shape = (3, image_size, image_size)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    drop_aux_heads(model)
    if not checkpoint:
        init_zero_layers(model)
        calibrate_batch_norm(model, shape)
    model.eval()
    train_loader, val_loader = synthetic_loaders(model, shape)
    return Task(
        name=f"torchvision:{name}",
        model=model,
        example_input=torch.randn(1, *shape, generator=torch.Generator().manual_seed(1)),
        train_loader=train_loader,
        val_loader=val_loader,
        # The model itself: students are copies and nothing trains it, and a copy would
        # double the memory of a 600 M-parameter model (vit_h_14's search passed 18 GB).
        metric=output_cosine_metric(model),
        metric_name="cosine",
        distill="cosine",
        target_batch_size=1,
        baseline_metric=1.0,
        info={"weights": checkpoint or "random", "inputs": "synthetic"},
    )

"""The embedded default tasks: scikit-learn's bundled 8x8 handwritten digits.

The data ships inside scikit-learn (1,797 images, no download). The
uncompressed baseline is trained on first use and cached
with its accuracy under the cache directory (``$AUTOCOMPRESS_CACHE`` or
``~/.cache/autocompress``).

``digits-distorted`` is the same CNN on seeded distorted copies of the same split
(rotation, scale, shift and pixel noise; :func:`distort`): the clean digits are
nearly solved (the CNN gets 98.9%, 4 of 359 validation images wrong, so one image
is 0.28 points and compressed models tie within a seed's noise), while on 1,795
distorted validation images the CNN gets about 94% and compression has accuracy
to lose, so a benchmark can tell a good policy from a lucky one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autocompress.models import DigitsCNN, DigitsMLP
from autocompress.tasks.base import Task, top1_accuracy

TRAIN_EPOCHS = 40
SPLIT_SEED = 0
VAL_FRACTION = 0.2


def cache_dir() -> Path:
    """Where trained baselines are cached (``$AUTOCOMPRESS_CACHE`` or ``~/.cache/autocompress``)."""
    root = os.environ.get("AUTOCOMPRESS_CACHE") or Path.home() / ".cache" / "autocompress"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def digits_tensors() -> tuple[TensorDataset, TensorDataset]:
    """A fixed train/validation split of the digits data as ``(N, 1, 8, 8)`` float tensors.

    >>> train, val = digits_tensors()
    >>> len(train), len(val)
    (1438, 359)
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_val = int(round(len(y) * VAL_FRACTION))
    val_idx, train_idx = order[:n_val], order[n_val:]
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[val_idx], y[val_idx])


# Distorted copies per image: 10 of each training image, 5 of each validation image.
DISTORTED_COPIES = (10, 5)
DISTORTED_SEEDS = (1, 2)
DISTORTED_EPOCHS = 8  # over 10x the images: 80 passes' worth of the clean set


def distort(data: TensorDataset, copies: int, seed: int, noise: float = 0.15,
            max_rotation_deg: float = 15.0, max_scale: float = 0.12,
            max_shift_px: float = 1.0) -> TensorDataset:
    """``copies`` seeded random distortions of every image in ``data`` (labels kept).

    Each copy rotates by up to ``max_rotation_deg``, scales by up to ``max_scale``,
    shifts by up to ``max_shift_px`` pixels (bilinear, zero fill) and adds Gaussian
    pixel noise of std ``noise``, clipped to [0, 1].

    >>> train, val = digits_tensors()
    >>> d = distort(val, copies=2, seed=0)
    >>> len(d), d.tensors[0].shape[1:], bool((d.tensors[1][:len(val)] == val.tensors[1]).all())
    (718, torch.Size([1, 8, 8]), True)
    """
    x, y = data.tensors
    gen = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for _ in range(copies):
        n = len(y)
        angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(max_rotation_deg)
        scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * max_scale
        # affine_grid works in [-1, 1] coordinates: one pixel of W is 2 / W.
        shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * max_shift_px * 2 / x.shape[-1]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                             torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        moved = nn.functional.grid_sample(x, grid, align_corners=False)
        images.append((moved + noise * torch.randn(moved.shape, generator=gen)).clamp(0, 1))
        labels.append(y)
    return TensorDataset(torch.cat(images), torch.cat(labels))


def distorted_digits_tensors() -> tuple[TensorDataset, TensorDataset]:
    """:func:`digits_tensors`' split, each side distorted on its own (no image crosses over).

    >>> train, val = distorted_digits_tensors()
    >>> len(train), len(val)
    (14380, 1795)
    """
    train, val = digits_tensors()
    return (distort(train, DISTORTED_COPIES[0], DISTORTED_SEEDS[0]),
            distort(val, DISTORTED_COPIES[1], DISTORTED_SEEDS[1]))


def train_classifier(
    model: nn.Module, loader: DataLoader, epochs: int, lr: float = 2e-3, seed: int = 0
) -> nn.Module:
    """Plain cross-entropy training with Adam (used once per baseline)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for inputs, labels in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def _cached_baseline(name: str, build: Callable[[], nn.Module], train: TensorDataset,
                     val_loader: DataLoader, epochs: int = TRAIN_EPOCHS) -> tuple[nn.Module, float]:
    weights = cache_dir() / f"{name}-baseline-v1.pt"
    meta = weights.with_suffix(".json")
    torch.manual_seed(0)
    model = build()
    if weights.is_file() and meta.is_file():
        try:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            model.eval()
            return model, float(json.loads(meta.read_text())["accuracy"])
        except Exception:  # a stale or corrupt cache is rebuilt, never trusted
            torch.manual_seed(0)
            model = build()
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=generator)
    train_classifier(model, loader, epochs)
    acc = top1_accuracy(model, val_loader)
    tmp = weights.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, weights)  # atomic: parallel workers never read half a file
    meta.write_text(json.dumps({"accuracy": acc, "epochs": epochs}))
    return model, acc


def _digits_task(name: str, build: Callable[[], nn.Module], checkpoint: str | None,
                 distorted: bool = False) -> Task:
    from autocompress.tasks.checkpoint import load_checkpoint

    train, val = distorted_digits_tensors() if distorted else digits_tensors()
    val_loader = DataLoader(val, batch_size=256)
    if checkpoint:
        model = load_checkpoint(build(), checkpoint).eval()
        baseline = top1_accuracy(model, val_loader)
    else:
        model, baseline = _cached_baseline(name, build, train, val_loader,
                                           DISTORTED_EPOCHS if distorted else TRAIN_EPOCHS)
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    return Task(
        name=name,
        model=model,
        example_input=val.tensors[0][:1].clone(),
        train_loader=DataLoader(train, batch_size=64, shuffle=True, generator=generator),
        val_loader=val_loader,
        metric=top1_accuracy,
        target_batch_size=64,
        baseline_metric=baseline,
        info={"dataset": "sklearn.datasets.load_digits" + (" (distorted)" if distorted else ""),
              "train": len(train), "val": len(val)},
    )


def digits_task(checkpoint: str | None = None) -> Task:
    """The ``digits`` task: a small CNN on the 8x8 digits (the embedded default)."""
    return _digits_task("digits", DigitsCNN, checkpoint)


def digits_mlp_task(checkpoint: str | None = None) -> Task:
    """The ``digits-mlp`` task: a Linear-only MLP on the same data."""
    return _digits_task("digits-mlp", DigitsMLP, checkpoint)


def digits_distorted_task(checkpoint: str | None = None) -> Task:
    """The ``digits-distorted`` task: the digits CNN on distorted digits (see the module doc)."""
    return _digits_task("digits-distorted", DigitsCNN, checkpoint, distorted=True)

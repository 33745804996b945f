"""CIFAR-10 ResNet-20/56 tasks, reading torchvision's on-disk CIFAR-10 format.

Data is never downloaded: ``--data-dir`` must hold ``cifar-10-batches-py/``
(``data_batch_1..5``, ``test_batch``, ``batches.meta``) as torchvision writes it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import CIFAR10

from autocompress.errors import TaskError
from autocompress.models import cifar_resnet
from autocompress.tasks.base import Task, top1_accuracy

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class LocalCIFAR10(CIFAR10):
    """torchvision's CIFAR10 reader without md5 checks, so partial or tiny copies load.

    The checksums only guard downloads; the pickle format is what matters here.
    """

    train_list = [[f"data_batch_{i}", None] for i in range(1, 6)]
    test_list = [["test_batch", None]]
    meta = {"filename": "batches.meta", "key": "label_names", "md5": None}

    def __init__(self, root: str, train: bool, transform=None) -> None:
        # Use whichever training batches exist (a subset is a valid copy).
        base = Path(root) / self.base_folder
        present = [e for e in self.train_list if (base / e[0]).is_file()]
        self.train_list = present or self.train_list
        super().__init__(root, train=train, transform=transform, download=False)


def cifar_task(depth: int, data_dir: str | None, checkpoint: str | None = None) -> Task:
    """A CIFAR-10 ResNet task; ``data_dir`` holds ``cifar-10-batches-py/``."""
    from autocompress.tasks.checkpoint import load_checkpoint

    name = f"cifar10-resnet{depth}"
    if not data_dir:
        raise TaskError(
            f"task {name!r} needs --data-dir: a folder holding cifar-10-batches-py/ "
            "in torchvision's CIFAR-10 format (nothing is downloaded)"
        )
    folder = Path(data_dir) / "cifar-10-batches-py"
    if not (folder / "test_batch").is_file() or not (folder / "batches.meta").is_file():
        raise TaskError(
            f"--data-dir {data_dir!r} has no CIFAR-10 data: expected {str(folder)!r} with "
            "data_batch_1..5, test_batch and batches.meta (torchvision's on-disk format)"
        )
    norm = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    train_tf = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
         transforms.ToTensor(), norm]
    )
    val_tf = transforms.Compose([transforms.ToTensor(), norm])
    try:
        train = LocalCIFAR10(str(data_dir), train=True, transform=train_tf)
        val = LocalCIFAR10(str(data_dir), train=False, transform=val_tf)
    except Exception as exc:
        raise TaskError(f"cannot read CIFAR-10 from {str(folder)!r}: {exc}") from exc
    model = cifar_resnet(depth)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    model.eval()
    generator = torch.Generator().manual_seed(0)
    val_loader: DataLoader = DataLoader(val, batch_size=256)
    return Task(
        name=name,
        model=model,
        example_input=torch.zeros(1, 3, 32, 32),
        train_loader=DataLoader(train, batch_size=128, shuffle=True, generator=generator),
        val_loader=val_loader,
        metric=top1_accuracy,
        target_batch_size=16,
        baseline_metric=top1_accuracy(model, val_loader) if checkpoint else None,
        info={"dataset": str(folder), "train": len(train), "val": len(val),
              "pretrained": bool(checkpoint)},
    )

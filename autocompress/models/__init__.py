"""A small model zoo: the digits CNN/MLP and the CIFAR ResNets of He et al. 2016."""

from autocompress.models.cifar_resnet import cifar_resnet, resnet20, resnet56
from autocompress.models.digits import DigitsCNN, DigitsMLP

__all__ = ["DigitsCNN", "DigitsMLP", "cifar_resnet", "resnet20", "resnet56"]

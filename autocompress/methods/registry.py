"""The method registry: method name -> object with one ``apply`` signature.

``apply_policy`` runs every registered method in registration order, which is
the fixed order prune -> lowrank -> sparsity -> quantize (the method modules are
imported in that order by :mod:`autocompress.methods`). A new method plugs in by
registering itself; it then runs after the built-in ones.

Also here: the two module-tree helpers every method needs, because after a
method has run, one policy layer (an FQN of the original model) may be held by
several modules (``<fqn>.0`` and ``<fqn>.1`` after a low-rank factorisation,
``<fqn>.1`` behind an activation fake-quantiser).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from torch import nn

if TYPE_CHECKING:
    from autocompress.inputs import ModelInput
    from autocompress.inventory import LayerInventory
    from autocompress.policy import CompressionPolicy


@runtime_checkable
class Method(Protocol):
    """A compression method: changes the (already copied) model in place and returns it.

    ``name`` is the registry key; ``knob`` is the :class:`LayerPolicy` field it reads.
    """

    name: str
    knob: str

    def apply(
        self,
        model: nn.Module,
        policy: CompressionPolicy,
        inventory: LayerInventory,
        example_input: ModelInput,
        calibration: Iterable[Any] | None,
    ) -> nn.Module: ...


METHODS: dict[str, Method] = {}

M = TypeVar("M", bound=type)


def register_method(cls: M) -> M:
    """Class decorator: instantiate ``cls`` and register it under ``cls.name``.

    >>> @register_method
    ... class Noop:
    ...     name, knob = "noop-doctest", "bits"
    ...     def apply(self, model, policy, inventory, example_input, calibration):
    ...         return model
    >>> "noop-doctest" in METHODS
    True
    >>> _ = METHODS.pop("noop-doctest")
    """
    name = cls.name  # type: ignore[attr-defined]
    if name in METHODS:
        raise ValueError(f"a compression method named {name!r} is already registered")
    METHODS[name] = cls()
    return cls


def replace_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    """Put ``new`` at ``fqn`` inside ``model`` (the parent keeps its attribute name).

    >>> m = nn.Sequential(nn.Linear(2, 2)); replace_module(m, "0", nn.Identity()); m
    Sequential(
      (0): Identity()
    )
    """
    parent_name, _, attr = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def weight_modules(model: nn.Module, fqn: str) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    """Every Conv2d/Linear that now holds the weights of policy layer ``fqn``, with its name.

    That is the layer itself, or its low-rank factors, possibly behind an
    activation fake-quantiser.

    >>> m = nn.Sequential(nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 3)))
    >>> [name for name, _ in weight_modules(m, "0")]
    ['0.0', '0.1']
    """
    root = model.get_submodule(fqn)
    found: list[tuple[str, nn.Conv2d | nn.Linear]] = []
    for name, module in root.named_modules(prefix=fqn):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            found.append((name, module))
    return found

# ruff: noqa: I001  (import order = method application order)
"""Compression methods, one module each, behind a registry keyed by method name.

Importing this package registers the built-in methods in their fixed order
(prune -> lowrank -> sparsity -> quantize); :func:`apply_policy` runs them in
that order on a copy of the model.
"""

# The import order below IS the application order (METHODS keeps insertion order).
from autocompress.methods import prune as _prune  # noqa: F401  (registers "prune")
from autocompress.methods import lowrank as _lowrank  # noqa: F401  (registers "lowrank")
from autocompress.methods import sparsity as _sparsity  # noqa: F401  (registers "sparsity")
from autocompress.methods import quantize as _quantize  # noqa: F401  (registers "quantize")
from autocompress.methods.apply import apply_policy, model_size_bytes, model_stats
from autocompress.methods.lowrank import LowRankSkipped
from autocompress.methods.quantize import ActFakeQuant, quantize_weight
from autocompress.methods.registry import METHODS, Method, register_method, weight_modules

__all__ = [
    "METHODS",
    "ActFakeQuant",
    "LowRankSkipped",
    "Method",
    "apply_policy",
    "model_size_bytes",
    "model_stats",
    "quantize_weight",
    "register_method",
    "weight_modules",
]

"""CompressionPolicy: per-layer knobs keyed by FQN, saved and loaded strictly as JSON.

The format is in docs/policy.md. Loading rejects unknown keys, FQNs the
model lacks, out-of-range values and a different inventory fingerprint, each
with a one-line :class:`PolicyError` naming the layer and the valid range.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autocompress.errors import InputFileError, PolicyError
from autocompress.inventory import LayerInventory

FORMAT = "autocompress.policy"
SCHEMA_VERSION = 1
ORDER = ("prune", "lowrank", "sparsity", "quantize")
WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
ACT_BITS = (8, 32)
FLOAT_BITS = (16, 32)


class LayerPolicy(BaseModel):
    """The knobs of one layer; ``None`` means untouched.

    - ``prune``: fraction of output channels removed, in [0, 1) (applied per coupled group)
    - ``rank``: low-rank factorisation rank, an integer in [1, min(out, in*kh*kw)]
    - ``sparsity``: fraction of weights zeroed by magnitude, in [0, 1)
    - ``bits``: weight bits, 2..8 fake-quantised; 16 and 32 mean float
    - ``act_bits``: 8 to fake-quantise this layer's input activations, 32 for float

    >>> LayerPolicy(prune=0.5, bits=4).is_empty()
    False
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prune: float | None = Field(default=None, ge=0.0, lt=1.0)
    rank: int | None = Field(default=None, ge=1)
    sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)
    bits: int | None = None
    act_bits: int | None = None

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int | None) -> int | None:
        if v is not None and v not in WEIGHT_BITS:
            raise ValueError(f"bits must be one of {list(WEIGHT_BITS)}, got {v}")
        return v

    @field_validator("act_bits")
    @classmethod
    def _act_bits(cls, v: int | None) -> int | None:
        if v is not None and v not in ACT_BITS:
            raise ValueError(f"act_bits must be one of {list(ACT_BITS)}, got {v}")
        return v

    def is_empty(self) -> bool:
        """True when the policy changes nothing."""
        return (
            not self.prune
            and self.rank is None
            and not self.sparsity
            and (self.bits is None or self.bits in FLOAT_BITS)
            and (self.act_bits is None or self.act_bits == 32)
        )

    @property
    def weight_bits(self) -> int:
        return self.bits or 32

    @property
    def activation_bits(self) -> int:
        return self.act_bits or 32


class CompressionPolicy(BaseModel):
    """A whole-model policy: ``{fqn: LayerPolicy}`` plus optional metadata.

    >>> p = CompressionPolicy(layers={"features.0": LayerPolicy(prune=0.25, bits=8)})
    >>> CompressionPolicy.from_json(p.to_json()) == p
    True
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal["autocompress.policy"] = "autocompress.policy"
    schema_version: Literal[1] = 1
    model: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    order: list[str] = Field(default_factory=lambda: list(ORDER))
    layers: dict[str, LayerPolicy]
    metrics: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None

    @field_validator("order")
    @classmethod
    def _order(cls, v: list[str]) -> list[str]:
        if list(v) != list(ORDER):
            raise ValueError(f"order is fixed to {list(ORDER)}, got {v}")
        return v

    # ---- I/O -------------------------------------------------------------
    def to_json(self) -> str:
        """Serialise exactly (omitting unset optional sections and ``None`` knobs)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT, "schema_version": SCHEMA_VERSION}
        for key in ("model", "budget"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        d["order"] = list(ORDER)
        d["layers"] = {
            fqn: lp.model_dump(exclude_none=True) for fqn, lp in self.layers.items()
        }
        for key in ("metrics", "provenance"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    @classmethod
    def from_json(cls, text: str, source: str = "policy") -> CompressionPolicy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(
                f"{source} is not valid JSON ({exc.msg} at line {exc.lineno}); expected an "
                f'"{FORMAT}" object as written by autocompress'
            ) from exc
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "policy") -> CompressionPolicy:
        if not isinstance(data, dict):
            raise PolicyError(f"{source} must be a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise PolicyError(
                f"{source}: format must be {FORMAT!r}, got {data.get('format')!r}; "
                "is this an autocompress policy file?"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(f"{source}: {_first_error(exc)}") from exc

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_json() + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path, inventory: LayerInventory | None = None) -> CompressionPolicy:
        """Load a policy file; with ``inventory``, also check it against the model."""
        p = Path(path)
        if not p.is_file():
            raise InputFileError(
                f"policy file {str(p)!r} does not exist; expected a JSON file written by "
                "'autocompress search' (best_policy.json) or by hand (format: docs/policy.md)"
            )
        policy = cls.from_json(p.read_text(), source=f"policy {str(p)!r}")
        if inventory is not None:
            policy.validate_against(inventory, source=f"policy {str(p)!r}")
        return policy

    # ---- checks against a model -----------------------------------------
    def validate_against(self, inventory: LayerInventory, source: str = "policy") -> None:
        """Raise :class:`PolicyError` unless every layer and value fits ``inventory``."""
        expected = (self.model or {}).get("inventory_sha256")
        if expected and expected != inventory.sha256:
            raise PolicyError(
                f"{source} was made for a different model: inventory_sha256 {expected[:12]}... "
                f"!= {inventory.sha256[:12]}... of this model; re-run the search for this model "
                "or remove model.inventory_sha256 to apply it anyway"
            )
        for fqn, lp in self.layers.items():
            if fqn not in inventory:
                names = inventory.fqns
                close = [n for n in names if n.split(".")[-1] == fqn.split(".")[-1]][:3]
                hint = f" (similar: {', '.join(close)})" if close else ""
                raise PolicyError(
                    f"{source}: layer {fqn!r} is not a Conv2d/Linear of this model{hint}; "
                    f"run 'autocompress inspect' to list the {len(names)} valid layer names"
                )
            info = inventory[fqn]
            if lp.prune and not info.prunable:
                raise PolicyError(
                    f"{source}: layer {fqn!r} cannot be pruned (its output channels are "
                    "model outputs); valid prune for it: null or 0"
                )
            if lp.rank is not None:
                if info.kind == "DepthwiseConv2d":
                    raise PolicyError(
                        f"{source}: layer {fqn!r} is a depthwise conv and has no low-rank form; "
                        "valid rank for it: null"
                    )
                if lp.rank > info.max_rank:
                    raise PolicyError(
                        f"{source}: layer {fqn!r} rank {lp.rank} is out of range; valid range "
                        f"is 1..{info.max_rank} (min(out, in*kh*kw) of its "
                        f"{info.weight_matrix_shape[0]}x{info.weight_matrix_shape[1]} weight)"
                    )

    def with_fingerprint(self, inventory: LayerInventory, task: str | None = None) -> CompressionPolicy:
        """A copy with ``model.inventory_sha256`` (and ``model.task``) filled in."""
        model = dict(self.model or {})
        model["inventory_sha256"] = inventory.sha256
        if task:
            model["task"] = task
        return self.model_copy(update={"model": model})

    def active_layers(self) -> dict[str, LayerPolicy]:
        """The layers whose policy changes something."""
        return {fqn: lp for fqn, lp in self.layers.items() if not lp.is_empty()}


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = list(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if loc and loc[0] == "layers" and len(loc) >= 2:
        layer = loc[1]
        field_name = loc[2] if len(loc) > 2 else None
        if err["type"] == "extra_forbidden":
            return (
                f"layer {layer!r} has unknown key {field_name!r}; valid keys are "
                "prune, rank, sparsity, bits, act_bits"
            )
        ranges = {
            "prune": "[0, 1)", "sparsity": "[0, 1)", "rank": "an integer >= 1",
            "bits": str(list(WEIGHT_BITS)), "act_bits": str(list(ACT_BITS)),
        }
        given = err.get("input")
        return (
            f"layer {layer!r} {field_name}={given!r} is invalid ({msg}); "
            f"valid range: {ranges.get(str(field_name), msg)}"
        )
    where = ".".join(str(x) for x in loc) or "policy"
    if err["type"] == "extra_forbidden":
        return (
            f"unknown key {where!r}; valid top-level keys are format, schema_version, model, "
            "budget, order, layers, metrics, provenance"
        )
    if err["type"] == "missing":
        return f"missing required key {where!r}"
    return f"{where}: {msg} (given {err.get('input')!r})"

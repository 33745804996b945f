"""Search spaces: human-written YAML -> per-layer knob distributions -> CompressionPolicy.

A space file (docs/search-space.md) has ``defaults`` for every compressible
layer and ``rules`` matched first-match-wins by ``fqn`` (exact, or
``"re:<regex>"``), ``kind``, ``output`` (``true``: the layers whose output
is the model's output, i.e. the logits) and/or ``attention`` (``true``: an attention's
query, key and value projections). A knob that is ``null`` (or absent from the
defaults) is not searched and leaves the layer untouched; a knob absent from a
rule inherits the default.

Knob forms:

- ``prune``, ``sparsity``: ``{low, high, step}`` (step optional) or ``{choices}``, in [0, 1)
- ``bits``: ``{choices}`` from 2..8, 16, 32 (32 = float)
- ``rank``: ``{choices}`` of fractions of the layer's max rank in (0, 1]; 1.0 = no factorisation
- ``act_bits``: ``{choices}`` from [8, 32]

Resolving a space against a :class:`~autocompress.inventory.LayerInventory`
gives one Optuna distribution per searched knob, named ``<fqn>/<knob>``:
``prune`` only on the first member of each coupled pruning group (the group's
name; the whole group follows it), ``rank`` never on depthwise convs.

>>> import torch
>>> from autocompress.inventory import build_inventory
>>> from autocompress.models import DigitsCNN
>>> inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
>>> space = SearchSpace.from_yaml('''
... defaults: {prune: {low: 0.0, high: 0.5, step: 0.25}, bits: {choices: [8, 32]}}
... rules:
...   - match: {kind: Linear}
...     prune: null
... ''')
>>> resolved = space.resolve(inv)
>>> sorted(resolved.names)[:3]
['classifier.1/bits', 'classifier.3/bits', 'features.0/bits']
>>> resolved.policy_from_params({"features.2/prune": 0.25, "features.2/bits": 8}).layers
{'features.2': LayerPolicy(prune=0.25, rank=None, sparsity=None, bits=8, act_bits=None)}
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from autocompress.errors import SpaceError
from autocompress.inventory import KINDS, LayerInfo, LayerInventory
from autocompress.methods.shapes import lowrank_rank
from autocompress.policy import ACT_BITS, WEIGHT_BITS, CompressionPolicy, LayerPolicy

KNOBS = ("prune", "rank", "sparsity", "bits", "act_bits")
SCHEMA_VERSION = 1

# What a valid value of each knob looks like (used in every error message).
_FRACTION = (
    "{low, high, step} with 0 <= low <= high < 1 (step > 0, optional) or {choices: [...]} in [0, 1)"
)
VALID = {
    "prune": _FRACTION,
    "sparsity": _FRACTION,
    "bits": f"{{choices: [...]}} from {list(WEIGHT_BITS)} (16/32 = float)",
    "rank": "{choices: [...]} of fractions of the layer's max rank in (0, 1] (1.0 = dense)",
    "act_bits": f"{{choices: [...]}} from {list(ACT_BITS)}",
}

# Embedded spaces shipped as package data (autocompress/search_spaces/*.yaml); the repo's
# top-level search_spaces/ holds identical copies for people to read and edit.
EMBEDDED = ("digits", "cifar_resnet", "torchvision_cnn", "linear_layers")


# ---------------------------------------------------------------- file schema (pydantic)
class KnobSpec(BaseModel):
    """One knob's domain: a range ``{low, high, step}`` or ``{choices}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: list[float] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> KnobSpec:
        if self.choices is not None:
            if any(v is not None for v in (self.low, self.high, self.step)):
                raise ValueError("give either {choices} or {low, high, step}, not both")
            if not self.choices:
                raise ValueError("choices must not be empty")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError(f"choices {self.choices} contain duplicates")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high")
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.step is not None:
            if self.step <= 0:
                raise ValueError(f"step must be > 0, got {self.step}")
            n = (self.high - self.low) / self.step
            if abs(n - round(n)) > 1e-6:
                fixed = self.low + math.floor(n + 1e-9) * self.step
                raise ValueError(
                    f"high - low = {self.high - self.low:g} is not a multiple of step "
                    f"{self.step:g}; use high: {fixed:g}"
                )
        return self

    @property
    def is_range(self) -> bool:
        return self.choices is None

    def values(self) -> list[float]:
        """Every value the knob can take (a range without a step: its two ends)."""
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.step is None:
            return [self.low, self.high]
        n = int(round((self.high - self.low) / self.step))
        return [round(self.low + i * self.step, 10) for i in range(n + 1)]


def _check_knob(knob: str, spec: KnobSpec | None) -> KnobSpec | None:
    if spec is None:
        return None
    values = spec.values()
    if knob in ("bits", "rank", "act_bits") and spec.is_range:
        raise ValueError(f"{knob} takes {{choices: [...]}}, not a range")
    if knob in ("prune", "sparsity"):
        bad = [v for v in values if not 0.0 <= v < 1.0]
    elif knob == "bits":
        bad = [v for v in values if v not in WEIGHT_BITS]
    elif knob == "act_bits":
        bad = [v for v in values if v not in ACT_BITS]
    else:  # rank fractions
        bad = [v for v in values if not 0.0 < v <= 1.0]
    if bad:
        raise ValueError(f"{knob} value(s) {[_num(v) for v in bad]} out of range")
    return spec


class Knobs(BaseModel):
    """The knob settings of the defaults or of one rule (``None`` = not searched)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prune: KnobSpec | None = None
    rank: KnobSpec | None = None
    sparsity: KnobSpec | None = None
    bits: KnobSpec | None = None
    act_bits: KnobSpec | None = None

    @field_validator(*KNOBS)
    @classmethod
    def _valid(cls, v: KnobSpec | None, info: Any) -> KnobSpec | None:
        return _check_knob(info.field_name, v)


class Match(BaseModel):
    """Which layers a rule applies to: ``fqn`` (exact or ``re:<regex>``), ``kind``, ``output``
    and/or ``attention``.

    ``output: true`` matches the layers whose output is the model's output (the
    logits), which is how a generic space keeps the classifier's rank and bits high
    without naming it; ``output: false`` matches every other layer. ``attention: true``
    matches the query, key and value projections of attention modules
    (``LayerInfo.heads``), whose ``prune`` removes whole heads.

    >>> Match(output=True).matches("net.5", "Linear", is_output=True)
    True
    >>> Match(kind="Linear", output=False).matches("net.5", "Linear", is_output=True)
    False
    >>> Match(attention=True).matches("attn.query", "Linear", is_attention=True)
    True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fqn: str | None = None
    kind: Literal["Conv2d", "DepthwiseConv2d", "Linear"] | None = None
    output: bool | None = None
    attention: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> Match:
        if self.fqn is None and self.kind is None and self.output is None \
                and self.attention is None:
            raise ValueError("match needs fqn, kind, output and/or attention")
        if self.fqn is not None and self.fqn.startswith("re:"):
            try:
                re.compile(self.fqn[3:])
            except re.error as exc:
                raise ValueError(f"bad regex {self.fqn[3:]!r} ({exc})") from None
        return self

    def matches(self, fqn: str, kind: str, is_output: bool = False,
                is_attention: bool = False) -> bool:
        if self.kind is not None and kind != self.kind:
            return False
        if self.output is not None and is_output != self.output:
            return False
        if self.attention is not None and is_attention != self.attention:
            return False
        if self.fqn is None:
            return True
        if self.fqn.startswith("re:"):
            return re.search(self.fqn[3:], fqn) is not None
        return fqn == self.fqn

    def describe(self) -> str:
        given = (("fqn", self.fqn), ("kind", self.kind), ("output", self.output),
                 ("attention", self.attention))
        parts = [f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in given
                 if v is not None]
        return "{" + ", ".join(parts) + "}"


def _matches(match: Match, layer: LayerInfo, inventory: LayerInventory) -> bool:
    return match.matches(layer.fqn, layer.kind, layer.fqn in inventory.outputs,
                         layer.heads is not None)


class Rule(Knobs):
    """A first-match rule: ``match`` plus the knobs it overrides (absent = inherit default)."""

    match: Match


class SpaceFile(BaseModel):
    """The whole YAML document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    description: str | None = None
    defaults: Knobs = Knobs()
    rules: list[Rule] = []


# ---------------------------------------------------------------- resolved space
@dataclass(frozen=True)
class KnobParam:
    """One searched knob of one layer: the Optuna/Ray parameter ``<fqn>/<knob>``."""

    name: str
    fqn: str
    knob: str
    distribution: BaseDistribution
    max_rank: int = 0
    weight_shape: tuple[int, int] = (0, 0)

    def levels(self) -> list[Any]:
        """The knob's values from least to most compressed (a continuous range: 11 points)."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            vals = list(d.choices)
        else:
            assert isinstance(d, FloatDistribution)
            if d.step is not None:
                n = int(round((d.high - d.low) / d.step))
                vals = [round(d.low + i * d.step, 10) for i in range(n + 1)]
            else:
                vals = [round(d.low + (d.high - d.low) * i / 10, 10) for i in range(11)]
        # More prune/sparsity compresses more; fewer bits / a smaller rank fraction compress more.
        return sorted(vals, reverse=self.knob in ("bits", "rank", "act_bits"))

    def snap(self, value: float) -> Any:
        """The valid value nearest ``value`` (ties go to the less compressed one)."""
        levels = self.levels()
        return min(levels, key=lambda v: (abs(float(v) - float(value)), levels.index(v)))

    def to_policy_value(self, value: Any) -> int | float | None:
        """Param value -> LayerPolicy value (``None`` when it leaves the layer untouched)."""
        if self.knob in ("prune", "sparsity"):
            v = round(float(value), 6)
            return v if v > 0 else None
        if self.knob in ("bits", "act_bits"):
            return None if int(value) == 32 else int(value)
        # rank: a fraction of max_rank -> an absolute rank; None at or above break-even, where
        # the shared shape rule (methods.shapes.lowrank_rank) would skip the factorisation anyway.
        frac = float(value)
        if frac >= 1.0:
            return None
        rank = max(1, int(math.floor(frac * self.max_rank + 0.5)))
        return lowrank_rank(self.weight_shape[0], self.weight_shape[1], rank)


@dataclass
class ResolvedSpace:
    """A search space bound to one model: one :class:`KnobParam` per searched knob."""

    params: dict[str, KnobParam]
    inventory: LayerInventory
    source: str = "space"
    rule_of: dict[str, int | None] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.params)

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        """``{<fqn>/<knob>: optuna distribution}`` (for ``study.ask(fixed_distributions)``)."""
        return {n: p.distribution for n, p in self.params.items()}

    def __len__(self) -> int:
        return len(self.params)

    # ---- sampling ------------------------------------------------------
    def suggest(self, trial: Any) -> CompressionPolicy:
        """Ask an Optuna trial for every parameter (enqueued values are honoured)."""
        return self.policy_from_params(self.suggest_params(trial))

    def suggest_params(self, trial: Any) -> dict[str, Any]:
        """:meth:`suggest`'s parameter dict, before it becomes a policy."""
        values: dict[str, Any] = {}
        for name, p in self.params.items():
            d = p.distribution
            if isinstance(d, CategoricalDistribution):
                values[name] = trial.suggest_categorical(name, list(d.choices))
            else:
                assert isinstance(d, FloatDistribution)
                values[name] = trial.suggest_float(name, d.low, d.high, step=d.step)
        return values

    def draw_params(self, rng: random.Random) -> dict[str, Any]:
        """One parameter dict with every parameter at a level drawn uniformly (a random search).

        Optuna's ``RandomSampler`` draws the same way (uniform over choices and
        over the grid of a stepped range), but only inside a trial; this draws
        without one, so a candidate can be screened before a trial is created.
        """
        return {name: rng.choice(p.levels()) for name, p in self.params.items()}

    def to_ray_param_space(self) -> dict[str, Any]:
        """The same parameters as Ray Tune distributions (``tune.quniform`` / ``tune.choice``)."""
        from ray import tune

        space: dict[str, Any] = {}
        for name, p in self.params.items():
            d = p.distribution
            if isinstance(d, CategoricalDistribution):
                space[name] = tune.choice(list(d.choices))
            elif isinstance(d, FloatDistribution) and d.step is not None:
                space[name] = tune.quniform(d.low, d.high, d.step)
            else:
                assert isinstance(d, FloatDistribution)
                space[name] = tune.uniform(d.low, d.high)
        return space

    # ---- params <-> policy ----------------------------------------------
    def policy_from_params(self, params: dict[str, Any]) -> CompressionPolicy:
        """Build the policy of a parameter dict (missing names leave their knob untouched).

        Raises :class:`SpaceError` for a name the space does not have.
        """
        unknown = [n for n in params if n not in self.params]
        if unknown:
            raise SpaceError(
                f"parameter {unknown[0]!r} is not in search space {self.source}; valid names "
                f"are <fqn>/<knob>, e.g. {', '.join(self.names[:3])}"
            )
        layers: dict[str, dict[str, Any]] = {}
        for name, value in params.items():
            p = self.params[name]
            v = p.to_policy_value(value)
            if v is not None:
                layers.setdefault(p.fqn, {})[p.knob] = v
        order = {fqn: i for i, fqn in enumerate(self.inventory.fqns)}
        policy = CompressionPolicy(
            layers={f: LayerPolicy(**layers[f]) for f in sorted(layers, key=order.__getitem__)},
            model={"inventory_sha256": self.inventory.sha256},
        )
        return _drop_skipped_ranks(_canonical_prunes(policy, self.inventory), self.inventory)

    def uniform_params(
        self,
        prune: float | None = None,
        bits: int | None = None,
        rank_fraction: float | None = None,
        sparsity: float | None = None,
        act_bits: int | None = None,
    ) -> dict[str, Any]:
        """One setting for every layer, snapped to each layer's allowed values.

        A knob given as ``None`` takes its least-compressing value.
        """
        given = {"prune": prune, "bits": bits, "rank": rank_fraction,
                 "sparsity": sparsity, "act_bits": act_bits}
        out: dict[str, Any] = {}
        for name, p in self.params.items():
            want = given[p.knob]
            out[name] = p.levels()[0] if want is None else p.snap(want)
        return out

    def uniform_policy(
        self,
        prune: float | None = None,
        bits: int | None = None,
        rank_fraction: float | None = None,
        sparsity: float | None = None,
        act_bits: int | None = None,
    ) -> CompressionPolicy:
        """The policy of :meth:`uniform_params`."""
        return self.policy_from_params(
            self.uniform_params(prune, bits, rank_fraction, sparsity, act_bits)
        )

    def smallest_params(self) -> dict[str, Any]:
        """Every knob at its most compressing value: the cheapest point of the space."""
        return {name: p.levels()[-1] for name, p in self.params.items()}

    def smallest_policy(self) -> CompressionPolicy:
        """The cheapest policy of the space (used to report a budget that is out of reach)."""
        return self.policy_from_params(self.smallest_params())

    def corner_policies(self) -> list[CompressionPolicy]:
        """The space's most compressed corners: prune at its maximum, and every subset of the
        other knobs at their most compressing value (the rest uncompressed).

        On a latency target the smallest policy is not always the fastest: a low rank
        adds a matrix product and 4-bit weights add dequantisation, so whether a latency
        budget is reachable at all is a question for all these corners. The first one is
        the smallest policy.

        >>> import torch
        >>> from autocompress.inventory import build_inventory
        >>> from autocompress.models import DigitsCNN
        >>> inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
        >>> sp = SearchSpace.from_yaml("defaults: {prune: {low: 0, high: 0.5, step: 0.25}, "
        ...                            "bits: {choices: [4, 32]}}").resolve(inv)
        >>> [p.to_dict()["layers"]["features.2"] for p in sp.corner_policies()]
        [{'prune': 0.5, 'bits': 4}, {'prune': 0.5}]
        """
        return [self.policy_from_params(params) for params in self.corner_params()]

    def corner_params(self) -> list[dict[str, Any]]:
        """The parameter dicts of :meth:`corner_policies`, in the same order."""
        knobs = sorted({p.knob for p in self.params.values() if p.knob != "prune"})
        subsets = [set(c) for r in range(len(knobs), -1, -1)
                   for c in itertools.combinations(knobs, r)]
        return [{name: p.levels()[-1] if p.knob == "prune" or p.knob in subset else p.levels()[0]
                 for name, p in self.params.items()} for subset in subsets]

    def identity_params(self) -> dict[str, Any]:
        """Every knob at its least compressing value."""
        return {name: p.levels()[0] for name, p in self.params.items()}


# ---------------------------------------------------------------- the space
@dataclass(frozen=True)
class SearchSpace:
    """A validated search-space file. ``load`` / ``from_yaml`` / ``embedded``, then ``resolve``.

    ``derived`` is True for a space derived from the model's layers
    (:mod:`autocompress.derived_space`) rather than given or shipped.
    """

    spec: SpaceFile
    source: str = "space"
    text: str = ""
    derived: bool = False

    @property
    def sha256(self) -> str:
        """Fingerprint of the file's content (a resumed study must use the same space)."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Read and validate a YAML space file (``embedded:<name>`` names a shipped one)."""
        s = str(path)
        if s.startswith("embedded:"):
            return cls.embedded(s.split(":", 1)[1])
        p = Path(path)
        if not p.is_file():
            raise SpaceError(
                f"search space file {s!r} does not exist; pass a YAML file such as "
                f"search_spaces/digits.yaml or one of embedded:{', embedded:'.join(EMBEDDED)}"
            )
        return cls.from_yaml(p.read_text(), source=s)

    @classmethod
    def embedded(cls, name: str) -> SearchSpace:
        """A space shipped inside the package (works after a plain ``pip install``)."""
        name = name.removesuffix(".yaml")
        if name not in EMBEDDED:
            raise SpaceError(
                f"unknown embedded search space {name!r}; expected one of {', '.join(EMBEDDED)}"
            )
        text = resources.files("autocompress").joinpath("search_spaces", f"{name}.yaml").read_text()
        return cls.from_yaml(text, source=f"embedded:{name}")

    @classmethod
    def from_yaml(cls, text: str, source: str = "space") -> SearchSpace:
        """Parse and validate YAML text; any problem is one :class:`SpaceError` line."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise SpaceError(
                f"search space {source} is not valid YAML{where} "
                f"({getattr(exc, 'problem', None) or exc}); see search_spaces/digits.yaml"
            ) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SpaceError(
                f"search space {source} must be a YAML mapping with defaults/rules, "
                f"got {type(data).__name__}; see search_spaces/digits.yaml"
            )
        try:
            spec = SpaceFile.model_validate(data)
        except ValidationError as exc:
            raise SpaceError(f"search space {source}: {_explain(exc, data)}") from None
        return cls(spec=spec, source=source, text=text)

    def resolve(self, inventory: LayerInventory) -> ResolvedSpace:
        """Bind the space to a model's layers.

        Raises :class:`SpaceError` when a rule's ``fqn`` names a layer the model lacks or its
        pattern matches no layer (a rule by ``kind`` or ``output`` alone may match none: a
        shipped space serves models without Linear layers too).
        """
        rules = self.spec.rules
        for i, rule in enumerate(rules):
            hits = [layer.fqn for layer in inventory
                    if _matches(rule.match, layer, inventory)]
            m = rule.match
            if hits or m.fqn is None:  # a kind rule of a shared space may fit no layer of a model
                continue
            if m.fqn is not None and not m.fqn.startswith("re:") and m.fqn not in inventory:
                close = [n for n in inventory.fqns if n.split(".")[-1] == m.fqn.split(".")[-1]]
                hint = f" (similar: {', '.join(close[:3])})" if close else ""
                raise SpaceError(
                    f"search space {self.source}: rule {i + 1} match {m.describe()} names a "
                    f"layer the model lacks{hint}; valid layers: {_listing(inventory.fqns)} "
                    "(autocompress inspect lists them)"
                )
            kinds = sorted({layer.kind for layer in inventory})
            raise SpaceError(
                f"search space {self.source}: rule {i + 1} match {m.describe()} matches no layer "
                f"of this model (its layers: {_listing(inventory.fqns)}; kinds: "
                f"{', '.join(kinds)}); fix the rule or remove it"
            )
        params: dict[str, KnobParam] = {}
        rule_of: dict[str, int | None] = {}
        for layer in inventory:
            idx = next(
                (i for i, r in enumerate(rules)
                 if _matches(r.match, layer, inventory)), None
            )
            rule_of[layer.fqn] = idx
            knobs = _merge(self.spec.defaults, rules[idx] if idx is not None else None)
            for knob in KNOBS:
                spec = knobs.get(knob)
                if spec is None:
                    continue
                # Prune is one decision per coupled group, asked on its first member.
                if knob == "prune" and (not layer.prunable or layer.group != layer.fqn):
                    continue
                if knob == "rank" and (layer.kind == "DepthwiseConv2d" or layer.max_rank < 2):
                    continue
                name = f"{layer.fqn}/{knob}"
                params[name] = KnobParam(
                    name=name, fqn=layer.fqn, knob=knob,
                    distribution=_distribution(knob, spec),
                    max_rank=layer.max_rank, weight_shape=layer.weight_matrix_shape,
                )
        if not params:
            raise SpaceError(
                f"search space {self.source} searches nothing on this model (every knob is null "
                f"for its {len(inventory)} layers); set at least one knob in defaults or a rule"
            )
        return ResolvedSpace(params=params, inventory=inventory, source=self.source,
                             rule_of=rule_of)


# ---------------------------------------------------------------- helpers
def default_space_name(task_name: str) -> str | None:
    """The embedded space a built-in task uses when no ``--space`` is given."""
    if task_name in ("digits", "digits-distorted"):  # the same CNN
        return "digits"
    if task_name == "digits-mlp":
        return "linear_layers"
    if task_name.startswith("cifar10-resnet"):
        return "cifar_resnet"
    if task_name.startswith("torchvision:"):
        return "torchvision_cnn"
    return None


def default_space(
    task_name: str,
    inventory: LayerInventory | None = None,
    out: str | Path | None = None,
) -> SearchSpace:
    """The space a task uses without ``--space``: its embedded one, else one derived from
    ``inventory`` (:func:`autocompress.derived_space.derive_space`) and, with ``out``, saved
    as ``<out>/search_space.yaml`` for the user to edit.

    Without an inventory, a task with no embedded space is a :class:`SpaceError`. A
    ``torchvision:`` model whose inventory holds attention heads (a ViT, once its
    ``nn.MultiheadAttention`` is split) is derived too: the CNN space has no head knob.

    >>> default_space("digits").source
    'embedded:digits'
    """
    name = default_space_name(task_name)
    if (name == "torchvision_cnn" and inventory is not None
            and any(info.heads for info in inventory)):
        name = None
    if name is not None:
        return SearchSpace.embedded(name)
    if inventory is None:
        raise SpaceError(
            f"task {task_name!r} has no default search space; pass --space FILE.yaml "
            "(examples in search_spaces/: digits, cifar_resnet, torchvision_cnn, linear_layers)"
        )
    # Imported here: the derivation builds on this module's SearchSpace.
    from autocompress.derived_space import derive_space, save_derived_space

    space = derive_space(inventory, task_name)
    return space if out is None else save_derived_space(space, out)


def _canonical_prunes(policy: CompressionPolicy, inventory: LayerInventory) -> CompressionPolicy:
    """Write each prune ratio as the share of its group's channels (or heads) it removes.

    Pruning keeps whole blocks of channels (:func:`~autocompress.methods.shapes.kept_channels`),
    so neighbouring ratios build one model; written the same, they are one policy to the
    search (a study does not fine-tune it twice) and to a person reading it. The ratio is
    rounded up at the sixth decimal, which keeps the same channels.
    """
    from autocompress.methods.shapes import group_kept_channels

    layers = dict(policy.layers)
    for fqn, lp in policy.layers.items():
        if not lp.prune or fqn not in inventory or inventory[fqn].group is None:
            continue
        leader = inventory[inventory[fqn].group]  # type: ignore[index]
        kept = group_kept_channels(leader, lp.prune)
        ratio = math.ceil((1 - kept / leader.out_channels) * 1e6) / 1e6
        lp = lp.model_copy(update={"prune": ratio or None})
        if lp.model_dump(exclude_none=True):
            layers[fqn] = lp
        else:  # a ratio that keeps every channel, and no other knob: the layer is untouched
            del layers[fqn]
    return policy.model_copy(update={"layers": layers})


def _drop_skipped_ranks(policy: CompressionPolicy, inventory: LayerInventory) -> CompressionPolicy:
    """Remove ranks that pruning pushed to or above break-even (apply_policy would skip them).

    The shared shape rules decide it on the *pruned* weight, so the policy
    states exactly what is applied.
    """
    from autocompress.cost.analytic import compressed_shapes

    if not any(lp.rank is not None for lp in policy.layers.values()):
        return policy
    real = {s.fqn: s.rank for s in compressed_shapes(policy, inventory)}
    layers = {}
    for fqn, lp in policy.layers.items():
        if lp.rank is not None and real.get(fqn) is None:
            lp = lp.model_copy(update={"rank": None})
        if not lp.is_empty() or lp.bits is not None or lp.act_bits is not None:
            layers[fqn] = lp
    return policy.model_copy(update={"layers": layers})


def _merge(defaults: Knobs, rule: Rule | None) -> dict[str, KnobSpec | None]:
    merged = {k: getattr(defaults, k) for k in KNOBS}
    if rule is not None:
        for k in KNOBS:
            if k in rule.model_fields_set:  # an explicit null in a rule switches the knob off
                merged[k] = getattr(rule, k)
    return merged


def _distribution(knob: str, spec: KnobSpec) -> BaseDistribution:
    if spec.choices is not None:
        vals: list[Any] = sorted(spec.choices)
        if knob in ("bits", "act_bits"):
            vals = [int(v) for v in vals]
        return CategoricalDistribution(vals)
    assert spec.low is not None and spec.high is not None
    return FloatDistribution(spec.low, spec.high, step=spec.step)


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


def _listing(names: list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _explain(exc: ValidationError, data: dict[str, Any]) -> str:
    """One line for the first pydantic error: where (rule n / defaults), what, what is valid."""
    err = exc.errors()[0]
    loc = [x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-"))]
    msg = str(err["msg"]).removeprefix("Value error, ")
    where = "top level"
    rest = list(loc)
    if rest and rest[0] == "rules" and len(rest) > 1 and isinstance(rest[1], int):
        i = rest[1]
        rules = data.get("rules") or []
        match = rules[i].get("match") if i < len(rules) and isinstance(rules[i], dict) else None
        where = f"rule {i + 1}" + (f" (match {match})" if match else "")
        rest = rest[2:]
    elif rest and rest[0] == "defaults":
        where = "defaults"
        rest = rest[1:]
    knob = next((str(x) for x in rest if x in KNOBS), None)
    if err["type"] == "extra_forbidden":
        key = str(rest[-1]) if rest else "?"
        if knob and len(rest) > 1:
            valid = "low, high, step or choices"
        elif where.startswith("rule") and rest and rest[0] == "match":
            valid = "fqn (exact or re:<regex>), kind, output (true|false)"
        elif where == "top level":
            valid = "schema_version, description, defaults, rules"
        else:
            valid = ", ".join(KNOBS) + (" and match" if where.startswith("rule") else "")
        return f"{where}: unknown key {key!r}; valid keys: {valid}"
    if err["type"] in ("model_type", "dict_type", "model_attributes_type"):
        what = (": " + ".".join(map(str, rest))) if rest else ""
        return f"{where}{what} must be a mapping (given {err.get('input')!r})"
    if err["type"] == "missing":
        return f"{where}: missing {'.'.join(map(str, rest))!r}"
    if rest and rest[0] == "match":
        if err["type"] == "literal_error":
            return (f"{where}: unknown kind {err.get('input')!r}; valid kinds: "
                    f"{', '.join(KINDS)}")
        return f"{where}: {msg}"
    if where == "top level" and rest and rest[0] == "schema_version":
        return f"schema_version must be {SCHEMA_VERSION}, got {err.get('input')!r}"
    if knob:
        return f"{where}: {knob}: {msg}; valid: {VALID[knob]}"
    path = ".".join(map(str, rest)) or "value"
    return f"{where}: {path}: {msg} (given {err.get('input')!r})"

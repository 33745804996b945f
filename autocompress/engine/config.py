"""The run configuration of ``autocompress search``: one validated object from defaults,
an optional ``--config`` YAML file and CLI flags (flags override the file).

>>> cfg = SearchConfig.build(overrides={"task": "digits", "trials": 5})
>>> cfg.trials, cfg.strategy, cfg.out
(5, 'tpe', 'results/digits')
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autocompress.errors import ConfigError, InputFileError

Strategy = Literal["tpe", "nsga2", "random", "uniform", "greedy"]
Mode = Literal["constrained", "pareto"]
STRATEGIES: tuple[str, ...] = ("tpe", "nsga2", "random", "uniform", "greedy")
MODES: tuple[str, ...] = ("constrained", "pareto")

# Keys that must match when a run resumes an existing study: anything that changes which
# candidates are proposed or how they are scored. (trials may grow; out/storage/export do not
# matter; data_dir may move; the space is compared by content, so its path may change.)
RESUME_KEYS = (
    "task", "space_sha256", "budget", "target", "mode", "strategy", "seed",
    "finetune_steps", "lr", "temperature", "alpha", "report_every", "val_samples", "pruner",
    "distill",
    "threads", "fill_budget", "measure",
    "checkpoint", "precision",
)


class SearchConfig(BaseModel):
    """Every setting of one search run (all keys also valid in a ``--config`` YAML file).

    Defaults make ``autocompress search --task digits`` work alone and finish in a
    few minutes on a laptop CPU: 30 trials of 150 fine-tune steps under
    ``latency<=0.5x`` on ONNX Runtime at the task's target batch (digits: 64).
    """

    model_config = ConfigDict(extra="forbid")

    task: str = "digits"
    space: str | None = Field(None, description="YAML file or embedded:<name>; default per task")
    budget: str = "latency<=0.5x"
    target: str = "ort"
    trials: int = Field(30, ge=1, description="total trials wanted (resume counts finished ones)")
    out: str | None = Field(None, description="results folder; default results/<task>")
    strategy: Strategy = "tpe"
    mode: Mode = "constrained"
    seed: int = 0
    finetune_steps: int = Field(150, ge=0)
    lr: float | None = Field(
        None, gt=0, description="fine-tune learning rate; default the task's own (Task.lr: "
        "1e-3, 1e-4 for the pretrained minilm)")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the KD loss (1 - alpha: CE)")
    report_every: int = Field(50, ge=0, description="fine-tune steps between pruner reports")
    distill: Literal["auto", "kl", "mse", "cosine"] = Field(
        "auto", description="the fine-tune's distillation loss: auto (the task's own, else KL "
        "on class scores and MSE on other outputs), kl, mse or cosine (embeddings)")
    val_samples: int | None = Field(512, ge=1, description="fixed validation subset size")
    pruner: Literal["median", "none"] = "median"
    warm_start: Literal["refined", "uniform", "none"] = Field(
        "refined", description="tpe/nsga2: the first trial is one setting for every layer, "
        "8-bit weights (and inputs) where that helps, then the least uniform pruning predicted "
        "to meet the budget; refined: the second gives the budget's room left to the layers "
        "that setting hurts most (autocompress.engine.refine); none: the sampler's own draws")
    fill_budget: bool = Field(
        True, description="tpe in constrained mode: move each proposal to the budget's edge "
        "before it is trained (see autocompress.engine.fill); false: train proposals as drawn")
    measure: bool = Field(
        True, description="latency budgets: time each candidate on the target before its "
        "fine-tune and judge the budget on that measurement (see autocompress.engine.judge); "
        "false: the latency table's predictions decide, for a search away from the target")
    lut: str | None = Field(
        None, description="a latency table profiled on the target (`autocompress profile "
        "--out`): the search runs away from the target, judges latency on the table's "
        "predictions only and re-measures nothing; `autocompress verify` measures on the target")
    threads: int = Field(1, ge=0, description="torch threads for fine-tunes (0 = torch default)")
    device: str = Field(
        "cpu", description="auto|cpu|cuda|cuda:N: where fine-tunes, scoring, the teacher and "
        "int8 calibration run (latency is timed on the CPU target anyway); auto: CUDA if any")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast of the fine-tune's forward passes (fp16: CUDA only)")
    gpus_per_trial: float = Field(
        0.0, ge=0, description="--backend ray: GPUs Ray reserves per trial (0.5: two per GPU)")
    data_dir: str | None = None
    checkpoint: str | None = None
    storage: str | None = Field(None, description="Optuna storage URL; default journal file")
    study_name: str = "autocompress"
    export: bool = True
    backend: Literal["optuna", "ray"] = Field(
        "optuna", description="optuna: trials in this process; ray: Ray Tune trials (OptunaSearch "
        "+ ASHA), see autocompress.engine.ray_backend")
    ray_address: str | None = Field(
        None, description="--backend ray: auto or host:port of a Ray cluster; default a local "
        "runtime with this machine's CPUs")

    @property
    def out_dir(self) -> Path:
        return Path(self.out or default_out(self.task))

    @classmethod
    def build(
        cls,
        config_file: str | Path | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> SearchConfig:
        """Defaults < ``config_file`` < ``overrides`` (``None`` values in overrides are unset).

        Raises :class:`ConfigError` (one line) for unknown keys or bad values.
        """
        data: dict[str, Any] = {}
        source = "settings"
        if config_file is not None:
            data.update(load_config_file(config_file))
            source = f"config {str(config_file)!r} or flags"
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            cfg = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_explain(exc)}") from None
        if cfg.out is None:
            cfg = cfg.model_copy(update={"out": default_out(cfg.task)})
        return cfg

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def default_out(task: str) -> str:
    """``results/<task>`` with characters unsafe in a folder name replaced."""
    return "results/" + re.sub(r"[^A-Za-z0-9_.-]+", "-", task).strip("-")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``--config`` YAML mapping (``finetune-steps`` and ``finetune_steps`` both work)."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(
            f"config file {str(p)!r} does not exist; expected a YAML mapping of search settings "
            f"({', '.join(SearchConfig.model_fields)})"
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {str(p)!r} is not valid YAML ({exc}); expected a mapping") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config {str(p)!r} must be a YAML mapping of settings, got {type(data).__name__}"
        )
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _explain(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(x) for x in err["loc"]) or "?"
    given = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"unknown key {key!r}; valid keys: {', '.join(SearchConfig.model_fields)}"
    if key == "strategy":
        return f"strategy {given!r} is not one of {', '.join(STRATEGIES)}"
    if key == "mode":
        return f"mode {given!r} is not one of {', '.join(MODES)}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{key}={given!r} is invalid ({msg})"

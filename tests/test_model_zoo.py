"""benchmarks/model_zoo.py: tiny models of each family through every stage, and the table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _zoo() -> Any:  # the benchmark is a script, not a package module
    if "model_zoo" in sys.modules:
        return sys.modules["model_zoo"]
    spec = importlib.util.spec_from_file_location("model_zoo", ROOT / "benchmarks" / "model_zoo.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["model_zoo"] = mod
    spec.loader.exec_module(mod)
    return mod


def _check(name: str) -> dict[str, Any]:
    zoo = _zoo()
    row = zoo.run_stages(name, "tiny")
    assert row["failed"] is None, row.get("traceback")
    assert row["reached"] == zoo.STAGES[-1]
    assert set(row["seconds"]) == set(zoo.STAGES)
    return row


@pytest.mark.parametrize("name", [
    pytest.param("resnet18", marks=pytest.mark.slow),  # about 10 s alone, 30 s on a busy machine
    "hf:bert",
])
def test_one_of_each_family_goes_through_every_stage(name: str) -> None:
    row = _check(name)
    assert row["peak_rss_mb"] > 0 and row["search_trials"] == 2
    if name == "resnet18":
        assert row["input"] == "64x64" and row["space"] == "embedded:torchvision_cnn"
    else:
        assert row["space"] == "derived" and row["input"].startswith("dict input_ids=1x8")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "hf:distilbert", "hf:roberta", "hf:vit"])
def test_more_tiny_models_go_through_every_stage(name: str) -> None:
    _check(name)


def test_the_table_and_the_goal_line_from_hand_made_rows() -> None:
    zoo = _zoo()
    seconds = {s: 1.0 for s in zoo.STAGES}
    ok = {"failed": None, "error": None, "reached": "search", "seconds": seconds,
          "peak_rss_mb": 900.0, "input": "64x64", "params_m": 11.7}
    rows = [{"model": f"net{i}", "size": "base", **ok} for i in range(19)]
    rows.append({"model": "squeezenet1_0", "size": "base", "reached": "inspect",
                 "failed": "space", "error": "SpaceError: a|b", "seconds": {"build": 2.0},
                 "peak_rss_mb": 800.0})
    rows += [{"model": f, "size": "base", **ok} for f in zoo.HF_FAMILIES]
    result = {"rows": rows, "skipped": {"vit_h_14": 632.0}, "not_run": ["regnet_y_32gf"],
              "settings": {"max_params_m": 150.0}, "torchvision_total": 20}
    md = zoo.render(result)
    assert "**met**: torchvision 19/20 (95%; 20 run), Hugging Face 4/4" in md
    assert "| squeezenet1_0 |  |  | inspect | space | SpaceError: a\\|b | 2.0 |" in md
    assert "vit_h_14 (632 M)" in md and "regnet_y_32gf" in md
    result["rows"] = rows[1:]  # one passing model fewer: 18 of 20 is under the goal
    assert "**missed**" in zoo.render(result)
    result["rows"] = [r for r in rows if r["model"] != "hf:vit"]
    assert "**missed**" in zoo.render(result) and "Hugging Face 3/4" in zoo.render(result)

"""Budget strings: every documented form, the grammar in every error, Optuna-style checks."""

from __future__ import annotations

import pytest

from autocompress.cost import Costs, parse_budget
from autocompress.errors import BudgetError

BASE = Costs(macs=1_000_000, bops=10**9, params=50_000, size_bytes=200_000, latency_ms=4.0)


@pytest.mark.parametrize(
    ("text", "metric", "absolute"),
    [
        ("latency<=0.5x", "latency", 2.0),
        ("latency<=50%", "latency", 2.0),
        ("latency<=2.5ms", "latency", 2.5),
        ("latency<=300us", "latency", 0.3),
        ("latency<=300µs", "latency", 0.3),
        ("latency<=0.01s", "latency", 10.0),
        ("macs<=40%", "macs", 400_000),
        ("macs<=300K", "macs", 300_000),
        ("macs<=1e6", "macs", 1_000_000),
        ("bops<=1e9", "bops", 1e9),
        ("bops<=2G", "bops", 2e9),
        ("params<=0.25x", "params", 12_500),
        ("size<=1.5MB", "size", 1_500_000),
        ("size<=200KB", "size", 200_000),
        ("size<=1MiB", "size", 2**20),
        ("size<=4096", "size", 4096),
        (" Size <= 0.5X ", "size", 100_000),
    ],
)
def test_valid_forms(text, metric, absolute):
    b = parse_budget(text)
    assert b.metrics == [metric]
    assert b.limits(BASE)[metric] == pytest.approx(absolute)


@pytest.mark.parametrize(
    "text",
    ["latency<0.5", "latency=0.5x", "latency>=0.5x", "", "0.5x", "latency<=", "latency<=abc",
     "latency<=0.5x,", "speed<=0.5x", "latency<=2.5", "latency<=2.5MB", "size<=3ms",
     "macs<=0x", "latency<=-1ms"],
)
def test_bad_forms_show_the_grammar(text):
    with pytest.raises(BudgetError) as exc:
        parse_budget(text)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "expected <metric><=<value>[unit] joined by commas" in msg
    assert "latency|macs|size|bops|params" in msg


def test_exact_message_for_a_missing_equals():
    with pytest.raises(BudgetError) as exc:
        parse_budget("latency<0.5")
    assert str(exc.value) == (
        "expected <metric><=<value>[unit] joined by commas, metric one of "
        'latency|macs|size|bops|params, e.g. "latency<=0.5x,size<=1.5MB"; got \'latency<0.5\''
    )


def test_unit_error_names_the_units_of_the_metric():
    with pytest.raises(BudgetError, match=r"latency takes ms, us, s, x or %"):
        parse_budget("latency<=2.5")


def test_several_clauses_check_optuna_convention():
    b = parse_budget("latency<=0.5x, size<=150KB,macs<=60%")
    assert b.needs_latency and b.metrics == ["latency", "size", "macs"]
    ok, v = b.check(Costs(macs=500_000, bops=0, params=0, size_bytes=100_000, latency_ms=1.0), BASE)
    assert ok and all(x <= 0 for x in v.values())
    assert v["latency"] == pytest.approx(1.0 / 2.0 - 1)
    ok, v = b.check(Costs(macs=900_000, bops=0, params=0, size_bytes=100_000, latency_ms=3.0), BASE)
    assert not ok
    assert v["latency"] == pytest.approx(0.5) and v["macs"] == pytest.approx(0.5)
    assert v["size"] < 0
    assert b.constraints(Costs(macs=900_000, bops=0, params=0, size_bytes=0, latency_ms=3.0),
                         BASE) == pytest.approx([0.5, -1.0, 0.5])


def test_needs_latency_only_when_limited():
    assert not parse_budget("size<=1MB,macs<=0.5x").needs_latency


def test_relative_without_baseline_and_missing_latency_are_clear_errors():
    with pytest.raises(BudgetError, match="relative to the uncompressed model"):
        parse_budget("macs<=0.5x").check(BASE, None)
    with pytest.raises(BudgetError, match="no latency cost"):
        parse_budget("latency<=2ms").check(Costs(macs=1, bops=1, params=1, size_bytes=1))


def test_tightest_clause_of_a_repeated_metric_wins():
    assert parse_budget("latency<=3ms,latency<=0.5x").limits(BASE) == {"latency": 2.0}


def test_budget_below_smallest_reachable_policy():
    b = parse_budget("latency<=0.1x")
    smallest = Costs(macs=100_000, bops=0, params=0, size_bytes=0, latency_ms=1.0)
    with pytest.raises(BudgetError, match=r"below what the smallest policy .* reaches \(1ms\)"):
        b.check_reachable(smallest, BASE)
    parse_budget("latency<=0.3x").check_reachable(smallest, BASE)  # 1.0 <= 1.2: fine

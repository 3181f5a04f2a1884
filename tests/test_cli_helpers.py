"""CLI helpers that turn API answers into what an operator reads."""

from __future__ import annotations

import pytest

from modelfleet.cli.main import _desired, _parse_slo, _served
from modelfleet.errors import InvalidInputError


def test_desired_and_served_show_drift_between_director_and_device() -> None:
    assignments = [{"model": "m", "production": 2, "candidate": 3, "mode": "split", "share": 0.1}]
    report = {"models": {"m": {"active": {"version": 1}, "candidate": None, "mode": "full"}}}
    assert _desired(assignments) == "m v2 + v3 (split 10%)"
    assert _served(report) == "m v1"
    assert _desired(None) == "-" and _served(None) == "-"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", {}), ("p99_ms=100,error_rate=0.01", {"p99_ms": 100.0, "error_rate": 0.01})],
)
def test_slo_pairs_parse(text: str, expected: dict[str, float]) -> None:
    assert _parse_slo(text) == expected


@pytest.mark.parametrize("text", ["p99_ms", "p99_ms=fast", "=3"])
def test_malformed_slo_is_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidInputError, match="--slo"):
        _parse_slo(text)

"""The synthetic data of the Evidently comparison (issue 9), numpy only: the Evidently
worker runs in its own virtual environment and imports this module, never modelfleet.

100,000 reference rows and 100,000 current rows of 50 input columns (49 standard normal
``f0``..``f48`` and one categorical ``colour``) and 2 output columns (``score`` from a
Beta(2, 5) and its ``label``), one current set per scenario with a known shift.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["COLOURS", "EXPECTED", "NUMERIC", "ROWS", "SCENARIOS", "make"]

ROWS = 100_000
NUMERIC = 49
COLOURS = ("red", "green", "blue", "grey")
_P = (0.4, 0.3, 0.2, 0.1)

#: scenario -> the columns whose drift it plants (``group/name``).
EXPECTED: dict[str, tuple[str, ...]] = {
    "stable": (),
    "mean_shift": tuple(f"inputs/f{i}" for i in range(5)),  # +0.5 sd on 5 columns
    "variance": tuple(f"inputs/f{i}" for i in range(5, 10)),  # sd x 1.5 on 5 columns
    "new_category": ("inputs/colour",),  # 20 % of rows "purple"
    "one_of_50": ("inputs/f20",),  # +0.5 sd on one column
    "outputs_only": ("outputs/score", "outputs/label"),  # Beta(2, 5) -> Beta(3, 4)
}
SCENARIOS = tuple(EXPECTED)


def _rows(rng: np.random.Generator, n: int, scenario: str) -> dict[str, Any]:
    x = rng.standard_normal((n, NUMERIC))
    colour = rng.choice(np.array(COLOURS, dtype=object), n, p=_P)
    a, b = (3.0, 4.0) if scenario == "outputs_only" else (2.0, 5.0)
    score = rng.beta(a, b, n)
    if scenario == "mean_shift":
        x[:, 0:5] += 0.5
    elif scenario == "variance":
        x[:, 5:10] *= 1.5
    elif scenario == "one_of_50":
        x[:, 20] += 0.5
    elif scenario == "new_category":
        colour[rng.random(n) < 0.2] = "purple"
    inputs: dict[str, Any] = {f"f{i}": x[:, i] for i in range(NUMERIC)}
    inputs["colour"] = colour
    return {"inputs": inputs, "outputs": {"score": score, "label": (score > 0.5).astype(np.int64)}}


def make(scenario: str, rows: int = ROWS) -> tuple[dict[str, Any], dict[str, Any]]:
    """(reference, current) for ``scenario``: each ``{"inputs": {...}, "outputs": {...}}``
    of 1-D arrays; the same seeds on every run and in both environments."""
    if scenario not in EXPECTED:
        raise ValueError(f"unknown scenario {scenario!r}")
    reference = _rows(np.random.default_rng(2026), rows, "stable")
    current = _rows(np.random.default_rng(7 + SCENARIOS.index(scenario)), rows, scenario)
    return reference, current

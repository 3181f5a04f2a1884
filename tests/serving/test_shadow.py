"""Shadow comparison judges decisions, not digits (issue 6, defect 16), and the mirror stays
bounded and reports failures as disagreements."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

from modelfleet.catalog.schema import OutputDecision
from modelfleet.errors import InvalidTensorError
from modelfleet.packaging.sklearn import sklearn_to_onnx
from modelfleet.serving.model import Servable
from modelfleet.serving.runtime import LoadedModel
from modelfleet.serving.shadow import Comparison, ShadowMirror, compare_outputs
from tests.fakes_model import FakeModel, linear_classifier

LABEL = OutputDecision("label")
ARGMAX = OutputDecision("argmax")
REGRESSION = OutputDecision("regression", rtol=0.05, atol=0.0)
IGNORE = OutputDecision("ignore")

P = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]], np.float32)
Y = np.array([[10.0], [200.0]], np.float32)

# name: (production, candidate, decisions, disagreed, score_shift or None)
CASES: dict[
    str,
    tuple[
        dict[str, np.ndarray], dict[str, np.ndarray], dict[str, OutputDecision], bool, float | None
    ],
] = {
    "identical outputs agree": ({"p": P}, {"p": P.copy()}, {"p": ARGMAX}, False, 0.0),
    "scores moved but the top class did not: agree, shift reported": (
        {"p": P},
        {"p": np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]], np.float32)},
        {"p": ARGMAX},
        False,
        (0.2 + 0.1 + 0.1 + 0.1 + 0.1 + 0.0) / 6,
    ),
    "top class changed on one row: disagree": (
        {"p": P},
        {"p": np.array([[0.7, 0.2, 0.1], [0.6, 0.1, 0.3]], np.float32)},
        {"p": ARGMAX},
        True,
        (0.0 + 0.0 + 0.0 + 0.5 + 0.5 + 0.0) / 6,
    ),
    "different label: disagree": (
        {"label": np.array([1, 2])},
        {"label": np.array([1, 0])},
        {"label": LABEL},
        True,
        None,
    ),
    "different string label: disagree": (
        {"label": np.array(["cat", "dog"], dtype=object)},
        {"label": np.array(["cat", "cow"], dtype=object)},
        {"label": LABEL},
        True,
        None,
    ),
    "regression within rtol: agree": (
        {"y": Y},
        {"y": Y * 1.04},
        {"y": REGRESSION},
        False,
        None,
    ),
    "regression beyond rtol: disagree": (
        {"y": Y},
        {"y": Y * np.array([[1.0], [1.06]], np.float32)},
        {"y": REGRESSION},
        True,
        None,
    ),
    "NaN where production had NaN: agree": (
        {"y": np.array([np.nan, 1.0])},
        {"y": np.array([np.nan, 1.0])},
        {"y": REGRESSION},
        False,
        None,
    ),
    "ignored output may differ": (
        {"label": np.array([1]), "debug": np.array([1.0])},
        {"label": np.array([1]), "debug": np.array([9.0])},
        {"label": LABEL, "debug": IGNORE},
        False,
        None,
    ),
    "booleans declared regression are compared as labels": (
        {"flag": np.array([True, False])},
        {"flag": np.array([True, True])},
        {"flag": REGRESSION},
        True,
        None,
    ),
    "missing output: disagree": ({"label": np.array([1])}, {}, {"label": LABEL}, True, None),
    "other shape: disagree": (
        {"p": P},
        {"p": P[:1]},
        {"p": ARGMAX},
        True,
        None,
    ),
    "undeclared probabilities are judged by top class (inferred)": (
        {"probabilities": P},
        {"probabilities": np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]], np.float32)},
        {},
        False,
        (0.2 + 0.1 + 0.1 + 0.1 + 0.1 + 0.0) / 6,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_comparison_is_about_decisions(case: str) -> None:
    production, candidate, decisions, disagreed, shift = CASES[case]
    got = compare_outputs(production, candidate, decisions)
    assert got.disagreed is disagreed
    if shift is None:
        assert got.score_shift is None
    else:
        assert got.score_shift == pytest.approx(shift, abs=1e-6)


def test_comparison_is_truthy_only_when_disagreed_for_callbacks_taking_a_bool() -> None:
    assert not Comparison(False, 0.4)
    assert Comparison(True, None)


def _run_mirror(
    candidate: Servable,
    requests: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]],
    queue_size: int = 256,
) -> tuple[list[bool], list[Comparison], int]:
    results: list[Comparison] = []
    drops: list[int] = []
    mirror = ShadowMirror(
        lambda model, comparison: results.append(comparison),
        lambda: drops.append(1),
        queue_size=queue_size,
    )

    async def go() -> list[bool]:
        accepted = [mirror.submit(candidate, i, o) for i, o in requests]
        await mirror.join()
        await mirror.close()
        return accepted

    accepted = asyncio.run(go())
    return accepted, results, len(drops)


def _classifiers(seed_a: int, seed_b: int) -> tuple[FakeModel, FakeModel]:
    rng = np.random.default_rng(seed_a)
    a = linear_classifier("m", "1", rng.standard_normal((4, 3)))
    b = linear_classifier("m", "2", np.random.default_rng(seed_b).standard_normal((4, 3)))
    return a, b


def test_full_shadow_queue_drops_and_counts_instead_of_waiting() -> None:
    production, candidate = _classifiers(1, 2)
    inputs = {"X": np.ones((1, 4), np.float32)}
    job = (inputs, production.infer(inputs))
    accepted, results, drops = _run_mirror(candidate, [job] * 5, queue_size=2)
    assert accepted == [True, True, False, False, False]
    assert drops == 3
    assert len(results) == 2
    assert candidate.calls == 2


def test_candidate_that_raises_counts_as_a_disagreement() -> None:
    production, candidate = _classifiers(1, 1)
    candidate.fail_with(RuntimeError("out of memory"))
    inputs = {"X": np.ones((1, 4), np.float32)}
    _, results, _ = _run_mirror(candidate, [(inputs, production.infer(inputs))])
    assert results == [Comparison(True, None)]


def test_candidate_that_refuses_what_production_accepted_disagrees() -> None:
    production, candidate = _classifiers(1, 1)
    candidate.fail_with(InvalidTensorError("input 'X': expected datatype FP16, got FP32"))
    inputs = {"X": np.ones((1, 4), np.float32)}
    _, results, _ = _run_mirror(candidate, [(inputs, production.infer(inputs))])
    assert [r.disagreed for r in results] == [True]


def test_the_candidates_declared_decisions_judge_the_comparison() -> None:
    production, b = _classifiers(1, 2)
    # Same outputs as b, but the candidate declares both outputs ignorable.
    candidate = FakeModel(
        "m", "2", b.schema, b.infer, decisions={"label": IGNORE, "probabilities": IGNORE}
    )
    rows = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    jobs = [({"X": r[None]}, production.infer({"X": r[None]})) for r in rows]
    _, judged_by_b, _ = _run_mirror(b, jobs)
    _, judged_ignoring, _ = _run_mirror(candidate, jobs)
    assert any(c.disagreed for c in judged_by_b)  # random weights: some rows differ
    assert not any(c.disagreed for c in judged_ignoring)


# -- two genuinely different classifiers (the defect as reported) ---------------------------


@pytest.fixture(scope="module")
def boosting_and_forest(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[LoadedModel, LoadedModel, np.ndarray]:
    X, y = make_classification(
        n_samples=1200, n_features=6, n_informative=4, n_redundant=0, n_classes=3,
        n_clusters_per_class=1, class_sep=1.5, random_state=3,
    )  # fmt: skip
    X = X.astype(np.float32)
    train, test = slice(0, 1000), slice(1000, 1200)
    gb = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0)
    rf = RandomForestClassifier(n_estimators=40, max_depth=8, random_state=0)
    root: Path = tmp_path_factory.mktemp("shadow")
    loaded = []
    for version, est in (("1", gb), ("2", rf)):
        est.fit(X[train], y[train])
        path = root / f"v{version}.onnx"
        path.write_bytes(sklearn_to_onnx(est, X[:1]))
        model = LoadedModel.load("task", version, path, "sha256:" + version)
        model.warm_up()
        loaded.append(model)
    return loaded[0], loaded[1], X[test]


def test_retrained_classifier_that_mostly_agrees_is_not_a_disagreement_on_every_request(
    boosting_and_forest: tuple[LoadedModel, LoadedModel, np.ndarray],
) -> None:
    v1, v2, X = boosting_and_forest
    jobs = [({"X": X[i : i + 1]}, v1.infer({"X": X[i : i + 1]})) for i in range(len(X))]
    # The defect's rule (every float element within 1e-4) flags nearly every request ...
    elementwise = sum(
        not np.allclose(out["probabilities"], v2.infer(inp)["probabilities"], rtol=0, atol=1e-4)
        for inp, out in jobs
    )
    assert elementwise / len(jobs) > 0.9
    # ... the decision rule only the requests whose top class differs.
    assert v2.decisions == {"label": LABEL, "probabilities": ARGMAX}
    accepted, results, drops = _run_mirror(v2, jobs)
    assert all(accepted) and drops == 0 and len(results) == len(jobs)
    rate = sum(r.disagreed for r in results) / len(results)
    assert rate < 0.15  # the guard's default threshold is 0.30
    shifts = [r.score_shift for r in results]
    assert all(s is not None for s in shifts)
    assert np.mean([s for s in shifts if s is not None]) > 0.0

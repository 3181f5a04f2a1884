"""Reference profiles and the counters and windows built on them (issue 9).

The contract: a device's counts land in exactly the profile's buckets whatever the batch
sizes, windows merge exactly (sketches within their error bound), and both the profile and
the window survive JSON strictly.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.profile import (
    CategoricalProfile,
    NumericProfile,
    ReferenceProfile,
)
from modelfleet.monitoring.profile_counts import ProfileCounter, ProfileWindow, merge_wire

RNG = np.random.default_rng(7)
N = 20_000


def reference() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(N)
    zeros = np.where(rng.random(N) < 0.7, 0.0, rng.exponential(1.0, N))  # heavy ties at 0
    cat = rng.choice(["a", "b", "c", "d"], N, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    cat[:50] = None
    x = x.copy()
    x[:30] = np.nan
    return {"x": x, "zeros": zeros, "cat": cat, "code": rng.integers(0, 3, N)}


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    ref = reference()
    scores = np.random.default_rng(1).random((N, 2))
    return ReferenceProfile.build(
        ref,
        categorical=["cat", "code"],
        outputs={"p0": scores[:, 0], "p1": scores[:, 1], "label": (scores[:, 0] > 0.5) * 1},
        categorical_outputs=["label"],
    )


def by_hand(f: NumericProfile, values: np.ndarray) -> tuple[list[int], int]:
    """Bucket counts the slow obvious way: bisect_left over the edges, NaN apart."""
    import bisect

    counts = [0] * f.buckets
    missing = 0
    for v in values.tolist():
        if v != v:
            missing += 1
        else:
            counts[bisect.bisect_left(f.edges, v)] += 1
    return counts, missing


def test_numeric_edges_come_from_reference_quantiles_with_empty_under_and_overflow(
    profile: ReferenceProfile,
) -> None:
    f = profile.inputs[0]
    assert isinstance(f, NumericProfile) and f.name == "x"
    assert len(f.edges) == 11 and f.buckets == 12
    assert f.counts[0] == 0 and f.counts[-1] == 0  # nothing below the minimum or above the max
    inner = np.array(f.counts[1:-1])
    assert abs(inner - (N - 30) / 10).max() <= 1  # deciles
    assert f.missing == 30 and f.rows == N
    x = reference()["x"]
    assert f.mean == pytest.approx(np.nanmean(x)) and f.std == pytest.approx(np.nanstd(x))


def test_heavy_ties_merge_repeated_edges() -> None:
    f = ReferenceProfile.build({"zeros": reference()["zeros"]}).inputs[0]
    assert isinstance(f, NumericProfile)
    assert len(set(f.edges)) == len(f.edges) < 11  # 70 % zeros: the first 7 deciles are 0
    assert 0.0 in f.edges
    zero_bucket = f.edges.index(0.0)
    assert f.counts[zero_bucket] == pytest.approx(0.7 * N, rel=0.03)


def test_constant_column_keeps_one_bucket_between_under_and_overflow() -> None:
    f = ReferenceProfile.build({"c": np.full(500, 3.0)}).inputs[0]
    assert isinstance(f, NumericProfile)
    assert f.edges[-1] == 3.0 and f.counts == (0, 500, 0) and f.std == 0.0


def test_categorical_keeps_top_k_then_other_ties_by_value() -> None:
    values = np.array(["b"] * 5 + ["a"] * 5 + ["c"] * 3 + ["d"] * 1 + ["e"] * 1)
    f = ReferenceProfile.build({"v": values}, categorical=["v"], top_k=3).inputs[0]
    assert isinstance(f, CategoricalProfile)
    assert f.categories == ("a", "b", "c") and f.counts == (5, 5, 3, 2)


def test_outputs_are_profiled_per_column_and_labels_as_categories(
    profile: ReferenceProfile,
) -> None:
    assert profile.output_names == ("p0", "p1", "label")
    label = profile.outputs[2]
    assert isinstance(label, CategoricalProfile) and set(label.categories) == {"0", "1"}
    assert profile.rows == N


def test_profile_round_trips_through_json_and_keeps_its_digest(
    profile: ReferenceProfile,
) -> None:
    doc = json.loads(json.dumps(profile.to_dict()))
    again = ReferenceProfile.from_dict(doc)
    assert again == profile and again.digest == profile.digest
    assert doc["format"] == 1 and profile.digest.startswith("sha256:")


def _mutate(doc: dict[str, Any], how: str) -> None:
    num = doc["inputs"][0]
    if how == "newer":
        doc["format"] = 2
    elif how == "unknown-field":
        doc["extra"] = 1
    elif how == "edges-not-increasing":
        num["edges"][3] = num["edges"][2]
    elif how == "counts-length":
        num["counts"].append(0)
    elif how == "negative-count":
        num["counts"][1] = -1
    elif how == "nan-mean":
        num["mean"] = float("nan")
    elif how == "sketch-of-other-data":
        num["sketch"] = doc["inputs"][1]["sketch"]
    elif how == "sketch-garbage":
        num["sketch"] = "bm90IGEgc2tldGNo"
    elif how == "unknown-kind":
        num["kind"] = "text"
    elif how == "duplicate-name":
        doc["inputs"][1]["name"] = num["name"]
    elif how == "rows-disagree":
        doc["outputs"][0]["missing"] += 1


@pytest.mark.parametrize(
    "how",
    ["newer", "unknown-field", "edges-not-increasing", "counts-length", "negative-count",
     "nan-mean", "sketch-of-other-data", "sketch-garbage", "unknown-kind", "duplicate-name",
     "rows-disagree"],
)  # fmt: skip
def test_from_dict_refuses_a_malformed_profile(profile: ReferenceProfile, how: str) -> None:
    doc = json.loads(json.dumps(profile.to_dict()))
    _mutate(doc, how)
    with pytest.raises(InvalidInputError):
        ReferenceProfile.from_dict(doc)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"bins": 1}, "bins"), ({"top_k": 0}, "top_k"), ({"categorical": ["nope"]}, "not a column"),
     ({"names": ["a", "a"]}, "unique")],
)  # fmt: skip
def test_build_refuses_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        ReferenceProfile.build(np.zeros((10, 2)), **kwargs)


def test_build_refuses_a_numeric_column_without_finite_values() -> None:
    with pytest.raises(InvalidInputError, match="no finite value"):
        ReferenceProfile.build({"x": np.array([np.nan, np.inf])})


def current(rows: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 1.2, rows)
    x[::17] = np.nan
    x[::101] = np.inf
    cat = np.array(["a", "b", "z", None], dtype=object)[rng.integers(0, 4, rows)]
    code = rng.integers(0, 4, rows).astype(np.float64)  # float codes, one unseen (3)
    zeros = np.where(rng.random(rows) < 0.5, 0.0, rng.exponential(2.0, rows))
    scores = rng.random((rows, 2))
    inputs = {"x": x, "zeros": zeros, "cat": cat, "code": code}
    outputs = {"p0": scores[:, 0], "p1": scores[:, 1], "label": (scores[:, 0] > 0.4) * 1}
    return inputs, outputs


def count_in_batches(
    profile: ReferenceProfile, inputs: dict[str, Any], outputs: dict[str, Any], size: int
) -> ProfileWindow:
    counter = ProfileCounter(profile, flush_rows=64)
    rows = len(inputs["x"])
    for i in range(0, rows, size):
        counter.count(
            {k: v[i : i + size] for k, v in inputs.items()},
            {k: v[i : i + size] for k, v in outputs.items()},
        )
    return counter.snapshot()


def test_counts_land_in_the_profile_buckets_as_bisect_left_does(
    profile: ReferenceProfile,
) -> None:
    inputs, outputs = current(3000, 1)
    w = count_in_batches(profile, inputs, outputs, 50)
    for name in ("x", "zeros"):
        f = next(p for p in profile.inputs if p.name == name)
        assert isinstance(f, NumericProfile)
        counts, missing = by_hand(f, inputs[name])
        got = w.feature(name)
        assert got.buckets.tolist() == counts and got.missing == missing
        assert got.sketch is not None and got.sketch.n == sum(counts)
    x = w.feature("x")
    assert x.buckets[-1] >= 3000 // 101  # +inf lands in the overflow
    cat = w.feature("cat")
    f_cat = profile.inputs[2]
    assert isinstance(f_cat, CategoricalProfile)
    seen = inputs["cat"]
    assert cat.missing == sum(v is None for v in seen)
    assert cat.buckets[-1] == sum(v == "z" for v in seen)  # unseen value -> other
    assert cat.buckets[f_cat.categories.index("a")] == sum(v == "a" for v in seen)
    code = w.feature("code")
    f_code = profile.inputs[3]
    assert isinstance(f_code, CategoricalProfile)
    assert code.buckets[f_code.categories.index("1")] == int((inputs["code"] == 1).sum())
    assert code.buckets[-1] == int((inputs["code"] == 3).sum())
    assert w.rows == 3000 and w.feature("label", "outputs").n == 3000


def test_a_value_on_an_edge_counts_in_that_edge_bucket(profile: ReferenceProfile) -> None:
    f = profile.inputs[0]
    assert isinstance(f, NumericProfile)
    counter = ProfileCounter(profile)
    edge = f.edges[4]
    rows = 3
    counter.count(
        {"x": np.full(rows, edge), "zeros": np.zeros(rows), "cat": np.array(["a"] * rows),
         "code": np.zeros(rows, int)}
    )  # fmt: skip
    assert counter.snapshot().feature("x").buckets[4] == rows


@pytest.mark.parametrize("size", [1, 7, 64, 1000, 5000])
def test_counts_do_not_depend_on_batch_sizes(profile: ReferenceProfile, size: int) -> None:
    inputs, outputs = current(2500, 2)
    one = count_in_batches(profile, inputs, outputs, 2500)
    other = count_in_batches(profile, inputs, outputs, size)
    for g in ("inputs", "outputs"):
        assert np.array_equal(one.counts[g], other.counts[g])


def test_a_2d_array_counts_as_its_columns_in_profile_order() -> None:
    ref = np.random.default_rng(3).standard_normal((5000, 4))
    prof = ReferenceProfile.build(ref)
    batch = np.random.default_rng(4).standard_normal((300, 4))
    a, b = ProfileCounter(prof), ProfileCounter(prof)
    a.count(batch)
    for row in batch:
        b.count(row.reshape(1, -1))
    b.count(np.empty((0, 4)))
    big = ProfileCounter(prof, flush_rows=64)  # a batch above flush_rows: counted at once
    big.count(batch)
    wa, wb, wbig = a.snapshot(), b.snapshot(), big.snapshot()
    assert np.array_equal(wa.counts["inputs"], wb.counts["inputs"])
    assert np.array_equal(wa.counts["inputs"], wbig.counts["inputs"])
    assert [s.n for s in wbig.sketches["inputs"] if s is not None] == [300] * 4
    assert [wa.feature(n).n for n in prof.input_names] == [300] * 4


def test_snapshot_starts_a_new_window_unless_asked_not_to(profile: ReferenceProfile) -> None:
    inputs, outputs = current(400, 5)
    counter = ProfileCounter(profile)
    counter.count(inputs, outputs)
    kept = counter.snapshot(reset=False)
    first = counter.snapshot()
    assert np.array_equal(kept.counts["inputs"], first.counts["inputs"]) and first.rows == 400
    assert counter.snapshot().counts["inputs"].sum() == 0


@pytest.mark.parametrize(
    ("inputs", "outputs", "match"),
    [
        (np.zeros((3, 5)), None, "columns"),
        ({"x": np.zeros(3)}, None, "no column"),
        ({"x": np.zeros(3), "zeros": np.zeros(3), "cat": np.zeros(3), "code": np.zeros(2)},
         None, "one length"),
        ({"x": np.array(["a", "b"]), "zeros": np.zeros(2), "cat": np.zeros(2),
          "code": np.zeros(2)}, None, "non-number"),
        ({"x": np.zeros(3), "zeros": np.zeros(3), "cat": np.zeros(3), "code": np.zeros(3)},
         {"p0": np.zeros(2), "p1": np.zeros(2), "label": np.zeros(2)}, "same rows"),
    ],
    ids=["wrong-width", "missing-column", "ragged", "text-in-numeric", "outputs-rows"],
)  # fmt: skip
def test_a_bad_batch_is_refused_and_nothing_of_it_counted(
    profile: ReferenceProfile, inputs: Any, outputs: Any, match: str
) -> None:
    counter = ProfileCounter(profile)
    with pytest.raises(InvalidInputError, match=match):
        counter.count(inputs, outputs)
    w = counter.snapshot()
    assert w.counts["inputs"].sum() == 0 and w.counts["outputs"].sum() == 0


def test_window_round_trips_through_json_wire(profile: ReferenceProfile) -> None:
    inputs, outputs = current(1500, 6)
    w = count_in_batches(profile, inputs, outputs, 100)
    wire = json.loads(json.dumps(w.to_wire()))
    assert wire["format"] == 1 and wire["profile"] == profile.digest
    assert all(isinstance(i, int) for i in wire["inputs"]["index"])
    back = ProfileWindow.from_wire(wire, profile)
    for g in ("inputs", "outputs"):
        assert np.array_equal(back.counts[g], w.counts[g])
        for s, t in zip(back.sketches[g], w.sketches[g], strict=True):
            assert (s is None) == (t is None or t.n == 0)
            if s is not None and t is not None:
                assert s.to_bytes() == t.to_bytes()


def test_merged_windows_hold_exactly_the_counts_of_the_pooled_data(
    profile: ReferenceProfile,
) -> None:
    parts = [current(700, seed) for seed in range(10, 16)]
    pooled_in = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    pooled_out = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    pooled = count_in_batches(profile, pooled_in, pooled_out, 333)
    windows = [count_in_batches(profile, i, o, 64) for i, o in parts]
    merged = ProfileWindow.empty(profile)
    for w in windows:
        merged.merge(w)
    on_wire = merge_wire([w.to_wire() for w in windows], profile)
    for g in ("inputs", "outputs"):
        assert np.array_equal(merged.counts[g], pooled.counts[g])
        assert np.array_equal(on_wire.counts[g], pooled.counts[g])
    assert merged.windows == on_wire.windows == 6
    for name in ("x", "zeros"):
        a, b = merged.feature(name).sketch, on_wire.feature(name).sketch
        assert a is not None and b is not None
        c = pooled.feature(name).sketch
        assert c is not None and a.n == b.n == c.n


def test_merge_refuses_windows_of_another_profile(profile: ReferenceProfile) -> None:
    other = ReferenceProfile.build({"x": np.arange(100.0)})
    with pytest.raises(InvalidInputError, match="different reference profiles"):
        ProfileWindow.empty(profile).merge(ProfileWindow.empty(other))


def _wire_mutate(doc: dict[str, Any], how: str) -> None:
    if how == "newer":
        doc["format"] = 2
    elif how == "other-profile":
        doc["profile"] = "sha256:" + "0" * 64
    elif how == "index-out-of-range":
        doc["inputs"]["index"][-1] = 10_000
    elif how == "index-repeated":
        doc["inputs"]["index"][1] = doc["inputs"]["index"][0]
    elif how == "negative-count":
        doc["inputs"]["count"][0] = -1
    elif how == "float-count":
        doc["inputs"]["count"][0] = 1.5
    elif how == "bool-index":
        doc["inputs"]["index"][0] = True
    elif how == "lengths-differ":
        doc["inputs"]["count"].pop()
    elif how == "sketch-missing":
        del doc["sketches"]["inputs"]["x"]
    elif how == "sketch-of-another-column":
        doc["sketches"]["inputs"]["x"] = doc["sketches"]["inputs"]["zeros"]
    elif how == "sketch-of-unknown-column":
        doc["sketches"]["inputs"]["cat"] = doc["sketches"]["inputs"]["zeros"]
    elif how == "sketch-not-base64":
        doc["sketches"]["inputs"]["x"] = "***"


@pytest.mark.parametrize(
    "how",
    ["newer", "other-profile", "index-out-of-range", "index-repeated", "negative-count",
     "float-count", "bool-index", "lengths-differ", "sketch-missing",
     "sketch-of-another-column", "sketch-of-unknown-column", "sketch-not-base64"],
)  # fmt: skip
def test_from_wire_refuses_a_malformed_window(profile: ReferenceProfile, how: str) -> None:
    inputs, outputs = current(900, 8)
    doc = json.loads(json.dumps(count_in_batches(profile, inputs, outputs, 900).to_wire()))
    _wire_mutate(doc, how)
    with pytest.raises(InvalidInputError):
        ProfileWindow.from_wire(doc, profile)


def test_merge_wire_without_sketches_keeps_the_counts(profile: ReferenceProfile) -> None:
    inputs, outputs = current(900, 9)
    w = count_in_batches(profile, inputs, outputs, 900)
    fast = merge_wire([w.to_wire()] * 3, profile, sketches=False)
    assert np.array_equal(fast.counts["inputs"], 3 * w.counts["inputs"])
    assert all(s is None for s in fast.sketches["inputs"])


def test_profile_without_sketches_counts_without_them() -> None:
    prof = ReferenceProfile.build({"x": np.arange(1000.0)}, sketch_k=None)
    assert prof.to_dict()["inputs"][0].get("sketch") is None
    counter = ProfileCounter(prof)
    counter.count({"x": np.arange(10.0)})
    w = counter.snapshot()
    assert w.feature("x").sketch is None and w.to_wire()["sketches"]["inputs"] == {}
    assert ProfileWindow.from_wire(w.to_wire(), prof).feature("x").n == 10

"""Deterministic cohorts (rollout.cohorts): stable, nested, small fleets, blast radius."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet.errors import InvalidInputError
from modelfleet.rollout.cohorts import (
    MAX_STAGES,
    blast_radius_groups,
    plan_cohorts,
    position,
    stage_counts,
)

DEFAULT = [1.0, 9.0, 90.0, 100.0]
ids = st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=300, unique=True)
percents = st.lists(
    st.floats(min_value=0.01, max_value=99.99, allow_nan=False), min_size=0, max_size=5
).map(lambda ps: [*sorted(set(ps)), 100.0])


def test_position_is_the_documented_hash() -> None:
    digest = hashlib.sha256(b"ro-1\0dev-7").digest()
    assert position("dev-7", "ro-1") == int.from_bytes(digest[:8], "big") / 2**64


def test_position_is_uniform_enough_and_in_range() -> None:
    values = [position(f"dev-{i}", "ro-x") for i in range(20_000)]
    assert all(0.0 <= v < 1.0 for v in values)
    below = sum(v < 0.01 for v in values)
    assert 140 <= below <= 260  # 1 % of 20,000 = 200, ± ~4 sigma


def test_another_rollout_shuffles_the_fleet_differently() -> None:
    fleet = [f"dev-{i}" for i in range(1000)]
    a = set(plan_cohorts(fleet, "ro-a", DEFAULT).members(0))
    b = set(plan_cohorts(fleet, "ro-b", DEFAULT).members(0))
    assert len(a) == len(b) == 10 and a != b


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, [0, 0, 0, 0]),
        (1, [1, 1, 1, 1]),  # one device: it is the canary
        (2, [1, 1, 1, 2]),
        (3, [1, 1, 2, 3]),
        (10, [1, 1, 9, 10]),
        (99, [1, 9, 90, 99]),
        (100, [1, 9, 90, 100]),
        (101, [2, 10, 91, 101]),
    ],
    ids=lambda v: str(v),
)
def test_small_fleets_round_sensibly(n: int, expected: list[int]) -> None:
    assert stage_counts(n, DEFAULT) == expected


def test_float_noise_does_not_round_a_stage_up() -> None:
    # 1000 * 9.1 / 100 is 91.00000000000001 in floating point.
    assert stage_counts(1000, [9.1, 100]) == [91, 1000]


@given(n=st.integers(min_value=0, max_value=100_000), ps=percents)
def test_stage_counts_keep_their_promises(n: int, ps: list[float]) -> None:
    counts = stage_counts(n, ps)
    assert counts == sorted(counts)
    assert counts[-1] == n
    if n >= 1:
        assert counts[0] >= 1
    if n >= 2:
        assert all(c < n for c, p in zip(counts, ps, strict=True) if p < 100)


@pytest.mark.parametrize(
    ("n", "ps"),
    [(-1, DEFAULT), (5, []), (5, [0.0, 100.0]), (5, [101.0]), (5, [float("nan")])],
    ids=["negative-fleet", "no-stages", "zero-percent", "over-100", "nan"],
)
def test_bad_stage_counts_are_refused(n: int, ps: list[float]) -> None:
    with pytest.raises(InvalidInputError):
        stage_counts(n, ps)


@settings(max_examples=60)
@given(fleet=ids, ps=percents, rollout=st.text(max_size=8))
def test_cohorts_are_stable_across_replays_and_nested(
    fleet: list[str], ps: list[float], rollout: str
) -> None:
    plan = plan_cohorts(fleet, rollout, ps)
    replay = plan_cohorts(list(reversed(fleet)), rollout, ps)  # input order does not matter
    assert dict(plan.stage_of) == dict(replay.stage_of)
    assert plan.stages == len(ps)
    counts = stage_counts(len(fleet), ps)
    for k in range(plan.stages):
        assert len(plan.members(k)) == counts[k]
        if k:
            assert set(plan.members(k - 1)) <= set(plan.members(k))
            assert set(plan.added(k)) == set(plan.members(k)) - set(plan.members(k - 1))
    assert plan.sizes() == counts


def test_devices_are_taken_in_position_order() -> None:
    fleet = [f"dev-{i}" for i in range(500)]
    plan = plan_cohorts(fleet, "ro-1", DEFAULT)
    order = sorted(fleet, key=lambda d: position(d, "ro-1"))
    assert plan.members(0) == order[:5]
    assert list(plan.stage_of) == order  # the mapping iterates in rollout order


def test_a_new_device_does_not_move_anyone_else() -> None:
    fleet = [f"dev-{i}" for i in range(10_000)]
    before = plan_cohorts(fleet, "ro-1", DEFAULT)
    after = plan_cohorts([*fleet, "dev-new"], "ro-1", DEFAULT)
    # 1 % of 10,000 and of 10,001 differ by one device at most; everyone else keeps their stage.
    moved = [d for d in fleet if before.stage_of[d] != after.stage_of[d]]
    assert len(moved) <= 3


def test_duplicate_ids_count_once() -> None:
    plan = plan_cohorts(["a", "b", "a", "c"], "ro", DEFAULT)
    assert sorted(plan.stage_of) == ["a", "b", "c"]


def test_empty_fleet_gives_empty_stages() -> None:
    plan = plan_cohorts([], "ro", DEFAULT)
    assert plan.stages == 4 and plan.members(3) == [] and plan.sizes() == [0, 0, 0, 0]


@settings(max_examples=60)
@given(
    fleet=ids,
    ps=percents,
    group_count=st.integers(min_value=1, max_value=40),
    seed=st.integers(min_value=0, max_value=10**6),
)
def test_blast_radius_groups_never_add_two_members_in_one_stage(
    fleet: list[str], ps: list[float], group_count: int, seed: int
) -> None:
    def group(d: str) -> str:
        h = int.from_bytes(hashlib.sha256(f"{seed}/{d}".encode()).digest()[:4], "big")
        return f"cell:{h % group_count}"

    groups = {d: group(d) for i, d in enumerate(fleet) if i % 3 != 0}  # a third has no group
    plan = plan_cohorts(fleet, "ro-g", ps, groups)
    assert set(plan.stage_of) == set(fleet)  # everyone is placed
    for k in range(plan.stages):
        added = [groups[d] for d in plan.added(k) if d in groups]
        assert len(added) == len(set(added)), f"stage {k} adds two of one group"
    # Stages may be appended, never fewer than the plan's; members stay nested.
    assert plan.stages >= len(ps)
    for k in range(1, plan.stages):
        assert set(plan.members(k - 1)) <= set(plan.members(k))
    # Until the plan's last stage, no stage holds more than its count.
    counts = stage_counts(len(fleet), ps)
    for k in range(len(ps)):
        assert len(plan.members(k)) <= counts[k]


def test_a_redundant_pair_updates_one_member_per_stage() -> None:
    fleet = [f"dev-{i}" for i in range(4)]
    groups = {"dev-0": "pair", "dev-1": "pair"}
    plan = plan_cohorts(fleet, "ro-1", [50.0, 100.0], groups)
    assert plan.stage_of["dev-0"] != plan.stage_of["dev-1"]


def test_a_group_bigger_than_the_stages_gets_trailing_stages() -> None:
    fleet = [f"dev-{i}" for i in range(6)]
    groups = dict.fromkeys(fleet, "cell:A")
    plan = plan_cohorts(fleet, "ro-1", DEFAULT, groups)
    # Counts for 6 devices are [1, 1, 5, 6]: stage 1 adds nobody, stages 2 and 3 one each
    # (the group), and three trailing stages take the rest, one at a time.
    assert [len(plan.added(k)) for k in range(plan.stages)] == [1, 0, 1, 1, 1, 1, 1]


def test_a_deferred_device_goes_first_in_the_next_stage() -> None:
    fleet = [f"dev-{i}" for i in range(200)]
    order = sorted(fleet, key=lambda d: position(d, "ro-1"))
    # The two lowest positions share a group: the canary stage (2 devices) takes the first and
    # the third; the second is deferred and starts the next stage.
    groups = {order[0]: "g", order[1]: "g"}
    plan = plan_cohorts(fleet, "ro-1", DEFAULT, groups)
    assert plan.members(0) == [order[0], order[2]]
    assert plan.stage_of[order[1]] == 1


def test_a_huge_blast_radius_group_is_refused_with_its_name() -> None:
    fleet = [f"dev-{i}" for i in range(MAX_STAGES + 1)]
    with pytest.raises(InvalidInputError, match="cell:all"):
        plan_cohorts(fleet, "ro-1", DEFAULT, dict.fromkeys(fleet, "cell:all"))


def test_blast_radius_groups_come_from_tags_with_the_prefix() -> None:
    tags = {"a": ["line1", "cell:7"], "b": ["cell:7"], "c": ["line1"], "d": ["cell:9", "cell:2"]}
    assert blast_radius_groups(tags, "cell:") == {"a": "cell:7", "b": "cell:7", "d": "cell:2"}
    assert blast_radius_groups(tags, None) == {} == blast_radius_groups(tags, "")

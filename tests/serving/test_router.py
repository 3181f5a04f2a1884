"""Routing: split shares hold over many keys, keys stick, replayed versions pin, shadow samples,
and the host swaps routes atomically."""

from __future__ import annotations

import random
import subprocess
import sys
import threading

import numpy as np
import pytest

from modelfleet.rollout.desired_state import Mode
from modelfleet.serving.host import ModelHost
from modelfleet.serving.model import Servable
from modelfleet.serving.router import Decision, Route, bucket_of, choose
from tests.fakes_model import FakeModel, linear_classifier


def fake(version: str) -> FakeModel:
    weights = np.random.default_rng(int(version)).standard_normal((4, 3))
    return linear_classifier("iris", version, weights)


@pytest.fixture(scope="module")
def v1() -> Servable:
    return fake("1")


@pytest.fixture(scope="module")
def v2() -> Servable:
    return fake("2")


def keys(n: int) -> list[str]:
    return [f"user-{i}" for i in range(n)]


def test_full_mode_always_serves_production(v1: Servable, v2: Servable) -> None:
    route = Route(v1, v2, Mode.FULL, share=1.0)
    for draw in (0.0, 0.5, 0.999):
        assert choose(route, "k", "2", draw) == Decision(v1, None)


@pytest.mark.parametrize("share", [0.0, 0.05, 0.3, 0.5, 1.0])
def test_split_share_over_10000_keys_is_within_statistical_tolerance(
    v1: Servable, v2: Servable, share: float
) -> None:
    route = Route(v1, v2, Mode.SPLIT, share)
    n = 10_000
    to_candidate = sum(choose(route, k, None, 0.0).serve is v2 for k in keys(n))
    sigma = (n * share * (1 - share)) ** 0.5
    assert abs(to_candidate - n * share) <= 4 * sigma + 1  # 4 sigma: a flake every ~16,000 runs


def test_split_is_sticky_whatever_the_random_draw(v1: Servable, v2: Servable) -> None:
    route = Route(v1, v2, Mode.SPLIT, 0.5)
    rng = random.Random(1)
    for key in keys(500):
        first = choose(route, key, None, rng.random()).serve
        assert all(choose(route, key, None, rng.random()).serve is first for _ in range(5))


def test_growing_a_split_keeps_keys_already_on_the_candidate(v1: Servable, v2: Servable) -> None:
    small = Route(v1, v2, Mode.SPLIT, 0.1)
    large = Route(v1, v2, Mode.SPLIT, 0.4)
    on_small = {k for k in keys(5000) if choose(small, k, None, 0.0).serve is v2}
    on_large = {k for k in keys(5000) if choose(large, k, None, 0.0).serve is v2}
    assert on_small <= on_large
    assert len(on_large) > len(on_small)


def test_split_without_key_follows_the_random_draw(v1: Servable, v2: Servable) -> None:
    route = Route(v1, v2, Mode.SPLIT, 0.2)
    assert choose(route, None, None, 0.19).serve is v2
    assert choose(route, None, None, 0.2).serve is v1


def test_bucket_is_the_same_in_another_process() -> None:
    code = (
        "from modelfleet.serving.router import bucket_of;print(repr(bucket_of('iris', 'user-7')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert float(out) == bucket_of("iris", "user-7")


def test_bucket_differs_between_models_for_the_same_key() -> None:
    same = sum((bucket_of("a", k) < 0.5) == (bucket_of("b", k) < 0.5) for k in keys(2000))
    assert 850 < same < 1150  # independent halves agree about half the time


def test_replayed_version_pins_production_or_candidate(v1: Servable, v2: Servable) -> None:
    route = Route(v1, v2, Mode.SPLIT, 0.5)
    for key in keys(50):
        assert choose(route, key, "2", 0.9).serve is v2
        assert choose(route, key, "1", 0.0).serve is v1


def test_pin_to_an_unknown_version_falls_back_to_the_split(v1: Servable, v2: Servable) -> None:
    route = Route(v1, v2, Mode.SPLIT, 0.0)
    assert choose(route, "k", "99", 0.0).serve is v1


def test_shadow_serves_production_and_mirrors_a_sampled_share(v1: Servable, v2: Servable) -> None:
    route = Route(v1, v2, Mode.SHADOW, 0.25)
    rng = random.Random(3)
    decisions = [choose(route, None, None, rng.random()) for _ in range(10_000)]
    assert all(d.serve is v1 for d in decisions)
    mirrored = sum(d.shadow is v2 for d in decisions)
    assert abs(mirrored - 2500) <= 4 * (10_000 * 0.25 * 0.75) ** 0.5


def test_shadow_candidate_cannot_be_pinned(v1: Servable, v2: Servable) -> None:
    route = Route(v1, v2, Mode.SHADOW, 1.0)
    assert choose(route, "k", "2", 0.0) == Decision(v1, v2)


def test_share_outside_unit_interval_is_refused(v1: Servable) -> None:
    with pytest.raises(ValueError, match="share"):
        Route(v1, None, Mode.SPLIT, 1.5)


def test_host_finds_production_candidate_and_previous(v1: Servable, v2: Servable) -> None:
    v0 = fake("0")
    host = ModelHost()
    assert host.route("iris") is None
    host.set_route("iris", Route(v1, v2, Mode.SPLIT, 0.1, previous=v0))
    assert host.names() == ["iris"]
    assert host.find_version("iris", "0") is v0
    assert host.find_version("iris", "1") is v1
    assert host.find_version("iris", "2") is v2
    assert host.find_version("iris", "3") is None
    assert host.find_version("other", "1") is None
    removed = host.remove("iris")
    assert removed is not None
    assert removed.production is v1
    assert host.names() == []
    assert host.remove("iris") is None


def test_host_refuses_a_route_for_another_model(v1: Servable) -> None:
    with pytest.raises(ValueError, match="serves model 'iris'"):
        ModelHost().set_route("other", Route(v1))


def test_readers_never_see_a_half_swapped_route_table(v1: Servable, v2: Servable) -> None:
    host = ModelHost()
    routes = [Route(v1), Route(v2)]
    host.set_route("iris", routes[0])
    stop = threading.Event()
    seen: list[object] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            host.set_route("iris", routes[i % 2])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(20_000):
            route = host.route("iris")
            if route is None or route not in routes:
                seen.append(route)
    finally:
        stop.set()
        thread.join()
    assert seen == []

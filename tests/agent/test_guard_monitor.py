"""The guard shell: feeds windows, fires once on breach, never flaps."""

from __future__ import annotations

from modelfleet.agent.guard_monitor import GuardMonitor
from modelfleet.clock import ManualClock
from modelfleet.monitoring.guard import SloPolicy, Verdict

POLICY = SloPolicy(p99_ms=50, error_rate=0.1, min_samples=20, window_s=10)


def make() -> tuple[GuardMonitor, ManualClock, list[tuple[str, str, Verdict]]]:
    clock = ManualClock()
    fired: list[tuple[str, str, Verdict]] = []
    monitor = GuardMonitor(clock.monotonic, lambda m, v, verdict: fired.append((m, v, verdict)))
    return monitor, clock, fired


def test_slow_candidate_fires_once_with_reason() -> None:
    monitor, clock, fired = make()
    monitor.watch("m", POLICY, watched="2", baseline="1", role="candidate")
    for _ in range(100):
        clock.advance(0.01)
        monitor.observe("m", "1", 0.002, confidence=0.9)
        monitor.observe("m", "2", 0.200, confidence=0.9)
    assert len(fired) == 1
    model, version, verdict = fired[0]
    assert (model, version) == ("m", "2")
    assert "p99 latency" in verdict.reasons[0]
    assert monitor.state()["m"]["armed"] is False


def test_healthy_candidate_never_fires() -> None:
    monitor, clock, fired = make()
    monitor.watch("m", POLICY, watched="2", baseline="1", role="candidate")
    for _ in range(500):
        clock.advance(0.01)
        monitor.observe("m", "2", 0.003)
    assert fired == []
    assert monitor.state()["m"]["samples"] > 0


def test_no_verdict_before_minimum_samples() -> None:
    monitor, clock, fired = make()
    monitor.watch("m", POLICY, watched="2", baseline="1", role="candidate")
    for _ in range(19):
        clock.advance(0.05)
        monitor.observe("m", "2", 1.0, error=True)
    assert fired == []
    assert monitor.state()["m"]["waiting"] == "19/20 samples"


def test_rewatching_a_new_route_rearms() -> None:
    monitor, clock, fired = make()
    monitor.watch("m", POLICY, watched="2", baseline="1", role="candidate")
    for _ in range(50):
        clock.advance(0.01)
        monitor.observe("m", "2", 0.5, error=True)
    monitor.watch("m", POLICY, watched="3", baseline="1", role="candidate")
    for _ in range(50):
        clock.advance(0.01)
        monitor.observe("m", "3", 0.5, error=True)
    assert [v for _, v, _ in fired] == ["2", "3"]


def test_shadow_disagreement_fires() -> None:
    monitor, clock, fired = make()
    policy = SloPolicy(disagreement=0.2, min_samples=20)
    monitor.watch("m", policy, watched="2", baseline="1", role="candidate")
    for i in range(40):
        clock.advance(0.01)
        monitor.observe_comparison("m", "2", disagreed=i % 2 == 0)
    assert fired and "disagreement" in fired[0][2].reasons[0]


def test_new_production_is_judged_against_the_previous_versions_own_measurements() -> None:
    """Defect 17: v1 was measured while nothing was watched; v2 is judged relative to it."""
    monitor, clock, fired = make()
    relative = SloPolicy(min_samples=20, window_s=10)  # the defaults: no absolute limits
    for _ in range(40):  # v1 alone in production: not watched, but measured
        clock.advance(0.25)
        monitor.observe("m", "1", 0.230, caller="10.0.0.1")
    monitor.watch("m", relative, watched="2", baseline="1", role="production")
    for i in range(40):  # as slow as v1: a heavy model, but no worse
        clock.advance(0.25)
        monitor.observe("m", "2", 0.235, caller=f"10.0.0.{i % 2}")
    assert fired == []
    for i in range(40):
        clock.advance(0.25)
        monitor.observe("m", "2", 0.700, caller=f"10.0.0.{i % 2}")
    assert [v for _, v, _ in fired] == ["2"]
    assert "> 2x v1's" in fired[0][2].reasons[0]

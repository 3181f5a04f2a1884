"""Windows: counted on the request path, closed whole, idle versions still reported."""

from __future__ import annotations

from datetime import timedelta

from modelfleet.telemetry.windows import WindowRecorder
from modelfleet.telemetry.wire import merge_windows, parse_batch
from tests.telemetry._records import T0


def recorder(**kw: object) -> WindowRecorder:
    return WindowRecorder("edge-1", T0, **kw)  # type: ignore[arg-type]


def as_batch(records: list[dict[str, object]]) -> list[dict[str, object]]:
    numbered = [{"seq": i + 1, **r} for i, r in enumerate(records)]
    doc = {"format": 1, "device_id": "edge-1", "buffer_id": "b", "sent_at": T0.isoformat(),
           "records": numbered}  # fmt: skip
    return parse_batch(doc, "edge-1").records  # the hub's own check passes


def test_requests_are_counted_per_version_and_role_into_valid_windows() -> None:
    rec = recorder(rollout_of=lambda m, v: "ro-7" if v == "2" else None)
    for _ in range(3):
        rec.on_request("m", "1", "production", "ok", 0.002, 0.0001, 0.9, "10.0.0.1")
    rec.on_request("m", "2", "candidate", "server_error", None, 0.01, None, "10.0.0.2")
    rec.on_request("m", "1", "production", "client_error", None, None, None, "10.0.0.1")
    records = as_batch(rec.close(T0 + timedelta(seconds=60)))
    by_key = {(r["version"], r["role"]): r for r in records}
    prod = by_key[("1", "production")]
    assert prod["requests"] == {"ok": 3, "client_error": 1, "server_error": 0, "timeout": 0}
    assert prod["rollout_id"] is None and by_key[("2", "candidate")]["rollout_id"] == "ro-7"
    totals = merge_windows([prod])
    assert totals.histograms["latency_s"].count == 3
    assert totals.histograms["confidence"].count == 3
    assert prod["opened_at"] == T0.isoformat()


def test_a_routed_version_gets_a_window_even_with_no_traffic() -> None:
    routed = [("m", "1", "production"), ("m", "2", "shadow")]
    rec = recorder(routed=lambda: routed)
    first = as_batch(rec.close(T0 + timedelta(seconds=60)))
    assert {(r["version"], r["role"]) for r in first} == {("1", "production"), ("2", "shadow")}
    assert all(sum(r["requests"].values()) == 0 for r in first)
    second = rec.close(T0 + timedelta(seconds=120))
    assert second[0]["opened_at"] == (T0 + timedelta(seconds=60)).isoformat()  # windows tile


def test_shadow_comparisons_cascade_guard_and_update_events_land_in_their_windows() -> None:
    rec = recorder(production_of=lambda m: "1")

    class Cmp:
        disagreed = True
        score_shift = 0.1

    rec.on_comparison("m", "2", Cmp())
    rec.on_cascade("m", "upstream")
    rec.on_cascade("m", "fallback")
    rec.on_request("m", "2", "candidate", "ok", 0.001, 0.0, None, "a")
    rec.on_guard("m", "2", breach=True, rolled_back=True, role=None)
    rec.on_update_event("refused", "m", "3")
    rec.on_update_event("switch", "m", "1")
    by_key = {(r["version"], r["role"]): r for r in as_batch(rec.close(T0 + timedelta(seconds=1)))}
    assert by_key[("2", "shadow")]["shadow"] == {"compared": 1, "disagreed": 1, "dropped": 0}
    prod = by_key[("1", "production")]
    assert prod["cascade"] == {"local": 0, "upstream": 1, "failed": 1}
    assert (prod["refusals"], prod["updates"]) == (1, 1)
    assert by_key[("2", "candidate")]["guard"] == {"breaches": 1, "rollbacks": 1}


def test_a_request_counted_during_a_close_lands_in_exactly_one_window() -> None:
    import threading

    rec = recorder()
    stop = threading.Event()
    sent = 0

    def hammer() -> None:
        nonlocal sent
        while not stop.is_set():
            rec.on_request("m", "1", "production", "ok", 0.001, 0.0, None, "a")
            sent += 1

    t = threading.Thread(target=hammer)
    t.start()
    windows = []
    for i in range(200):
        windows.extend(rec.close(T0 + timedelta(seconds=i + 1)))
    stop.set()
    t.join()
    windows.extend(rec.close(T0 + timedelta(seconds=1000)))
    assert sum(w["requests"]["ok"] for w in windows) == sent


def test_a_guard_breach_is_counted_in_the_window_of_the_version_that_breached() -> None:
    from modelfleet.agent.guard_monitor import GuardMonitor
    from modelfleet.clock import ManualClock
    from modelfleet.monitoring.guard import SloPolicy

    clock = ManualClock()
    rec = recorder()
    monitor = GuardMonitor(clock.monotonic, lambda m, v, verdict: None)
    monitor.on_breach_seen = lambda m, v, role: rec.on_guard(
        m, v, breach=True, rolled_back=False, role=role
    )
    monitor.watch("m", SloPolicy(p99_ms=50, min_samples=20, window_s=10), "2", "1", "candidate")
    for _ in range(100):
        clock.advance(0.01)
        monitor.observe("m", "1", 0.002, confidence=0.9)
        monitor.observe("m", "2", 0.200, confidence=0.9)
    (window,) = rec.close(T0 + timedelta(seconds=60))
    assert (window["version"], window["role"]) == ("2", "candidate")
    assert window["guard"] == {"breaches": 1, "rollbacks": 0}


def test_shadow_requests_dropped_at_a_full_queue_are_counted_for_their_candidate() -> None:
    import asyncio

    import numpy as np

    from modelfleet.serving.shadow import ShadowMirror
    from tests.fakes_model import linear_classifier

    rec = recorder()
    candidate = linear_classifier("m", "2", np.eye(4, 3))
    mirror = ShadowMirror(
        lambda model, comparison: None,
        lambda: None,
        queue_size=2,
        on_drop_of=lambda c: rec.on_shadow_dropped(c.name, c.version),
    )
    inputs = {"X": np.ones((1, 4), np.float32)}
    outputs = candidate.infer(inputs)

    async def go() -> None:
        for _ in range(5):
            mirror.submit(candidate, inputs, outputs)
        await mirror.join()
        await mirror.close()

    asyncio.run(go())
    (window,) = rec.close(T0 + timedelta(seconds=60))
    assert (window["version"], window["role"]) == ("2", "shadow")
    assert window["shadow"]["dropped"] == 3

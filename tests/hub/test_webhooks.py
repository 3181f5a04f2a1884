"""Webhooks: signed deliveries to a real loopback receiver, retries with backoff and full
jitter on the hub clock, dead letters, kind filters, the delivery log, and the API."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelfleet.backoff import BackoffPolicy
from modelfleet.client import HubClient
from modelfleet.clock import ManualClock
from modelfleet.errors import ForbiddenError, InvalidInputError, NotFoundError
from modelfleet.hub import events
from modelfleet.hub.service import HubService
from modelfleet.hub.webhooks import Webhooks, WebhookSettings
from modelfleet.hub.webhooks_signature import sign, signature_header, verify
from tests.hub._webhook_receiver import Receiver, receiver

ADMIN = "admin:admin"


def _event(service: HubService, kind: str = events.DRIFT_STATE_CHANGED) -> int:
    with service.context.write() as s:
        return events.record_event(
            s, kind, "iris/plant-a", {"model": "iris", "to": "drifting"}, service.clock.now()
        )


def _hooks(service: HubService, **settings: Any) -> Webhooks:
    # rand fixed at 0.5: each delay is half its ceiling (base 10 s: 5 s, 10 s, 20 s, ...)
    return Webhooks(service.context, settings=WebhookSettings(**settings), rand=lambda: 0.5)


def _subscribe(
    hooks: Webhooks, rcv: Receiver, clock: ManualClock, kinds: tuple[str, ...] = ()
) -> int:
    created = hooks.create(rcv.url, kinds, "training pipeline", ADMIN)
    rcv.secret = created["secret"]
    rcv.now = lambda: clock.now().timestamp()
    return int(created["id"])


# -- signatures ----------------------------------------------------------------------------


def test_a_signature_verifies_only_the_body_and_time_it_was_made_for() -> None:
    header = signature_header("whsec_k", 1_000, b'{"a":1}')
    assert verify("whsec_k", header, b'{"a":1}', now=1_010) == 1_000
    bad = {
        "tampered body": ("whsec_k", header, b'{"a":2}', 1_010),
        "other secret": ("whsec_x", header, b'{"a":1}', 1_010),
        "replayed later": ("whsec_k", header, b'{"a":1}', 1_000 + 301),
        "no v1": ("whsec_k", "t=1000", b'{"a":1}', 1_010),
        "timestamp not a number": ("whsec_k", "t=abc,v1=00", b'{"a":1}', 1_010),
    }
    for name, (secret, h, body, now) in bad.items():
        with pytest.raises(InvalidInputError):
            verify(secret, h, body, now=now)
        assert name  # the table names the case


def test_any_of_several_v1_values_may_match_while_a_secret_rotates() -> None:
    body = b"{}"
    header = f"t=5,v1={sign('old', 5, body)},v1={sign('new', 5, body)}"
    assert verify("new", header, body, now=5) == 5
    assert verify("old", header, body, now=5) == 5


# -- delivery ------------------------------------------------------------------------------


def test_a_failing_receiver_gets_the_event_again_after_backoff_until_it_answers_2xx(
    service: HubService, clock: ManualClock
) -> None:
    hooks = _hooks(service)
    with receiver(fail_first=2) as rcv:
        sub = _subscribe(hooks, rcv, clock)
        event_id = _event(service)
        first = hooks.run_once()
        assert (first.queued, first.attempted, first.retrying) == (1, 1, 1)
        # not due yet: the first delay is 0.5 x 10 s
        clock.advance(4.9)
        assert hooks.run_once().attempted == 0
        clock.advance(0.1)
        assert hooks.run_once().retrying == 1
        clock.advance(9.9)  # second delay: 0.5 x 20 s
        assert hooks.run_once().attempted == 0
        clock.advance(0.1)
        assert hooks.run_once().delivered == 1
        clock.advance(3600)
        assert hooks.run_once().attempted == 0  # delivered once, never again
    assert [r.event_id for r in rcv.received] == [str(event_id)] * 3
    assert all(r.signature_ok for r in rcv.received), [r.problem for r in rcv.received]
    assert rcv.received[0].body["payload"] == {"model": "iris", "to": "drifting"}
    assert rcv.received[0].body == rcv.received[2].body
    [delivery] = hooks.deliveries(sub)
    assert delivery["state"] == "delivered" and delivery["attempts"] == 3
    assert [a["status_code"] for a in delivery["log"]] == [503, 503, 204]
    assert [a["error"] for a in delivery["log"]] == ["HTTP 503", "HTTP 503", None]
    assert _parse(delivery["delivered_at"]) == clock.now() - timedelta(seconds=3600)
    assert hooks.get(sub)["counts"] == {"pending": 0, "delivered": 1, "dead": 0}


def test_a_delivery_is_dead_after_max_attempts_and_never_retried(
    service: HubService, clock: ManualClock
) -> None:
    hooks = _hooks(service, max_attempts=3)
    with receiver(fail_first=100, fail_status=500) as rcv:
        sub = _subscribe(hooks, rcv, clock)
        _event(service)
        for _ in range(10):
            hooks.run_once()
            clock.advance(3600)
    assert len(rcv.received) == 3
    [delivery] = hooks.deliveries(sub, state="dead")
    assert delivery["attempts"] == 3 and delivery["next_attempt_at"] is None
    assert delivery["last_status_code"] == 500
    assert hooks.deliveries(sub, state="pending") == []


def test_full_jitter_draws_each_delay_below_its_capped_ceiling(
    service: HubService, clock: ManualClock
) -> None:
    draws = iter([0.999, 0.0, 0.25, 0.999, 0.999, 0.999])
    hooks = Webhooks(
        service.context,
        settings=WebhookSettings(max_attempts=7, backoff=BackoffPolicy(base_s=10, cap_s=40)),
        rand=lambda: next(draws),
    )
    with receiver(fail_first=100) as rcv:
        sub = _subscribe(hooks, rcv, clock)
        _event(service)
        delays = []
        for _ in range(6):
            before = clock.now()
            assert hooks.run_once().attempted == 1
            [d] = hooks.deliveries(sub)
            delay = d["next_attempt_at"] and (_parse(d["next_attempt_at"]) - before).total_seconds()
            delays.append(round(delay, 3))
            clock.advance(delay)
    # ceilings 10, 20, 40, 40 (capped), 40, 40; the draw scales each; 50 ms at least
    assert delays == [9.99, 0.05, 10.0, 39.96, 39.96, 39.96]


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_an_unreachable_receiver_is_a_logged_failed_attempt(
    service: HubService, clock: ManualClock
) -> None:
    hooks = _hooks(service, timeout_s=2.0)
    with receiver() as rcv:
        url = rcv.url  # the port is closed once the block ends
    created = hooks.create(url, [], "", ADMIN)
    _event(service)
    assert hooks.run_once().retrying == 1
    [delivery] = hooks.deliveries(int(created["id"]))
    assert delivery["last_status_code"] is None
    assert delivery["last_error"] and "Connect" in delivery["last_error"]


def test_a_subscription_hears_only_its_kinds_and_only_events_after_it_was_made(
    service: HubService, clock: ManualClock
) -> None:
    hooks = _hooks(service)
    _event(service)  # before any subscription: never sent
    with receiver() as rcv:
        _subscribe(hooks, rcv, clock, kinds=(events.REVIEW_QUEUE_FULL,))
        _event(service, events.DRIFT_STATE_CHANGED)
        wanted = _event(service, events.REVIEW_QUEUE_FULL)
        result = hooks.run_once()
    assert (result.queued, result.delivered) == (1, 1)
    assert [r.event_id for r in rcv.received] == [str(wanted)]
    assert rcv.received[0].body["kind"] == "review.queue_full"


def test_a_claim_left_by_a_crashed_round_falls_due_again_after_the_deadline(
    service: HubService, clock: ManualClock
) -> None:
    hooks = _hooks(service, timeout_s=10.0)
    with receiver() as rcv:
        _subscribe(hooks, rcv, clock)
        _event(service)
        hooks._queue()
        assert len(hooks._claim()) == 1  # ... and the process dies before sending
        assert hooks.run_once().attempted == 0  # claimed: no second sender
        clock.advance(10.0 + 30.0)
        assert hooks.run_once().delivered == 1
    assert len(rcv.received) == 1


def test_bad_subscriptions_are_refused_with_a_clear_error(service: HubService) -> None:
    hooks = _hooks(service)
    cases = {
        "not http": ("ftp://example.com/x", []),
        "no host": ("http:///x", []),
        "not a url": ("::::", []),
        "unknown kind": ("http://127.0.0.1/x", ["drift.nope"]),
    }
    for name, (url, kinds) in cases.items():
        with pytest.raises(InvalidInputError):
            hooks.create(url, kinds, "", ADMIN)
        assert name
    with pytest.raises(NotFoundError):
        hooks.delete(99, ADMIN)
    with pytest.raises(InvalidInputError):
        hooks.deliveries(1, state="lost")


def test_removing_a_subscription_removes_its_deliveries_and_is_audited(
    service: HubService, clock: ManualClock
) -> None:
    hooks = _hooks(service)
    with receiver(fail_first=1) as rcv:
        sub = _subscribe(hooks, rcv, clock)
        _event(service)
        hooks.run_once()
    hooks.delete(sub, ADMIN)
    assert hooks.subscriptions() == []
    clock.advance(3600)
    assert hooks.run_once().attempted == 0
    actions = [e["action"] for e in service.audit(limit=1000)]
    assert "webhook.create" in actions and "webhook.delete" in actions


# -- API -----------------------------------------------------------------------------------


def test_the_api_shows_the_secret_once_and_only_admins_manage_webhooks(
    http: TestClient, client: HubClient, tokens: dict[str, str], clock: ManualClock
) -> None:
    with receiver() as rcv:
        created = client.add_webhook(rcv.url, [events.DRIFT_STATE_CHANGED], "ci")
        assert created["secret"].startswith("whsec_")
        rcv.secret = created["secret"]
        rcv.now = lambda: clock.now().timestamp()
        listed = client.list_webhooks()
        assert [h["id"] for h in listed] == [created["id"]]
        assert "secret" not in listed[0]
        result = client.test_webhook(created["id"])
        assert result["ok"] and result["status_code"] == 204, result
        assert rcv.received[0].signature_ok and rcv.received[0].body["kind"] == "webhook.test"
    viewer = HubClient(str(http.base_url), tokens["viewer"], http=http)
    assert viewer.list_webhooks()[0]["url"] == rcv.url
    assert viewer.webhook_deliveries(created["id"]) == []
    operator = HubClient(str(http.base_url), tokens["operator"], http=http)
    with pytest.raises(ForbiddenError):
        operator.add_webhook("http://127.0.0.1:1/x")
    with pytest.raises(ForbiddenError):
        viewer.remove_webhook(created["id"])
    with pytest.raises(InvalidInputError):
        client.add_webhook("gopher://x/")
    with pytest.raises(InvalidInputError):
        client.add_webhook("http://127.0.0.1/x", ["nope"])
    with pytest.raises(NotFoundError):
        client.webhook_deliveries(12345)
    removed = client.remove_webhook(created["id"])
    assert removed["id"] == created["id"] and client.list_webhooks() == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/webhooks", {"url": "http://h/x", "kinds": "drift.state_changed"}),
        ("POST", "/api/v1/webhooks", {"url": "http://h/x", "extra": 1}),
        ("POST", "/api/v1/webhooks", {"url": "http://h/\u0000"}),
        ("GET", "/api/v1/webhooks/0/deliveries", None),
        ("GET", "/api/v1/webhooks/1/deliveries?state=lost", None),
        ("GET", "/api/v1/webhooks/1/deliveries?limit=0", None),
        ("DELETE", "/api/v1/webhooks/99999999999", None),
    ],
)
def test_bad_requests_are_400s_with_a_message(
    http: TestClient, admin_token: str, method: str, path: str, body: Any
) -> None:
    r = http.request(method, path, json=body, headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]


def test_deliveries_are_due_on_the_hub_clock_not_the_wall_clock(
    service: HubService, clock: ManualClock
) -> None:
    hooks = _hooks(service)
    with receiver(fail_first=1) as rcv:
        sub = _subscribe(hooks, rcv, clock)
        _event(service)
        hooks.run_once()
        [d] = hooks.deliveries(sub)
        assert _parse(d["next_attempt_at"]) == clock.now() + timedelta(seconds=5)

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


# -- operations: pause, resume, redrive -----------------------------------------------------


def test_a_redriven_dead_delivery_is_sent_again_and_its_old_log_kept(
    service: HubService, clock: ManualClock
) -> None:
    hooks = _hooks(service, max_attempts=2)
    with receiver(fail_first=2, fail_status=500) as rcv:
        sub = _subscribe(hooks, rcv, clock)
        _event(service)
        for _ in range(4):
            hooks.run_once()
            clock.advance(3600)
        [dead] = hooks.deliveries(sub, state="dead")
        assert hooks.redrive(sub, ADMIN) == {"subscription_id": sub, "redriven": [dead["id"]]}
        hooks.run_once()  # due at once: no clock advance
        assert len(rcv.received) == 3
    [delivery] = hooks.deliveries(sub)
    assert delivery["state"] == "delivered"
    assert [a["status_code"] for a in delivery["log"]] == [500, 500, 204]
    assert hooks.redrive(sub, ADMIN)["redriven"] == []  # nothing dead any more
    audit = [e["action"] for e in service.audit(limit=1000) if e["subject"] == f"webhook/{sub}"]
    assert "webhook.redrive" in audit


def test_redriving_a_delivery_that_is_not_dead_is_refused(
    service: HubService, clock: ManualClock
) -> None:
    hooks = _hooks(service)
    with receiver() as rcv:
        sub = _subscribe(hooks, rcv, clock)
        _event(service)
        hooks.run_once()
    [delivered] = hooks.deliveries(sub)
    with pytest.raises(InvalidInputError, match="not a dead delivery"):
        hooks.redrive(sub, ADMIN, [delivered["id"]])
    with pytest.raises(InvalidInputError, match="not a dead delivery"):
        hooks.redrive(sub, ADMIN, [delivered["id"] + 1000])
    with pytest.raises(NotFoundError):
        hooks.redrive(sub + 1000, ADMIN)
    assert hooks.deliveries(sub)[0]["state"] == "delivered"


def test_a_paused_subscription_sends_nothing_and_gets_what_it_missed_on_resume(
    service: HubService, clock: ManualClock
) -> None:
    hooks = _hooks(service)
    with receiver() as rcv:
        sub = _subscribe(hooks, rcv, clock)
        first = _event(service)
        assert hooks.set_enabled(sub, False, ADMIN)["enabled"] is False
        second = _event(service)
        for _ in range(3):
            hooks.run_once()
            clock.advance(60)
        assert rcv.received == []
        assert hooks.set_enabled(sub, True, ADMIN)["enabled"] is True
        hooks.run_once()
        got = sorted(int(r.event_id) for r in rcv.received)
    assert got == [first, second]
    audit = [e["action"] for e in service.audit(limit=1000) if e["subject"] == f"webhook/{sub}"]
    assert audit.count("webhook.disable") == 1 and audit.count("webhook.enable") == 1


def test_pause_resume_and_redrive_through_the_api_are_admin_only(
    http: TestClient, client: HubClient, tokens: dict[str, str], admin_token: str
) -> None:
    created = client.add_webhook("http://127.0.0.1:9/x")
    admin = client
    assert admin.set_webhook_enabled(created["id"], False)["enabled"] is False
    assert admin.redrive_webhook(created["id"]) == {
        "subscription_id": created["id"],
        "redriven": [],
    }
    viewer = HubClient(str(http.base_url), tokens["viewer"], http=http)
    with pytest.raises(ForbiddenError):
        viewer.set_webhook_enabled(created["id"], True)
    with pytest.raises(ForbiddenError):
        viewer.redrive_webhook(created["id"])
    bad = http.patch(
        f"/api/v1/webhooks/{created['id']}",
        json={"enabled": "sometimes"},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert bad.status_code == 400 and "enabled" in bad.text


def test_retention_deletes_old_finished_deliveries_and_events_every_cursor_passed(
    service: HubService, clock: ManualClock
) -> None:
    hooks = _hooks(service)
    with receiver() as rcv, receiver() as other:
        ok = _subscribe(hooks, rcv, clock)
        first = _event(service)
        late = _subscribe(hooks, other, clock)  # starts past `first`
        hooks.set_enabled(late, False, ADMIN)  # paused: its cursor stays before `second`
        second = _event(service)
        hooks.run_once()
    assert [d["state"] for d in hooks.deliveries(ok)] == ["delivered", "delivered"]
    clock.advance(29 * 86400)
    assert service.apply_retention()["webhook_deliveries_deleted"] == 0  # not old enough
    clock.advance(2 * 86400)
    done = service.apply_retention()
    assert done["webhook_deliveries_deleted"] == 2 and done["events_deleted"] == 1
    assert hooks.deliveries(ok) == []
    with service.context.read() as s:
        left = [e["id"] for e in events.events_after(s, 0, 100)]
    assert first not in left and second in left  # `late` still has `second` to hear
    assert service.apply_retention()["events_deleted"] == 0


def test_retention_keeps_pending_deliveries_and_their_events(
    service: HubService, clock: ManualClock
) -> None:
    hooks = _hooks(service, max_attempts=50)
    with receiver(fail_first=100) as rcv:
        sub = _subscribe(hooks, rcv, clock)
        event = _event(service)
        hooks.run_once()
    clock.advance(60 * 86400)
    done = service.apply_retention()
    assert done["webhook_deliveries_deleted"] == 0 and done["events_deleted"] == 0
    [delivery] = hooks.deliveries(sub)
    assert delivery["state"] == "pending" and delivery["event_id"] == event

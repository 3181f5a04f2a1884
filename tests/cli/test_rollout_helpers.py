"""The pure parts behind the rollout CLI: plan files, the poll loop (on a manual clock),
``deploy --wait``'s per-device verdicts, and how a rollout view reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelfleet.cli._deploy_wait import WaitState, describe_laggards, wait_states
from modelfleet.cli._errors import UsageError
from modelfleet.cli._plan_file import load_plan_file, parse_duration, plan_from_options, with_ticket
from modelfleet.cli._polling import poll
from modelfleet.cli._rollout_view import (
    change_key,
    duration_text,
    gate_threshold_text,
    gate_value_text,
    render_rollout,
    summary_line,
    time_text,
)
from modelfleet.clock import ManualClock
from modelfleet.errors import NotFoundError, TransportError

# -- plan files ---------------------------------------------------------------------------


def test_clock_times_stay_strings_where_yaml_1_1_reads_base_60(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("start: 06:00\nend: 14:00\nlate: 23:59:59\nversion: 3\nshare: 0.5\n")
    assert load_plan_file(str(path)) == {
        "start": "06:00",
        "end": "14:00",
        "late": "23:59:59",
        "version": 3,
        "share": 0.5,
    }


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("model: iris\nstages:\n  - {name: a, percent: 1, name: b}\n")
    with pytest.raises(UsageError, match=r"found the key 'name' twice \(line 3, column 27\)"):
        load_plan_file(str(path))


def test_json_is_yaml_too(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"model": "iris", "version": 2, "target": {"all": true}}')
    assert load_plan_file(str(path))["target"] == {"all": True}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"x" * ((4 << 20) + 1), "over 4194304 bytes"),
        (b"a: *nosuch\n", "not valid YAML"),
        (b"--- 1\n--- 2\n", "not valid YAML"),
        (b"just text\n", "not a str"),
    ],
    ids=["binary", "huge", "bad-alias", "two-documents", "scalar"],
)
def test_what_is_not_a_plan_file_says_why(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(raw)
    with pytest.raises(UsageError, match=message):
        load_plan_file(str(path))


def test_a_folder_is_not_a_plan_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        load_plan_file(str(tmp_path))


def test_ticket_option_wins_and_keeps_the_window() -> None:
    doc = {"model": "m", "change": {"ticket": "OLD", "window": {"tz": "UTC"}}}
    assert with_ticket(doc, "NEW")["change"] == {"ticket": "NEW", "window": {"tz": "UTC"}}
    assert with_ticket({"model": "m"}, "NEW")["change"] == {"ticket": "NEW"}
    assert with_ticket(doc, None) is doc


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("30s", 30.0), ("10m", 600.0), ("1h30m", 5400.0), ("2d", 172800.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "--timeout") == seconds


@pytest.mark.parametrize("text", ["soon", "-5m", "1y", ""])
def test_a_bad_duration_names_the_option(text: str) -> None:
    with pytest.raises(UsageError, match="--timeout"):
        parse_duration(text, "--timeout")


def options(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        all_devices=False,
        sites=[],
        tags=[],
        groups=[],
        devices=[],
        stages=None,
        soak=None,
        on_failure=None,
        ticket=None,
    )
    return plan_from_options("iris", 2, **{**base, **kw})


def test_own_percents_get_names_and_only_stages_below_100_soak() -> None:
    doc = options(devices=["a", "b"], stages="5,50,100", soak="1h")
    assert doc["target"] == {"devices": ["a", "b"]}
    assert doc["stages"] == [
        {"name": "canary", "percent": 5, "soak": 3600.0},
        {"name": "stage-2", "percent": 50, "soak": 3600.0},
        {"name": "full", "percent": 100, "soak": 0},
    ]


# -- polling --------------------------------------------------------------------------------


class Answers:
    """``fetch`` answering from a list; an exception in it is raised."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_poll_stops_when_done_and_sleeps_the_interval() -> None:
    clock, shown = ManualClock(), []
    result = poll(
        Answers(1, 2, 3),
        lambda v: v == 3,
        show=lambda v, e: shown.append(v),
        interval_s=2.0,
        now=clock.monotonic,
        sleep=clock.advance,
    )
    assert (result.value, result.done, shown, clock.monotonic()) == (3, True, [1, 2, 3], 4.0)


def test_a_slow_answer_stretches_the_wait_so_the_hub_is_not_kept_busy() -> None:
    clock, sleeps = ManualClock(), []

    def slow_fetch() -> float:
        clock.advance(3.0)  # the hub took 3 s to answer
        return clock.monotonic()

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)

    poll(
        slow_fetch,
        lambda v: len(sleeps) == 2,
        show=lambda v, e: None,
        interval_s=1.0,
        now=clock.monotonic,
        sleep=sleep,
    )
    assert sleeps == [6.0, 6.0]


def test_poll_gives_up_at_the_deadline_with_the_last_answer() -> None:
    clock = ManualClock()
    result = poll(
        Answers(1),
        lambda v: False,
        show=lambda v, e: None,
        interval_s=2.0,
        now=clock.monotonic,
        sleep=clock.advance,
        timeout_s=5.0,
    )
    assert (result.value, result.done, clock.monotonic()) == (1, False, 5.0)


def test_a_hub_down_from_the_start_fails_at_once() -> None:
    clock = ManualClock()
    with pytest.raises(TransportError):
        poll(
            Answers(TransportError("down")),
            lambda v: True,
            show=lambda v, e: None,
            interval_s=1.0,
            now=clock.monotonic,
            sleep=clock.advance,
        )
    assert clock.monotonic() == 0.0


def test_a_blip_is_shown_and_retried_but_a_long_outage_fails() -> None:
    clock, errors = ManualClock(), []
    blip = Answers(1, TransportError("blip"), 2)
    result = poll(
        blip,
        lambda v: v == 2,
        show=lambda v, e: errors.append((v, e is not None)),
        interval_s=1.0,
        now=clock.monotonic,
        sleep=clock.advance,
    )
    assert result.value == 2 and errors == [(1, False), (1, True), (2, False)]
    outage = Answers(1, TransportError("down"))
    with pytest.raises(TransportError):
        poll(
            outage,
            lambda v: False,
            show=lambda v, e: None,
            interval_s=1.0,
            now=clock.monotonic,
            sleep=clock.advance,
            outage_s=10.0,
        )
    assert outage.calls == 12  # one good answer, then ten seconds of failures and the last


def test_other_errors_are_not_retried() -> None:
    clock = ManualClock()
    with pytest.raises(NotFoundError):
        poll(
            Answers(1, NotFoundError("gone")),
            lambda v: False,
            show=lambda v, e: None,
            interval_s=1.0,
            now=clock.monotonic,
            sleep=clock.advance,
        )


# -- deploy --wait verdicts ---------------------------------------------------------------

DEPLOYED = {
    "model": "iris",
    "version": 3,
    "mode": "full",
    "devices": [{"device_id": "d1", "serial": 7}],
}


def device(
    production: int = 3, rollout: str = "r-1", candidate: int | None = None, **report: Any
) -> dict[str, Any]:
    return {
        "id": "d1",
        "last_seen": "2026-12-02T16:00:00Z" if report else None,
        "assignments": [
            {
                "model": "iris",
                "production": production,
                "candidate": candidate,
                "rollout_id": rollout,
            }
        ],
        "report": report or None,
    }


def active(version: int) -> dict[str, Any]:
    return {"iris": {"active": {"version": version}, "candidate": None}}


WAIT_CASES = [
    (
        "serving",
        device(applied_serial=7, models=active(3)),
        "full",
        WaitState.SERVING,
        "serving v3",
    ),
    ("never-reported", device(), "full", WaitState.PENDING, "has not reported yet"),
    (
        "older-serial",
        device(applied_serial=6, models=active(3)),
        "full",
        WaitState.PENDING,
        "applied serial 6 < 7",
    ),
    (
        "downloading",
        device(applied_serial=6, models=active(2), update_status="downloading: iris v3"),
        "full",
        WaitState.PENDING,
        "active v2, applied serial 6 < 7, downloading: iris v3",
    ),
    (
        "refused",
        device(
            applied_serial=6,
            models=active(2),
            last_refusal={
                "model": "iris",
                "version": 3,
                "serial": 7,
                "reason": "smoke test failed",
            },
        ),
        "full",
        WaitState.REFUSED,
        "refused v3: smoke test failed",
    ),
    (
        "old-refusal-ignored",
        device(
            applied_serial=6,
            models=active(2),
            last_refusal={"model": "iris", "version": 3, "serial": 4, "reason": "x"},
        ),
        "full",
        WaitState.PENDING,
        "v2",
    ),
    (
        "guard-rolled-back",
        device(
            applied_serial=7,
            models=active(2),
            rollbacks=[
                {
                    "model": "iris",
                    "from_version": 3,
                    "to_version": 2,
                    "serial": 7,
                    "reason": "p99 over SLO",
                }
            ],
        ),
        "full",
        WaitState.ROLLED_BACK,
        "rolled v3 back to v2: p99 over SLO",
    ),
    (
        "hub-applied-rollback",
        device(production=2, rollout="device-rollback-ev1"),
        "full",
        WaitState.ROLLED_BACK,
        "now assigned v2",
    ),
    (
        "someone-redeployed",
        device(production=4, rollout="r-2"),
        "full",
        WaitState.REASSIGNED,
        "the hub now assigns v4 (r-2)",
    ),
    (
        "split-candidate-serving",
        device(
            production=2,
            candidate=3,
            applied_serial=7,
            models={"iris": {"active": {"version": 2}, "candidate": {"version": 3}}},
        ),
        "split",
        WaitState.SERVING,
        "serving v3",
    ),
    (
        "split-not-yet",
        device(production=2, candidate=3, applied_serial=7, models=active(2)),
        "split",
        WaitState.PENDING,
        "no candidate version",
    ),
]


@pytest.mark.parametrize(
    ("view", "mode", "state", "detail"), [c[1:] for c in WAIT_CASES], ids=[c[0] for c in WAIT_CASES]
)
def test_wait_state_of_a_device(
    view: dict[str, Any], mode: str, state: WaitState, detail: str
) -> None:
    [got] = wait_states({**DEPLOYED, "mode": mode}, [view])
    assert got.state is state and detail in got.detail, got


def test_a_device_deleted_meanwhile_is_gone() -> None:
    [got] = wait_states(DEPLOYED, [])
    assert got.state is WaitState.GONE and got.state.failed


def test_laggards_are_listed_up_to_a_limit() -> None:
    deployed = {**DEPLOYED, "devices": [{"device_id": f"d{i}", "serial": 1} for i in range(8)]}
    states = wait_states(deployed, [])
    assert describe_laggards(states, limit=2) == (
        "d0 (no longer enrolled), d1 (no longer enrolled) and 6 more"
    )


# -- the view -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "0s"),
        (45.4, "45s"),
        (1800, "30m"),
        (723, "12m 03s"),
        (7500, "2h 05m"),
        (3600, "1h"),
        (273600, "3d 04h"),
        (-90, "-1m 30s"),
    ],
)
def test_durations_read_short(seconds: float | None, text: str) -> None:
    assert duration_text(seconds) == text


@pytest.mark.parametrize(
    ("metric", "value", "text"),
    [
        ("latency_p99", 0.0432, "43.2 ms"),
        ("error_rate", 0.0123, "1.23 %"),
        ("guard_rollbacks", 2.0, "2"),
        ("crashes", 0.5, "0.5"),
        ("confidence_shift", 0.0312, "0.0312"),
        ("error_rate", None, "-"),
        ("error_rate", True, "-"),
    ],
)
def test_gate_values_in_their_unit(metric: str, value: Any, text: str) -> None:
    assert gate_value_text(metric, value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("2026-12-02T16:02:14.119458+00:00", "2026-12-02T16:02:14Z"),
        ("2026-12-02T17:02:14.5+01:00", "2026-12-02T17:02:14+01:00"),
        ("yesterday", "yesterday"),
        (None, None),
    ],
)
def test_times_read_to_the_second(value: str | None, text: str | None) -> None:
    assert time_text(value) == text


def test_threshold_is_the_hubs_limit_else_the_plans_rule() -> None:
    view = {
        "plan": {
            "gates": [
                {"metric": "error_rate", "max_ratio": 1.5, "max_delta": 0.01},
                {"metric": "guard_rollbacks", "max": 0},
            ]
        }
    }
    assert gate_threshold_text(view, {"metric": "latency_p99", "limit": 0.05}) == "≤ 50.0 ms"
    assert gate_threshold_text(view, {"metric": "error_rate"}) == "≤ 1.5× control + 1.00 %"
    assert gate_threshold_text(view, {"metric": "guard_rollbacks"}) == "≤ 0"
    assert gate_threshold_text(view, {"metric": "crashes"}) == "-"


def test_summary_line_and_what_counts_as_a_change() -> None:
    view = {
        "id": "ro-1",
        "model": "iris",
        "version": 3,
        "state": "running",
        "stages": 4,
        "stage": {
            "index": 0,
            "name": "canary",
            "percent": 1,
            "mode": "split",
            "share": 0.5,
            "soak_left_s": 100,
        },
        "devices": {"total": 2, "assigned": 1},
        "gates": [{"metric": "error_rate", "verdict": "hold", "samples": 3}],
        "reason": "holding: too few samples",
    }
    assert summary_line(view) == (
        "ro-1 iris v3 running · stage 1/4 canary · 1 % · split 50% · devices: 2 total, "
        "1 assigned · gates: error_rate hold · holding: too few samples"
    )
    ticking = {**view, "stage": {**view["stage"], "soak_left_s": 99}}
    assert change_key(ticking) == change_key(view)
    more = {**view, "gates": [{**view["gates"][0], "samples": 4}]}
    assert change_key(more) != change_key(view)


def test_a_view_from_another_hub_version_still_renders() -> None:
    from rich.console import Console

    odd = {
        "stage": None,
        "stage_index": -1,
        "devices": {"total": 1, "new_state": 2},
        "gates": [{"metric": "future_metric", "value": "n/a"}],
        "history": ["x"],
    }
    assert "not started" in summary_line(odd) and "not started" in summary_line({})
    console = Console(width=120, record=True)
    console.print(render_rollout(odd))
    console.print(render_rollout({}))
    assert "future_metric" in console.export_text()


class DeviceViews:
    """A client's two device reads, counted; ``gone`` answers not found."""

    def __init__(self, gone: str = "") -> None:
        self.gone, self.calls = gone, []

    def list_devices(self) -> list[dict[str, Any]]:
        self.calls.append("list")
        return [{"id": "all"}]

    def get_device(self, device_id: str) -> dict[str, Any]:
        self.calls.append(device_id)
        if device_id == self.gone:
            raise NotFoundError(device_id)
        return {"id": device_id}


def test_a_few_devices_are_read_one_by_one_many_in_one_list() -> None:
    from modelfleet.cli.main import _device_views

    few = DeviceViews(gone="d1")
    deployed = {"devices": [{"device_id": "d0"}, {"device_id": "d1"}]}
    assert _device_views(few, deployed) == [{"id": "d0"}] and few.calls == ["d0", "d1"]
    many = DeviceViews()
    deployed = {"devices": [{"device_id": f"d{i}"} for i in range(21)]}
    assert _device_views(many, deployed) == [{"id": "all"}] and many.calls == ["list"]

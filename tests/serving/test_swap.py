"""Swapping a model version while clients are sending requests loses no request: the daemon's
``set_route`` from another thread is atomic for every in-flight and following request."""

from __future__ import annotations

import threading

import httpx
import orjson

from modelfleet.agent.app import build_agent_app
from modelfleet.rollout.desired_state import Mode
from modelfleet.serving.host import ModelHost
from modelfleet.serving.router import Route
from tests.serving._support import Models, ServerThread, load

SWAPS = 30
REQUESTS_BETWEEN_SWAPS = 5
CLIENTS = 3


def test_set_route_while_clients_send_requests_has_zero_failures(models: Models) -> None:
    host = ModelHost()
    host.set_route("iris", Route(load(models.lr_a, "1")))
    body = orjson.dumps(
        {"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32",
                     "data": models.X[:2].ravel().tolist()}]}
    )  # fmt: skip
    progress = threading.Condition()
    done = [0]
    stop = threading.Event()
    failures: list[str] = []
    seen: set[str] = set()

    def client(url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                try:
                    response = http.post("/v2/models/iris/infer", content=body)
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text}")
                    else:
                        doc = response.json()
                        assert doc["model_version"] == response.headers["modelfleet-version"]
                        seen.add(doc["model_version"])
                except Exception as e:  # record, never kill the thread silently
                    failures.append(repr(e))
                with progress:
                    done[0] += 1
                    progress.notify_all()

    with ServerThread(build_agent_app(host)) as server:
        threads = [threading.Thread(target=client, args=(server.url,)) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            previous = host.route("iris")
            for swap in range(2, SWAPS + 2):
                # load + warm up off the serving path, then swap: what the daemon does
                path = models.lr_b if swap % 2 else models.lr_a
                fresh = load(path, str(swap))
                with progress:
                    target = done[0] + REQUESTS_BETWEEN_SWAPS

                    def reached(t: int = target) -> bool:
                        return done[0] >= t

                    assert progress.wait_for(reached, timeout=30)
                assert previous is not None
                mode = Mode.SPLIT if swap % 3 == 0 else Mode.FULL
                host.set_route(
                    "iris", Route(fresh, previous.production, mode, 0.5, previous.production)
                )
                previous = host.route("iris")
            with progress:
                target = done[0] + REQUESTS_BETWEEN_SWAPS
                assert progress.wait_for(lambda: done[0] >= target, timeout=30)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
    assert failures == []
    assert done[0] >= SWAPS * REQUESTS_BETWEEN_SWAPS
    assert str(SWAPS + 1) in seen
    assert len(seen) > SWAPS // 2

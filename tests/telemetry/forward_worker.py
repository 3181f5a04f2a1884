"""A lean process running the agent's real telemetry over the agent's buffer file.

``python -m tests.telemetry.forward_worker --buffer FILE --hub URL --device-id ID
--token-file F [--rate R] [--burst N] [--drain]``: opens the agent's
:class:`~modelfleet.telemetry.buffer.TelemetryBuffer`, appends ``--burst`` windows at once,
then runs the real :class:`~modelfleet.telemetry.device.DeviceTelemetry` (closer and
forwarder, on a scaled clock, sending through the real ``HttpHubLink.send_telemetry``) until
killed (flat out by default, so that kills land mid-batch). With ``--drain`` it exits 0 once
the buffer is empty (1 after 60 s without progress). The kill -9 e2e test uses it
for most of its kills: it starts in a fraction of the time ``modelfleet agent run`` takes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from modelfleet.agent.hub_link import HttpHubLink
from modelfleet.backoff import BackoffPolicy
from modelfleet.clock import ScaledClock
from modelfleet.telemetry.buffer import TelemetryBuffer
from modelfleet.telemetry.device import DeviceTelemetry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--buffer", required=True)
    p.add_argument("--hub", required=True)
    p.add_argument("--device-id", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--burst", type=int, default=0)
    p.add_argument("--drain", action="store_true")
    p.add_argument("--duty", type=float, default=1.0, help="forwarder duty cycle (flat out)")
    p.add_argument("--buffer-mb", type=float, default=1024.0, help="buffer bound (no eviction)")
    args = p.parse_args(argv)
    token = Path(args.token_file).read_text().strip()
    clock = ScaledClock(time.time(), args.rate)
    link = HttpHubLink(args.hub, token, timeout=5.0, attempts=1)
    bound = int(args.buffer_mb * 1024 * 1024)
    buffer = TelemetryBuffer(args.buffer, bound)
    versions = [("worker-model", str(v), "production") for v in range(3)]
    telemetry = DeviceTelemetry(
        args.device_id,
        buffer,
        lambda batch: link.send_telemetry(args.device_id, batch),
        clock,
        window_s=60.0,
        routed=lambda: versions,
        backoff=BackoffPolicy(0.05, 2.0),
        forwarder_max_records=50,
        forwarder_max_duty=args.duty,
    )
    for _ in range(args.burst // 3):
        telemetry.close_window()
    telemetry.start()
    print("started", flush=True)
    if not args.drain:
        while True:
            time.sleep(1)
    deadline = time.monotonic() + 60
    telemetry.stop(flush=False)  # no more windows: only forward what waits
    buffer = TelemetryBuffer(args.buffer, bound)
    from modelfleet.telemetry.forwarder import Forwarder

    fwd = Forwarder(buffer, lambda b: link.send_telemetry(args.device_id, b), clock, args.device_id)
    left = buffer.stats().records
    while left and time.monotonic() < deadline:
        if fwd.step() is not None:
            time.sleep(0.05)
        now_left = buffer.stats().records
        if now_left < left:  # progress: a loaded machine is slow, not stuck
            deadline = time.monotonic() + 60
        left = now_left
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())

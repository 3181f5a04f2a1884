"""The fleet simulator (``modelfleet sim``, issue 8): thousands of light simulated devices in
one process against a real hub over HTTP, with faults per cohort and a compressible clock.

Layout: :mod:`~modelfleet.sim.faults` (fault specs and cohorts, pure),
:mod:`~modelfleet.sim.verify` (TUF checks with python-tuf's Metadata API, pure),
:mod:`~modelfleet.sim.director` (the director layout seam), :mod:`~modelfleet.sim.traffic`
(telemetry windows, pure), :mod:`~modelfleet.sim.device` (one device's state and
transitions, pure), :mod:`~modelfleet.sim.fleet` (the asyncio shell) over
:mod:`~modelfleet.sim._http` (h11).

Imports: telemetry.wire, monitoring.histogram, rollout, trust.bundle, clock, backoff,
errors, tuf, h11; never the hub or the agent (tests/test_import_graph.py).
"""

from modelfleet.sim.faults import Fault, parse_duration, parse_fault, parse_faults
from modelfleet.sim.fleet import FleetSimulator, Progress, SimConfig
from modelfleet.sim.traffic import Traffic

__all__ = [
    "Fault",
    "FleetSimulator",
    "Progress",
    "SimConfig",
    "Traffic",
    "parse_duration",
    "parse_fault",
    "parse_faults",
]

"""Fixtures for the trust layer (helpers live in ``_trust_support``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfleet.trust import DeviceTrustClient
from tests.trust._trust_support import TOKEN, Hub, make_hub, serve


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return make_hub(tmp_path / "hub")


@pytest.fixture
def hub_url(hub: Hub) -> Iterator[str]:
    """Serve ``hub`` on a free loopback port for the duration of a test."""
    with serve(hub) as url:
        yield url


@pytest.fixture
def client(tmp_path: Path, hub: Hub, hub_url: str) -> Iterator[DeviceTrustClient]:
    """A device client bootstrapped with the hub's trust-root bundle."""
    c = DeviceTrustClient(tmp_path / "device", hub_url, TOKEN, hub.trust.trust_root_bundle())
    try:
        yield c
    finally:
        c.close()

"""A revoked version (issue 10): at its next refresh the device finds it gone from the
catalog and falls back to its pinned previous version, without downloading and before
the director says anything new."""

from __future__ import annotations

from pathlib import Path

from modelfleet.agent.updater import Updater
from modelfleet.clock import ManualClock
from modelfleet.errors import TransportError
from modelfleet.serving.host import ModelHost
from tests.agent.fakes import MemorySource
from tests.helpers import logistic_onnx

DEVICE = "dev-1"


class CatalogSource(MemorySource):
    """The memory source that also answers whether the catalog still lists a version."""

    def catalog_lists(self, target_path: str, sha256: str) -> bool:
        if self.offline:
            raise TransportError("hub unreachable (test)")
        signed = self.catalog.get(target_path)
        return signed is not None and signed[0] == sha256


def _serving(host: ModelHost) -> str:
    route = host.route("m")
    assert route is not None
    return route.production.version


def test_a_revoked_running_version_falls_back_to_the_pinned_previous_one(
    tmp_path: Path,
) -> None:
    source, host = CatalogSource(), ModelHost()
    updater = Updater(DEVICE, tmp_path, source, host, ManualClock())
    source.assign(DEVICE, source.publish("m", 1, logistic_onnx(seed=0)[0]))
    updater.run_cycle()
    source.assign(DEVICE, source.publish("m", 2, logistic_onnx(seed=1)[0]))
    updater.run_cycle()
    assert _serving(host) == "2"
    del source.catalog["models/m/2/model.onnx"]  # revoked; the director still names v2
    downloads = source.downloads
    updater.run_cycle()
    assert _serving(host) == "1"
    assert source.downloads == downloads
    [record] = updater.state.rollbacks
    assert (record.from_version, record.to_version) == (2, 1)
    assert "revoked" in record.reason
    updater.run_cycle()  # the same serial again: v2 is not re-applied
    assert _serving(host) == "1"


def test_a_revoked_version_with_nothing_to_fall_back_to_keeps_serving(tmp_path: Path) -> None:
    source, host = CatalogSource(), ModelHost()
    updater = Updater(DEVICE, tmp_path, source, host, ManualClock())
    source.assign(DEVICE, source.publish("m", 1, logistic_onnx(seed=0)[0]))
    updater.run_cycle()
    del source.catalog["models/m/1/model.onnx"]
    updater.run_cycle()
    assert _serving(host) == "1" and updater.state.rollbacks == []

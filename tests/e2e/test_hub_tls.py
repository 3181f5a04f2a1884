"""TLS on the hub, with the agent and the CLI pinning the hub's CA (issue 10), across real
processes: ``hub tls-init`` makes a CA and the hub's certificate, ``hub serve --tls``
serves HTTPS only, an agent run with ``--hub-ca`` enrols, updates and serves over it, and
the CLI reaches the hub with ``MODELFLEET_HUB_CA``. A client pinning another CA, or none,
is refused with one clear line; plain HTTP to the TLS port gets nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelfleet.delivery.tls import pinned_context
from modelfleet.hub.tls_setup import create_hub_tls
from tests.e2e.conftest import Proc, cli, free_port, wait_for
from tests.e2e.test_whole_loop import infer, register

pytestmark = pytest.mark.e2e


class _TlsHub:
    def __init__(self, home: Path, url: str, token: str, ca: Path, proc: Proc) -> None:
        self.home, self.url, self.token, self.ca, self.proc = home, url, token, ca, proc

    def env(self) -> dict[str, str]:
        return {
            "MODELFLEET_HUB": self.url,
            "MODELFLEET_TOKEN": self.token,
            "MODELFLEET_HUB_CA": str(self.ca),
        }


@pytest.fixture
def tls_hub(tmp_path: Path, spawn: Callable[..., Proc]) -> _TlsHub:
    home = tmp_path / "hub"
    assert cli("init", str(home)).returncode == 0
    made = cli("hub", "tls-init", "--home", str(home), "--host", "127.0.0.1",
               "--host", "localhost", "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    files = json.loads(made.stdout)
    assert len(files["ca_sha256"]) == 64
    for secret in (files["ca_key"], files["key"]):
        assert os.stat(secret).st_mode & 0o777 == 0o600
    port = free_port()
    proc = spawn("hub", "hub", "serve", "--home", str(home), "--port", str(port), "--tls")
    url = f"https://127.0.0.1:{port}"
    ctx = pinned_context(Path(files["ca_cert"]))
    assert wait_for(lambda: httpx.get(f"{url}/api/v1/health", verify=ctx).status_code == 200), (
        proc.output()
    )
    token = (home / "admin.token").read_text().strip()
    return _TlsHub(home, url, token, Path(files["ca_cert"]), proc)


def test_agent_and_cli_pin_the_hub_ca_and_others_are_refused(
    tls_hub: _TlsHub, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    hub = tls_hub
    listed = cli("device", "list", "--json", env=hub.env())
    assert listed.returncode == 0, listed.stderr

    # Another CA (a second hub's): the CLI refuses the hub's certificate, one line, exit 5.
    other = create_hub_tls(tmp_path / "other", ["127.0.0.1"], datetime.now(UTC))[0].ca_cert
    wrong = cli("device", "list", env={**hub.env(), "MODELFLEET_HUB_CA": str(other)})
    assert wrong.returncode == 5, wrong.stdout + wrong.stderr
    assert "certificate" in wrong.stderr.lower() and "Traceback" not in wrong.stderr
    # No CA at all: the system's CAs do not know the hub's private CA either.
    env = {k: v for k, v in hub.env().items() if k != "MODELFLEET_HUB_CA"}
    assert cli("device", "list", env=env).returncode == 5
    # A file that is no certificate: a usage error before any connection.
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    bad = cli("device", "list", env={**hub.env(), "MODELFLEET_HUB_CA": str(junk)})
    assert bad.returncode == 2 and "no usable PEM certificate" in bad.stderr, bad.stderr
    # Plain HTTP to the TLS port: no answer at all.
    with pytest.raises(httpx.HTTPError):
        httpx.get(hub.url.replace("https://", "http://") + "/api/v1/health", timeout=5)

    # A device enrols, runs and updates over TLS with the CA pinned.
    boot = json.loads(cli("device", "enrol-token", "create", "cam-1", "--site", "plant-a",
                          "--json", env=hub.env()).stdout)  # fmt: skip
    token_file = tmp_path / "bootstrap.token"
    token_file.write_text(boot["token"])
    os.chmod(token_file, 0o600)
    state = tmp_path / "cam-1"
    enrol = ("device", "enrol", "cam-1", "--hub", hub.url, "--bootstrap-token-file",
             str(token_file), "--state-dir", str(state))  # fmt: skip
    refused = cli(*enrol, "--hub-ca", str(other))
    assert refused.returncode == 5 and "Traceback" not in refused.stderr, refused.stderr
    enrolled = cli(*enrol, "--hub-ca", str(hub.ca), "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    port = free_port()
    agent = spawn("agent-cam-1", "agent", "run", "--hub", hub.url, "--device-id", "cam-1",
                  "--state-dir", str(state), "--port", str(port), "--poll-interval", "0.2",
                  "--trust-root", str(hub.home / "trust-root.json"),
                  "--hub-ca", str(hub.ca))  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: httpx.get(f"{url}/v2/health/live").status_code == 200), agent.output()
    register(hub, tmp_path, 0)  # type: ignore[arg-type]  (it reads .env() only)
    assert cli("deploy", "m", "1", "--devices", "cam-1", env=hub.env()).returncode == 0
    x = np.zeros((1, 10), np.float32)
    assert wait_for(lambda: infer(url, x).status_code == 200), agent.output()

    def checked_in_and_forwarded() -> bool:
        shown = json.loads(cli("device", "show", "cam-1", "--json", env=hub.env()).stdout)
        return bool(shown["device"].get("last_seen")) and bool(shown["windows"])

    # The check-in and the telemetry both went over the pinned TLS link.
    assert wait_for(checked_in_and_forwarded), agent.output()


def test_a_site_mirror_reaches_the_hub_over_tls_with_its_ca_pinned(
    tls_hub: _TlsHub, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """Issue 11: ``site serve --hub https://... --hub-ca`` caches for a device over the
    pinned TLS link; a mirror pinning another CA serves nothing it cannot verify the hub for."""
    hub = tls_hub
    added = cli("device", "add", "cam-2", "--site", "plant-a", "--json", env=hub.env())
    assert added.returncode == 0, added.stderr
    token = json.loads(added.stdout)["token"]
    register(hub, tmp_path, 0)  # type: ignore[arg-type]
    assert cli("deploy", "m", "1", "--devices", "cam-2", env=hub.env()).returncode == 0

    other = create_hub_tls(tmp_path / "other", ["127.0.0.1"], datetime.now(UTC))[0].ca_cert
    wrong_port = free_port()
    spawn("mirror-wrong-ca", "site", "serve", "--hub", hub.url, "--hub-ca", str(other),
          "--cache", str(tmp_path / "wrong-cache"), "--port", str(wrong_port))  # fmt: skip
    wrong = f"http://127.0.0.1:{wrong_port}"
    assert wait_for(lambda: httpx.get(f"{wrong}/-/mirror/status").status_code == 200)
    headers = {"Authorization": f"Bearer {token}"}
    answer = httpx.get(f"{wrong}/api/v1/trust-root", headers=headers, timeout=30)
    assert answer.status_code == 503, answer.text  # the hub's certificate is not trusted
    assert not list((tmp_path / "wrong-cache").rglob("*.json"))

    mport = free_port()
    spawn("mirror", "site", "serve", "--hub", hub.url, "--hub-ca", str(hub.ca),
          "--cache", str(tmp_path / "cache"), "--port", str(mport))  # fmt: skip
    mirror = f"http://127.0.0.1:{mport}"
    assert wait_for(lambda: httpx.get(f"{mirror}/-/mirror/status").status_code == 200)
    port = free_port()
    agent = spawn("agent-cam-2", "agent", "run", "--hub", mirror, "--device-id", "cam-2",
                  "--token", token, "--state-dir", str(tmp_path / "cam-2"), "--port", str(port),
                  "--poll-interval", "0.2",
                  "--trust-root", str(hub.home / "trust-root.json"))  # fmt: skip
    x = np.zeros((1, 10), np.float32)
    assert wait_for(lambda: infer(f"http://127.0.0.1:{port}", x).status_code == 200, 90), (
        agent.output()[-3000:]
    )
    status = httpx.get(f"{mirror}/-/mirror/status").json()
    assert status["counters"]["upstream_target_downloads"] >= 1  # through the mirror, over TLS
    assert any((tmp_path / "cache" / "tuf" / "catalog" / "targets").rglob("*.onnx"))

"""``modelfleet site serve`` through the real CLI: usage errors as one line (exit 2), a hub
that cannot be reached at start, and the ``--hub-ca`` plumbing."""

from __future__ import annotations

import datetime as dt
import json
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelfleet.cli._errors import ExitCode
from modelfleet.delivery.mirror import MirrorConfig
from modelfleet.demo import free_port, modelfleet_cmd, start
from tests.cli_run import run_cli
from tests.e2e.conftest import wait_for
from tests.test_cli_errors import assert_one_line_error


def _ca(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelfleet test hub CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--hub", "ftp://hub", "--cache", "{tmp}/c"], "http:// or https://"),
        (["--hub", "https://hub", "--cache", "{tmp}/c", "--hub-ca", "{tmp}/none.pem"],
         "no such file"),
        (["--hub", "http://hub", "--cache", "{tmp}/c", "--hub-ca", "{ca}"], "https://"),
        (["--hub", "http://hub", "--cache", "{tmp}/file"], "is not a folder"),
        (["--hub", "http://hub", "--cache", "{tmp}/c", "--token-file", "{tmp}/empty"], "empty"),
        (["--hub", "http://hub", "--cache", "{tmp}/c", "--token-file", "{tmp}/nope"],
         "cannot read"),
        (["--cache", "{tmp}/c"], "give --hub URL, or --offline"),
        (["--hub", "http://hub", "--cache", "{tmp}/c", "--port", "0"], "--port"),
    ],
    ids=["scheme", "ca-missing", "ca-on-http", "cache-is-a-file", "token-empty",
         "token-unreadable", "no-hub", "port"],
)  # fmt: skip
def test_wrong_usage_of_site_serve_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], text: str
) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").write_text("")
    ca = _ca(tmp_path / "ca.pem")
    argv = [a.format(tmp=tmp_path, ca=ca) for a in args]
    result = run_cli("site", "serve", *argv)
    assert_one_line_error(result, ExitCode.USAGE, text)
    assert not (tmp_path / "c").exists()  # nothing created


def test_a_hub_unreachable_at_start_is_fine_and_devices_are_told_to_come_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    dead_hub = f"http://127.0.0.1:{free_port()}"
    proc = start(
        "mirror",
        modelfleet_cmd(
            "site",
            "serve",
            "--hub",
            dead_hub,
            "--cache",
            str(tmp_path / "c"),
            "--port",
            str(port),
            "--json",
        ),
        tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: httpx.get(f"{url}/-/mirror/status").status_code == 200, 60), (
            proc.output()
        )
        bearer = {"Authorization": "Bearer mft_never_seen"}
        r = httpx.get(f"{url}/tuf/catalog/metadata/timestamp.json", headers=bearer)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        r = httpx.post(f"{url}/api/v1/devices/d/report", headers=bearer, content=b"{}")
        assert r.status_code == 503 and "retry-after" in r.headers
        assert httpx.get(f"{url}/-/mirror/status").json()["counters"]["hub_failures"] >= 1
    finally:
        proc.stop()
    first = proc.output().splitlines()
    assert any('"url"' in line for line in first), proc.output()
    assert "Traceback" not in proc.output()
    assert (
        json.loads(proc.output()[proc.output().index("{") : proc.output().index("}") + 1])["hub"]
        == dead_hub
    )


def test_the_hub_ca_is_what_the_mirror_checks_the_hubs_certificate_against(
    tmp_path: Path,
) -> None:
    ca = _ca(tmp_path / "ca.pem")
    verify = MirrorConfig(hub_url="https://hub", cache_dir=tmp_path, hub_ca=ca).ssl_verify()
    assert isinstance(verify, ssl.SSLContext)
    assert verify.verify_mode is ssl.CERT_REQUIRED and verify.check_hostname
    [loaded] = verify.get_ca_certs()
    assert dict(x[0] for x in loaded["subject"])["commonName"] == "modelfleet test hub CA"
    assert MirrorConfig(hub_url="https://hub", cache_dir=tmp_path).ssl_verify() is True

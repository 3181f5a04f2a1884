"""The hub's CA and certificate (hub tls-init) and the clients' pinned context (issue 10)."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from modelfleet.delivery.tls import client_verify, pinned_context
from modelfleet.errors import ConfigError
from modelfleet.hub.tls_setup import create_hub_tls
from tests.cli_run import run_cli

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_certificate_names_hosts_and_chains_to_the_ca(tmp_path: Path) -> None:
    files, fingerprint = create_hub_tls(tmp_path, ["hub.plant-a.example", "10.0.0.7"], NOW, 30)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["hub.plant-a.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    cert.verify_directly_issued_by(ca)
    assert cert.not_valid_after_utc == NOW + timedelta(days=30)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert fingerprint == ca.fingerprint(hashes.SHA256()).hex()
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert files.ca_key.stat().st_mode & 0o777 == 0o600


def test_existing_files_are_never_overwritten(tmp_path: Path) -> None:
    files, _ = create_hub_tls(tmp_path, ["127.0.0.1"], NOW)
    before = files.ca_cert.read_bytes()
    with pytest.raises(ConfigError, match="devices may pin it"):
        create_hub_tls(tmp_path, ["127.0.0.1"], NOW)
    assert files.ca_cert.read_bytes() == before


@pytest.mark.parametrize("host", ["", "bad host", "a..b", "-" * 64, "ünï.example"])
def test_bad_host_names_are_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="neither a DNS name nor an IP address"):
        create_hub_tls(tmp_path, [host], NOW)
    assert not (tmp_path / "tls").exists()


def test_no_host_or_bad_days_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one --host"):
        create_hub_tls(tmp_path, [], NOW)
    with pytest.raises(ConfigError, match="--days"):
        create_hub_tls(tmp_path, ["127.0.0.1"], NOW, days=0)


def test_pinned_context_trusts_only_the_given_ca(tmp_path: Path) -> None:
    files, _ = create_hub_tls(tmp_path, ["127.0.0.1"], NOW)
    ctx = pinned_context(files.ca_cert)
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.cert_store_stats()["x509"] == 1  # the system's CAs are not loaded
    assert client_verify(None) is True


def test_unusable_ca_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        pinned_context(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="no usable PEM certificate"):
        pinned_context(junk)


@pytest.mark.slow  # 25-60 s of real CLI processes
def test_cli_wrong_usage_is_one_clear_line(tmp_path: Path) -> None:
    home = tmp_path / "hub"
    assert run_cli("init", str(home)).returncode == 0
    cases = [
        (("hub", "tls-init", "--home", str(tmp_path / "nohome"), "--host", "x"), "not a hub home"),
        (("hub", "tls-init", "--home", str(home), "--host", "bad host"), "neither a DNS name"),
        (("hub", "serve", "--home", str(home), "--tls"), "hub tls-init"),
        (("hub", "serve", "--home", str(home), "--tls-cert", str(home / "x.pem")), "go together"),
        (
            (
                "hub",
                "serve",
                "--home",
                str(home),
                "--tls-cert",
                str(home / "x.pem"),
                "--tls-key",
                str(home / "y.pem"),
            ),
            "does not exist",
        ),
    ]
    for args, message in cases:
        got = run_cli(*args)
        assert got.returncode == 2, (args, got.stdout, got.stderr)
        assert message in got.stderr and "Traceback" not in got.stderr, (args, got.stderr)
    made = run_cli("hub", "tls-init", "--home", str(home), "--host", "127.0.0.1")
    assert made.returncode == 0 and "CA SHA-256" in made.stdout, made.stderr
    again = run_cli("hub", "tls-init", "--home", str(home), "--host", "127.0.0.1")
    assert again.returncode == 2 and "not overwritten" in again.stderr, again.stderr

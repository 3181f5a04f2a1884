"""``bundle export``, ``bundle import``, ``bundle site-key`` and ``site serve --offline``
through the real ``modelfleet`` command (issue 11): wrong usage and refused bundles are one
line and an exit code, never a traceback; the hub's media-access answer holds digests of
usable credentials only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.cli_run import run_cli, served_hub


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "hub"
    r = run_cli("init", str(home), "--json")
    assert r.returncode == 0, r.stderr
    return home


def _refused(r: object, text: str) -> None:
    assert r.returncode != 0, r.stdout  # type: ignore[attr-defined]
    assert text in r.stderr, r.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in r.stderr  # type: ignore[attr-defined]


def test_wrong_usage_is_one_line_and_an_exit_code(tmp_path: Path) -> None:
    bundle = tmp_path / "b.mfb"
    bundle.write_bytes(b"not a bundle at all")
    cases = [
        (("bundle", "import", str(bundle), "--site", "s"), "exactly one of --mirror-cache"),
        (
            (
                "bundle",
                "import",
                str(bundle),
                "--site",
                "s",
                "--folder",
                str(tmp_path / "a"),
                "--mirror-cache",
                str(tmp_path / "b"),
            ),
            "exactly one of",
        ),
        (
            (
                "bundle",
                "import",
                str(tmp_path / "none"),
                "--site",
                "s",
                "--folder",
                str(tmp_path / "f"),
            ),
            "no bundle file",
        ),
        (
            (
                "bundle",
                "import",
                str(bundle),
                "--site",
                "s",
                "--folder",
                str(tmp_path / "f"),
                "--trust-root",
                str(tmp_path / "missing.json"),
            ),
            "cannot read --trust-root",
        ),
        (
            ("bundle", "import", str(bundle), "--site", "s", "--folder", str(tmp_path / "f")),
            "holds no trust root yet",
        ),
        (
            (
                "bundle",
                "import",
                str(bundle),
                "--site",
                "s",
                "--folder",
                str(tmp_path / "f"),
                "--trust-root",
                str(bundle),
            ),
            "truncated or corrupted",
        ),
        (("site", "serve", "--cache", str(tmp_path / "c")), "--hub URL, or --offline"),
        (
            ("site", "serve", "--offline", "--hub", "http://x", "--cache", str(tmp_path / "c")),
            "--offline takes no --hub",
        ),
        (("bundle", "export", "--site", "s", "--out", str(tmp_path)), "is a folder"),
    ]
    for args, text in cases:
        _refused(run_cli(*args), text)
    assert not (tmp_path / "f" / "tuf").exists()


def test_site_key_is_private_and_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "site.key"
    r = run_cli("bundle", "site-key", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["public_key"].startswith("age1")
    assert out.stat().st_mode & 0o777 == 0o600
    assert "AGE-SECRET-KEY-" in out.read_text()
    _refused(run_cli("bundle", "site-key", "--out", str(out)), "not overwritten")


def test_export_needs_an_admin_and_a_site_with_devices(home: Path, tmp_path: Path) -> None:
    with served_hub(home, tmp_path) as hub:
        env = {"MODELFLEET_HUB": hub.url, "MODELFLEET_TOKEN": hub.token}
        r = run_cli("device", "add", "d1", "--site", "plant-a", "--json", env=env)
        assert r.returncode == 0, r.stderr
        device_token = json.loads(r.stdout)["token"]
        _refused(
            run_cli(
                "bundle", "export", "--site", "nowhere", "--out", str(tmp_path / "x.mfb"), env=env
            ),
            "no devices at site 'nowhere'",
        )
        from modelfleet.client import HubClient

        with HubClient(hub.url, hub.token) as api:
            viewer = api.create_token("viewer", "v")
            access = api.media_access("plant-a")
        # a viewer may read the fleet, not export credential digests
        _refused(
            run_cli("bundle", "export", "--site", "plant-a", "--out", str(tmp_path / "x.mfb"),
                    env={**env, "MODELFLEET_TOKEN": viewer}),
            "",
        )  # fmt: skip
        assert access == {"d1": [hashlib.sha256(device_token.encode()).hexdigest()]}
        r = run_cli("device", "revoke", "d1", "--json", env=env)
        assert r.returncode == 0, r.stderr
        with HubClient(hub.url, hub.token) as api:  # a revoked device's digest leaves
            assert api.media_access("plant-a") == {"d1": []}
        assert not (tmp_path / "x.mfb").exists()

"""Metadata signed through a PKCS#11 token (SoftHSM), by way of securesystemslib's
``HSMSigner``: no HSM-specific code in modelfleet beyond reading the key's public half
(issue 10, ADR 0025).

Needs Debian's ``softhsm2`` package and the ``hsm`` extra (``python-pkcs11``); skipped
with the reason otherwise, failed under CI (``make test`` installs both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from modelfleet.trust import DeviceTrustClient
from modelfleet.trust.key_admin import KeyAdmin
from modelfleet.trust.key_registry import KeyRegistry
from modelfleet.trust.keys import import_uri_public_key, pin_handler, uri_signer
from modelfleet.trust.root_signing import RootBundle, sign_bundle
from tests.trust._trust_support import Hub

PIN = "5678"
LABEL = "modelfleet-test"
_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)


def _unavailable() -> str | None:
    if shutil.which("softhsm2-util") is None:
        return "softhsm2-util not found (Debian package softhsm2)"
    if not any(Path(m).exists() for m in _MODULES):
        return "libsofthsm2.so not found (Debian package softhsm2)"
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return "python-pkcs11 missing (pip install 'modelfleet[hsm]')"
    return None


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SoftHSM token holding one P-256 key (id 2); yields its ``hsm:`` URI.

    One per module: python-pkcs11 loads the PKCS#11 module once per process, and SoftHSM
    reads its configuration (the token folder) only then.
    """
    reason = _unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"SoftHSM test cannot run in CI: {reason}")
        pytest.skip(reason)

    tmp_path = tmp_path_factory.mktemp("softhsm")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    module = next(m for m in _MODULES if Path(m).exists())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SOFTHSM2_CONF", str(conf))
        env.setenv("PYKCS11LIB", module)  # securesystemslib's HSMSigner reads it
        yield _token_with_key(module)


def _token_with_key(module: str) -> str:
    import pkcs11
    from pkcs11.util.ec import encode_named_curve_parameters

    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            LABEL,
            "--so-pin",
            "1234",
            "--pin",
            PIN,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    token = pkcs11.lib(module).get_token(token_label=LABEL)
    with token.open(rw=True, user_pin=PIN) as session:
        params = session.create_domain_parameters(
            pkcs11.KeyType.EC,
            {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        params.generate_keypair(store=True, id=b"\x02", label="modelfleet-root")
    return f"hsm:2?label={LABEL}"


def test_root_rotated_onto_a_softhsm_key_signs_and_devices_follow(
    hsm: str, hub: Hub, client: DeviceTrustClient
) -> None:
    blob = hub.assign("dev-1", hub.publish("iris", 1))
    assert client.fetch_desired_state("dev-1") == blob
    secrets = pin_handler(PIN)
    public = import_uri_public_key(hsm, secrets)
    admin = KeyAdmin(hub.home / "keys", hub.trust, hub.clock, secrets=secrets)
    change = admin.rotate("root", uri=hsm, public_key=public)
    assert not change.pending and change.added == [public.keyid]
    root = Metadata[Root].from_file(str(hub.home / "tuf" / "catalog" / "2.root.json"))
    assert public.keyid in root.signatures
    assert root.signed.keys[public.keyid].scheme == "ecdsa-sha2-nistp256"
    (record,) = KeyRegistry.load(hub.home / "keys").active("root")
    assert record.uri == hsm
    # The registry's URI signer (loaded afresh) signs the next root change too.
    admin.rotate("timestamp")
    hub.clock.advance(60)
    blob2 = hub.assign("dev-1", hub.publish("iris", 2))
    assert client.fetch_desired_state("dev-1") == blob2
    client.begin_cycle()
    client.refresh_catalog()


def test_offline_bundle_signed_through_the_signer_uri(hsm: str, hub: Hub) -> None:
    public = import_uri_public_key(hsm, pin_handler(PIN))
    roots = hub.trust.next_roots()
    current = hub.trust.roots()
    for md in roots.values():
        md.signed.add_key(public, "root")
    bundle = RootBundle.make(roots, current)
    sign_bundle(bundle, uri_signer(hsm, public, pin_handler(PIN)))
    assert all(s["new_signed"] == 1 and not s["ready"] for s in bundle.status().values())


def test_keys_cli_rotates_root_onto_the_token_with_no_hsm_code_in_the_command(
    hsm: str, tmp_path: Path
) -> None:
    from tests.cli_run import run_cli

    env = {
        "MODELFLEET_HSM_PIN": PIN,
        "SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"],
        "PYKCS11LIB": os.environ["PYKCS11LIB"],
    }
    home = tmp_path / "hub"
    assert run_cli("init", str(home), env=env).returncode == 0
    result = run_cli("keys", "rotate", "root", "--home", str(home), "--signer-uri", hsm,
                     "--json", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    change = json.loads(result.stdout)
    assert not change["pending"] and "director/root" in change["written"]
    # A later change is signed by the registry's hsm: signer, loaded in a new process.
    result = run_cli("keys", "rotate", "snapshot", "--home", str(home), "--json", env=env)
    assert result.returncode == 0, result.stderr
    root = Metadata[Root].from_file(str(home / "tuf" / "catalog" / "3.root.json"))
    assert set(root.signatures) == set(change["added"])


def test_offline_catalog_targets_signed_through_softhsm_by_the_cli(
    hsm: str, hub: Hub, tmp_path: Path
) -> None:
    """The catalog's targets key lives in a token the hub does not hold (ADR 0043): the
    staged targets is signed by ``keys sign-targets --signer-uri`` and published."""
    from dataclasses import replace

    from modelfleet.trust import HubTrust
    from modelfleet.trust.key_registry import OFFLINE
    from tests.cli_run import run_cli

    secrets = pin_handler(PIN)
    public = import_uri_public_key(hsm, secrets)
    admin = KeyAdmin(hub.home / "keys", hub.trust, hub.clock, secrets=secrets)
    admin.rotate("targets", uri=hsm, public_key=public)
    registry = KeyRegistry.load(hub.home / "keys")
    (record,) = registry.active("targets")
    registry.put(replace(record, location=OFFLINE))  # the token leaves the hub
    registry.save()
    hub.trust.close()
    hub.trust = HubTrust.open(hub.home / "tuf", hub.home / "keys", hub.clock)
    assert hub.trust.catalog_targets_offline()
    hub.publish("iris", 1)
    unsigned, signed = tmp_path / "unsigned.json", tmp_path / "signed.json"
    unsigned.write_bytes(hub.trust.export_catalog_targets())
    env = {
        "MODELFLEET_HSM_PIN": PIN,
        "SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"],
        "PYKCS11LIB": os.environ["PYKCS11LIB"],
    }
    result = run_cli("keys", "sign-targets", "--unsigned", str(unsigned), "--signer-uri", hsm,
                     "--out", str(signed), "--json", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["keyid"] == public.keyid
    hub.trust.apply_catalog_targets(signed.read_bytes())
    assert hub.trust.catalog_lists("iris", 1)

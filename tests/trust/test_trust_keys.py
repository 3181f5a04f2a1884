"""Signing keys: generated once, private, never silently replaced."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from modelfleet.errors import ConfigError, ConflictError
from modelfleet.trust import ROLES, generate_keys, load_signers
from modelfleet.trust._key_files import ENCRYPTED_HEADER
from modelfleet.trust.key_registry import KeyRegistry, KeyState, transition


def test_generated_keys_are_private_ed25519_and_load_as_signers(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    generate_keys(key_dir)
    for role in ROLES:
        assert stat.S_IMODE((key_dir / f"{role}.pem").stat().st_mode) == 0o600
    signers = load_signers(key_dir)
    assert set(signers) == set(ROLES)
    assert all(isinstance(s, CryptoSigner) for s in signers.values())
    assert {s.public_key.keytype for s in signers.values()} == {"ed25519"}
    assert len({s.public_key.keyid for s in signers.values()}) == len(ROLES)


def test_generate_refuses_to_overwrite_existing_keys(tmp_path: Path) -> None:
    generate_keys(tmp_path)
    before = (tmp_path / "root.pem").read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_keys(tmp_path)
    assert (tmp_path / "root.pem").read_bytes() == before


def test_generate_refuses_when_only_one_key_exists(tmp_path: Path) -> None:
    (tmp_path / "director.pem").write_bytes(b"x")
    with pytest.raises(ConfigError, match="director"):
        generate_keys(tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "missing"),
        ("corrupt", "corrupt"),
        ("world_readable", "readable by others"),
    ],
)
def test_load_rejects_unusable_key_files(tmp_path: Path, damage: str, message: str) -> None:
    generate_keys(tmp_path)
    pem = tmp_path / "snapshot.pem"
    if damage == "missing":
        pem.unlink()
    elif damage == "corrupt":
        pem.chmod(0o600)
        pem.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    else:
        pem.chmod(0o644)
    with pytest.raises(ConfigError, match=message):
        load_signers(tmp_path)


def test_load_rejects_non_ed25519_key(tmp_path: Path) -> None:
    generate_keys(tmp_path)
    rsa = CryptoSigner.generate_rsa(size=2048)
    (tmp_path / "targets.pem").write_bytes(rsa.private_bytes)
    with pytest.raises(ConfigError, match="not an ed25519"):
        load_signers(tmp_path)


# -- issue 10: encrypted at rest, registry ------------------------------------------------


def test_keys_generated_with_a_passphrase_are_encrypted_and_load_with_it(tmp_path: Path) -> None:
    generate_keys(tmp_path, b"correct horse")
    for role in ROLES:
        assert (tmp_path / f"{role}.pem").read_bytes().startswith(ENCRYPTED_HEADER)
        assert b"correct horse" not in (tmp_path / f"{role}.pem").read_bytes()
    signers = load_signers(tmp_path, b"correct horse")
    registry = KeyRegistry.load(tmp_path)
    assert {r: s.public_key.keyid for r, s in signers.items()} == {
        r: registry.active(r)[0].keyid for r in ROLES
    }


@pytest.mark.parametrize(
    ("passphrase", "message"),
    [(None, "is encrypted: give its passphrase"), (b"wrong", "wrong passphrase")],
)
def test_encrypted_key_without_or_with_a_wrong_passphrase_is_a_clear_error(
    tmp_path: Path, passphrase: bytes | None, message: str
) -> None:
    generate_keys(tmp_path, b"right")
    with pytest.raises(ConfigError, match=message):
        load_signers(tmp_path, passphrase)


def test_legacy_unencrypted_keys_without_a_registry_still_load_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    generate_keys(tmp_path)
    (tmp_path / "registry.json").unlink()  # a key folder from before issue 10
    signers = load_signers(tmp_path, b"given but unused")
    assert set(signers) == set(ROLES)
    assert "stored unencrypted" in caplog.text
    assert not (tmp_path / "registry.json").exists()  # adopted in memory, written on change


def test_registry_records_role_state_and_creation_time(tmp_path: Path) -> None:
    generate_keys(tmp_path, b"pw")
    data = json.loads((tmp_path / "registry.json").read_text())
    assert data["format"] == "modelfleet-keys/1"
    assert stat.S_IMODE((tmp_path / "registry.json").stat().st_mode) == 0o600
    assert sorted(k["role"] for k in data["keys"]) == sorted(ROLES)
    assert {k["state"] for k in data["keys"]} == {"active"}
    assert all(k["created"].endswith("Z") and k["retired"] is None for k in data["keys"])


def test_a_retired_key_never_becomes_active_again(tmp_path: Path) -> None:
    generate_keys(tmp_path)
    (record,) = KeyRegistry.load(tmp_path).active("root")
    now = datetime.now(UTC)
    retired = transition(record, KeyState.RETIRED, now)
    assert retired.retired == now
    with pytest.raises(ConflictError, match="cannot become active"):
        transition(retired, KeyState.ACTIVE, now)


def test_signing_workers_decrypt_an_encrypted_director_key(tmp_path: Path) -> None:
    from datetime import timedelta

    from modelfleet.trust import _sign_pool
    from modelfleet.trust.keys import online_key_path

    generate_keys(tmp_path, b"pw")
    path = online_key_path(tmp_path, "director")
    assert path is not None
    lifetimes = {r: timedelta(days=1) for r in ("targets", "snapshot", "timestamp")}
    _sign_pool._init(str(path), lifetimes, 0.3, b"pw")  # what each worker runs at start
    try:
        signer = _sign_pool._worker["signer"]
        assert (
            signer._signer.public_key.keyid
            == load_signers(tmp_path, b"pw")["director"].public_key.keyid
        )
    finally:
        _sign_pool._worker.clear()

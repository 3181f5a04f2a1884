"""Signing keys: generated once, private, never silently replaced."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from modelfleet.errors import ConfigError
from modelfleet.trust import ROLES, generate_keys, load_signers


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

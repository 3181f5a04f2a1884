"""OpenSSF model signing helpers (issue 10): key handling, the missing-extra message."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from modelfleet.cli._errors import ExitCode, failure_of
from modelfleet.errors import ArtefactVerificationError, ConfigError
from modelfleet.packaging.openssf_signing import (
    MODEL_FILE,
    SIGNING_PUBLIC_KEY_NAME,
    ensure_signing_key,
    read_signature,
    sign_model,
    verify_model,
)
from modelfleet.trust._key_files import is_encrypted


def test_signing_key_is_created_once_private_and_with_its_public_half(tmp_path: Path) -> None:
    key = ensure_signing_key(tmp_path / "keys")
    assert key.stat().st_mode & 0o077 == 0
    first = key.read_bytes()
    assert ensure_signing_key(tmp_path / "keys").read_bytes() == first
    assert b"PUBLIC KEY" in (tmp_path / "keys" / SIGNING_PUBLIC_KEY_NAME).read_bytes()


def test_an_ed25519_key_is_refused_model_signing_takes_ec_keys(tmp_path: Path) -> None:
    key = tmp_path / "model-signing.key"
    key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
    )
    key.chmod(0o600)
    with pytest.raises(ConfigError, match="not an EC key"):
        ensure_signing_key(tmp_path)


def test_a_signing_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    ensure_signing_key(tmp_path).chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        ensure_signing_key(tmp_path)


def test_an_encrypted_signing_key_signs_a_bundle_that_verifies(tmp_path: Path) -> None:
    pytest.importorskip("model_signing")
    key = ensure_signing_key(tmp_path / "keys", b"pw")
    assert is_encrypted(key.read_bytes()) and key.stat().st_mode & 0o777 == 0o600
    signature = sign_model(b"model bytes", key, "m", b"pw")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / MODEL_FILE).write_bytes(b"model bytes")
    (tmp_path / "model.sig").write_bytes(signature.bundle)
    verify_model(folder, tmp_path / "model.sig", key.with_name(SIGNING_PUBLIC_KEY_NAME))
    with pytest.raises(ConfigError, match=f"model signing with {key}"):
        sign_model(b"model bytes", key, "m", b"wrong")


def test_missing_signing_extra_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "model_signing", None)  # import fails as if absent
    with pytest.raises(ModuleNotFoundError) as info:
        sign_model(b"model", ensure_signing_key(tmp_path))
    failure = failure_of(info.value)
    assert failure is not None and failure.code == ExitCode.MISSING_EXTRA
    assert "pip install 'modelfleet[signing]'" in failure.message


def test_a_bundle_that_is_not_model_signing_is_refused() -> None:
    with pytest.raises(ArtefactVerificationError, match="not a model-signing bundle"):
        read_signature(b'{"mediaType": "something else"}')

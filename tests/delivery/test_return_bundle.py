"""The return-bundle format (issue 11): what is signed, what a reader refuses."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelfleet.agent.device_key import load_or_create_device_key, parse_public_key
from modelfleet.delivery.return_bundle import (
    FORMAT,
    SIGNING_PREFIX,
    Envelope,
    key_id,
    make_envelope,
    pack_bundle,
    unpack_bundle,
    verify_envelope,
)
from modelfleet.errors import InvalidInputError, TrustError

AT = datetime(2026, 3, 1, tzinfo=UTC)


def _payload() -> dict[str, object]:
    return {"device_id": "edge-1", "site": "s", "created_at": AT.isoformat(), "report": {"a": 1},
            "telemetry": {"buffer_id": "b", "evicted_total": 0,
                          "records": [{"seq": 2, "kind": "x"}, {"seq": 1, "kind": "x"}]},
            "future_field": [1, 2]}  # fmt: skip


def test_the_signature_covers_the_payload_bytes_and_unknown_fields_are_kept() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    env = make_envelope(_payload(), key.sign, public)
    key.public_key().verify(env.signature, SIGNING_PREFIX + env.payload)
    back = unpack_bundle(pack_bundle([env], "s", AT))
    assert back.envelopes == [env] and back.site == "s" and back.created_at == AT
    p = verify_envelope(back.envelopes[0], public)
    assert p.raw["format"] == FORMAT and p.raw["future_field"] == [1, 2]
    assert p.seq_range == (1, 2) and p.report == {"a": 1}


def test_the_same_document_compressed_again_is_the_same_bundle() -> None:
    key = Ed25519PrivateKey.generate()
    env = make_envelope(_payload(), key.sign, key.public_key().public_bytes_raw())
    a = unpack_bundle(pack_bundle([env], "s", AT, level=1))
    b = unpack_bundle(pack_bundle([env], "s", AT, level=19))
    assert a.digest == b.digest


def test_a_wrong_key_or_a_changed_byte_does_not_verify() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    env = make_envelope(_payload(), key.sign, public)
    with pytest.raises(TrustError, match="not the device's registered key"):
        verify_envelope(env, other.public_key().public_bytes_raw())
    changed = Envelope(env.payload.replace(b'"a":1', b'"a":2'), env.keyid, env.signature)
    with pytest.raises(TrustError, match="does not verify"):
        verify_envelope(changed, public)


def test_trailing_bytes_after_the_frame_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    env = make_envelope(_payload(), key.sign, key.public_key().public_bytes_raw())
    with pytest.raises(InvalidInputError, match="bytes after its zstd frame"):
        unpack_bundle(pack_bundle([env], "s", AT) + b"junk")


def test_the_device_key_is_made_once_and_its_public_half_parses(tmp_path: Path) -> None:
    key, created = load_or_create_device_key(tmp_path)
    again, created_again = load_or_create_device_key(tmp_path)
    assert created and not created_again and again.public_hex == key.public_hex
    assert (tmp_path / "device-key.pem").stat().st_mode & 0o777 == 0o600
    assert parse_public_key(key.public_pem) == key.public_bytes
    assert parse_public_key(key.public_hex) == key.public_bytes
    assert key.key_id == key_id(key.public_bytes) and "PRIVATE" not in repr(key)
    with pytest.raises(InvalidInputError):
        parse_public_key("abcd")

"""The return bundle, format ``modelfleet.return/v1`` (issue 11, ADR 0029): what a site with
no route to the hub sends back on removable media.

One file, zstd-compressed, holding one JSON document::

    {"format": "modelfleet.return/v1", "site": "...", "created_at": "<ISO 8601>",
     "envelopes": [{"payload": "<JSON text>", "keyid": "<hex>", "signature": "<hex>"}, ...]}

Each envelope is one device's, signed with that device's Ed25519 key
(:mod:`modelfleet.agent.device_key`) over the *original bytes* of its payload (the UTF-8 of
the ``payload`` string, after the domain prefix :data:`SIGNING_PREFIX`): nothing is
re-serialised before it is verified. The payload::

    {"format": "modelfleet.return/v1", "device_id": "...", "site": "...",
     "created_at": "<ISO 8601>", "report": {<the check-in report>} | null,
     "telemetry": {"buffer_id": "...", "first_seq": n, "last_seq": m, "evicted_total": k,
                   "records": [<wire-format v1 records, review samples included>]} | null}

``report`` is what the agent sends in its check-in (``state.json``); ``records`` are the
same records the forwarder would POST (``docs/telemetry-format.md``), so the hub's
exactly-once ingest applies unchanged. Unknown fields are kept (forward compatibility); a
newer major format (``modelfleet.return/v2``) is refused. Pure: no file or clock access here.
Documented in ``docs/return-bundle.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson
import zstandard

from modelfleet.errors import InvalidInputError, TrustError

__all__ = [
    "FORMAT",
    "MAX_BUNDLE_BYTES",
    "SIGNING_PREFIX",
    "DevicePayload",
    "Envelope",
    "ReturnBundle",
    "bundle_digest",
    "envelope_device",
    "key_id",
    "make_envelope",
    "pack_bundle",
    "parse_payload",
    "unpack_bundle",
    "verify_envelope",
]

#: The format name and major version this code writes and reads.
FORMAT: Final = "modelfleet.return/v1"
#: Signed bytes are this prefix plus the payload (no signature of another protocol fits).
SIGNING_PREFIX: Final = b"modelfleet.return/v1 envelope\n"
#: Largest decompressed bundle read by default (a zstd bomb stops here).
MAX_BUNDLE_BYTES: Final = 1024 * 1024 * 1024
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_MAX_NAME: Final = 128


def key_id(public_key: bytes) -> str:
    """A public key's id: SHA-256 of its 32 raw bytes, hex (pure)."""
    return hashlib.sha256(public_key).hexdigest()


@dataclass(frozen=True)
class Envelope:
    """One device's signed payload.

    Attributes:
        payload: the payload's original UTF-8 JSON bytes (what the signature covers).
        keyid: the signing key's id (:func:`key_id`).
        signature: the 64-byte Ed25519 signature of ``SIGNING_PREFIX + payload``.
    """

    payload: bytes
    keyid: str
    signature: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "payload": self.payload.decode("utf-8"),
            "keyid": self.keyid,
            "signature": self.signature.hex(),
        }


@dataclass(frozen=True)
class DevicePayload:
    """A verified envelope's content.

    Attributes:
        device_id, site: as the device's envelope names them.
        created_at: the site's clock when the envelope was made (the "as of" time).
        report: the check-in report, or None.
        buffer_id: the telemetry buffer's id ("" when no telemetry).
        records: wire-format v1 records, seq ascending (checked at ingest by
            :func:`modelfleet.telemetry.wire.parse_batch`).
        evicted_total: the buffer's evicted count.
        raw: the whole payload as parsed (unknown fields kept).
    """

    device_id: str
    site: str
    created_at: datetime
    report: dict[str, Any] | None
    buffer_id: str
    records: list[dict[str, Any]]
    evicted_total: int
    raw: dict[str, Any]

    @property
    def seq_range(self) -> tuple[int, int] | None:
        """(first, last) seq carried, None when no records."""
        if not self.records:
            return None
        return int(self.records[0]["seq"]), int(self.records[-1]["seq"])


@dataclass(frozen=True)
class ReturnBundle:
    """A return bundle file, unpacked (signatures not yet checked).

    Attributes:
        site: the site it says it comes from.
        created_at: when it was made (the site's clock).
        envelopes: one per device.
        digest: :func:`bundle_digest` of the decompressed document.
    """

    site: str
    created_at: datetime
    envelopes: list[Envelope]
    digest: str


def _time(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be an ISO 8601 time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as e:
        raise InvalidInputError(f"{what} is not an ISO 8601 time: {value[:64]!r}") from e
    if parsed.tzinfo is None:
        raise InvalidInputError(f"{what} needs a UTC offset: {value[:64]!r}")
    return parsed


def _check_format(value: Any, what: str) -> None:
    if value == FORMAT:
        return
    if isinstance(value, str) and value.startswith("modelfleet.return/"):
        raise InvalidInputError(f"{what} is {value[:64]!r}; this modelfleet reads {FORMAT}")
    raise InvalidInputError(f"{what} is not a return bundle ({FORMAT}): format {value!r:.80}")


def _name(value: Any, what: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > _MAX_NAME or "\x00" in value:
        raise InvalidInputError(f"{what} must be a string of at most {_MAX_NAME} characters")
    if not value and not empty:
        raise InvalidInputError(f"{what} must not be empty")
    return value


def make_envelope(
    payload: Mapping[str, Any], sign: Callable[[bytes], bytes], public_key: bytes
) -> Envelope:
    """Sign one device's payload (the device's side).

    Args:
        payload: the payload object (``format`` is set here).
        sign: the device key's Ed25519 signing function.
        public_key: its 32 raw public bytes (for the key id).
    """
    data = orjson.dumps({**payload, "format": FORMAT})
    return Envelope(data, key_id(public_key), sign(SIGNING_PREFIX + data))


def pack_bundle(
    envelopes: Sequence[Envelope], site: str, created_at: datetime, *, level: int = 10
) -> bytes:
    """The bundle file's bytes (zstd, one frame with its content size and checksum)."""
    doc = {
        "format": FORMAT,
        "site": site,
        "created_at": created_at.isoformat(),
        "envelopes": [e.to_json() for e in envelopes],
    }
    raw = orjson.dumps(doc)
    params = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    packed: bytes = params.compress(raw)
    return packed


def bundle_digest(document: bytes) -> str:
    """The bundle's identity: SHA-256 of its decompressed document, hex (a file compressed
    again at another level is the same bundle)."""
    return hashlib.sha256(document).hexdigest()


def _decompress(data: bytes, max_bytes: int) -> bytes:
    """One zstd frame, whole (its end and checksum seen), at most ``max_bytes`` out.

    The input is fed 1 KiB at a time, so a bomb overshoots the limit by at most ~32 MiB
    (zstd's largest ratio, RLE blocks) before it is refused.
    """
    if not data.startswith(_ZSTD_MAGIC):
        raise InvalidInputError(f"not a return bundle: the file is not zstd-compressed ({FORMAT})")
    try:
        declared = zstandard.get_frame_parameters(data).content_size
        if declared not in (zstandard.CONTENTSIZE_UNKNOWN, -1) and declared > max_bytes:
            raise InvalidInputError(
                f"the bundle decompresses to {declared} bytes, over the limit of {max_bytes}"
            )
        dobj = zstandard.ZstdDecompressor().decompressobj()
        out = bytearray()
        view = memoryview(data)
        for i in range(0, len(data), 1024):
            out += dobj.decompress(view[i : i + 1024])
            if len(out) > max_bytes:
                raise InvalidInputError(
                    f"the bundle decompresses to more than the limit of {max_bytes} bytes"
                )
            if dobj.eof:
                break
    except zstandard.ZstdError as e:
        raise InvalidInputError(f"the bundle is truncated or corrupt (zstd: {e})") from e
    if not dobj.eof:
        raise InvalidInputError("the bundle is truncated or corrupt (its zstd frame does not end)")
    if dobj.unused_data or i + 1024 < len(data):
        raise InvalidInputError("the bundle is corrupt: bytes after its zstd frame")
    return bytes(out)


def unpack_bundle(data: bytes, *, max_bytes: int = MAX_BUNDLE_BYTES) -> ReturnBundle:
    """Decompress and check a bundle's structure (not its signatures: see
    :func:`verify_envelope`).

    Raises:
        InvalidInputError: not zstd, truncated or corrupt, over ``max_bytes`` once
            decompressed, not JSON, another format or a newer version, or a malformed field.
    """
    document = _decompress(data, max_bytes)
    try:
        doc = orjson.loads(document)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(f"the bundle is corrupt: not JSON ({e})") from e
    if not isinstance(doc, dict):
        raise InvalidInputError("the bundle is corrupt: not a JSON object")
    _check_format(doc.get("format"), "the bundle's format")
    site = _name(doc.get("site", ""), "the bundle's site", empty=True)
    created_at = _time(doc.get("created_at"), "the bundle's created_at")
    items = doc.get("envelopes")
    if not isinstance(items, list):
        raise InvalidInputError("the bundle has no list of envelopes")
    envelopes: list[Envelope] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInputError(f"envelope {i} is not an object")
        payload, keyid, signature = item.get("payload"), item.get("keyid"), item.get("signature")
        if not isinstance(payload, str) or not isinstance(keyid, str):
            raise InvalidInputError(f"envelope {i} needs a payload and a keyid")
        try:
            sig = bytes.fromhex(signature) if isinstance(signature, str) else b""
        except ValueError:
            sig = b""
        if len(sig) != 64:
            raise InvalidInputError(f"envelope {i}: the signature is not 64 bytes of hex")
        envelopes.append(Envelope(payload.encode("utf-8"), keyid, sig))
    return ReturnBundle(site, created_at, envelopes, bundle_digest(document))


def envelope_device(envelope: Envelope) -> str:
    """The device id an envelope's payload names, read before its signature is checked
    (only to find the key to check it with).

    Raises:
        InvalidInputError: the payload is not JSON or names no device.
    """
    try:
        doc = orjson.loads(envelope.payload)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(f"an envelope's payload is not JSON ({e})") from e
    if not isinstance(doc, dict):
        raise InvalidInputError("an envelope's payload is not a JSON object")
    return _name(doc.get("device_id"), "an envelope's device_id")


def verify_envelope(envelope: Envelope, public_key: bytes) -> DevicePayload:
    """Check an envelope's signature with the device's registered key, then its payload.

    Raises:
        TrustError: the key id is not the registered key's, or the signature does not
            verify (the payload was changed, or signed with another key).
        InvalidInputError: the payload is malformed.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if envelope.keyid != key_id(public_key):
        raise TrustError(
            f"the envelope is signed with key {envelope.keyid[:16]!r}…, not the device's "
            f"registered key {key_id(public_key)[:16]!r}…"
        )
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            envelope.signature, SIGNING_PREFIX + envelope.payload
        )
    except (InvalidSignature, ValueError) as e:
        raise TrustError(
            "the envelope's signature does not verify with the device's registered key "
            "(tampered, or signed by another key)"
        ) from e
    return parse_payload(envelope.payload)


def parse_payload(payload: bytes) -> DevicePayload:
    """An envelope's payload, checked for shape (pure; records are checked at ingest).

    Raises:
        InvalidInputError: not JSON, another format, or a malformed field.
    """
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(f"the payload is not JSON ({e})") from e
    if not isinstance(doc, dict):
        raise InvalidInputError("the payload is not a JSON object")
    _check_format(doc.get("format"), "the payload's format")
    device_id = _name(doc.get("device_id"), "device_id")
    site = _name(doc.get("site", ""), "site", empty=True)
    created_at = _time(doc.get("created_at"), "created_at")
    report = doc.get("report")
    if report is not None and not isinstance(report, dict):
        raise InvalidInputError("the report must be a JSON object or null")
    telemetry = doc.get("telemetry")
    buffer_id, records, evicted = "", list[dict[str, Any]](), 0
    if telemetry is not None:
        if not isinstance(telemetry, dict):
            raise InvalidInputError("telemetry must be a JSON object or null")
        given = telemetry.get("records")
        if not isinstance(given, list) or not all(isinstance(r, dict) for r in given):
            raise InvalidInputError("telemetry.records must be a list of objects")
        records = given
        if records:
            buffer_id = _name(telemetry.get("buffer_id"), "telemetry.buffer_id")
        evicted = telemetry.get("evicted_total", 0)
        if type(evicted) is not int or evicted < 0:
            raise InvalidInputError("telemetry.evicted_total must be a non-negative integer")
        for r in records:
            if type(r.get("seq")) is not int:
                raise InvalidInputError("every telemetry record needs an integer seq")
        records = sorted(records, key=lambda r: int(r["seq"]))
    return DevicePayload(device_id, site, created_at, report, buffer_id, records, evicted, doc)

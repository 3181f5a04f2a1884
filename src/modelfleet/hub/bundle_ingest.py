"""The hub's end of the return channel (issue 11, ADR 0029): device keys, and ingest of
return bundles (:mod:`modelfleet.delivery.return_bundle`) carried from sites with no route.

* **Device keys.** :class:`DeviceKeys` holds each device's Ed25519 public key, learnt over
  an authenticated channel only: the device's own token (``PUT /api/v1/devices/{id}/key``;
  its first key, or the same key again) or an admin (``modelfleet device key``; may replace
  one). A key that arrives inside a bundle proves nothing and is never taken from there.
* **Check everything, then store.** :meth:`ReturnIngest.ingest` decompresses the bundle,
  verifies every envelope's signature against its device's registered key and checks every
  telemetry record (:func:`~modelfleet.telemetry.wire.parse_batch`) before anything is
  written: an unknown device, a device with no key, a tampered or re-signed envelope, a
  malformed record or a wrong format refuses the whole bundle, and nothing is stored.
* **Exactly once.** Telemetry goes through the hub's own ingest
  (:meth:`~modelfleet.hub.telemetry.Telemetry.ingest`): each record once per
  ``(device_id, buffer_id, seq)``, review samples once per ``sample_id``. The bundle's digest
  is recorded last (``return_bundles``): the same file again changes nothing and says so;
  a crash before that record leaves a re-ingest that only finds duplicates.
* **As of the bundle's time.** A version report is recorded with the envelope's
  ``created_at`` (capped at the hub's now) as the device's ``last_seen`` — unless the hub
  already has a newer one (an online check-in, or a later bundle): then the report is kept
  out, so a device's state never goes backwards. Rollbacks it carries apply at most once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson
from sqlalchemy import delete, select

from modelfleet.delivery.return_bundle import (
    MAX_BUNDLE_BYTES,
    DevicePayload,
    ReturnBundle,
    envelope_device,
    key_id,
    unpack_bundle,
    verify_envelope,
)
from modelfleet.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    TrustError,
)
from modelfleet.hub import db
from modelfleet.hub._reports import report_changes, served_versions
from modelfleet.hub._values import JSONDict, _iso
from modelfleet.hub.context import HubContext
from modelfleet.hub.deployments import parse_rollback_events
from modelfleet.telemetry.wire import FORMAT_VERSION, MAX_RECORDS_PER_BATCH, parse_batch

__all__ = ["DeviceKeys", "ReturnIngest"]

log = logging.getLogger("modelfleet.hub")

#: Records of one device go to telemetry ingest in batches of about this many bytes.
_BATCH_BYTES: Final = 2 * 1024 * 1024


class DeviceKeys:
    """Devices' Ed25519 public keys (table ``device_keys``).

    Args:
        ctx: the hub's sessions, clock and audit log.
    """

    def __init__(self, ctx: HubContext) -> None:
        self._ctx = ctx

    def register(
        self, device_id: str, public_key: bytes, actor: str, *, replace: bool = False
    ) -> JSONDict:
        """Store ``device_id``'s public key (audited as ``device.key``).

        Args:
            public_key: the 32 raw bytes.
            actor: who sends it (``device:<id>`` or an admin).
            replace: an admin's replacement of a different key already registered.

        Returns:
            ``{"device_id", "keyid", "status": "registered" | "unchanged" | "replaced"}``.

        Raises:
            InvalidInputError: not 32 bytes.
            NotFoundError: no such device.
            ConflictError: the device has another key and ``replace`` is false.
        """
        if len(public_key) != 32:
            raise InvalidInputError("an Ed25519 public key is 32 bytes")
        kid = key_id(public_key)
        with self._ctx.write() as s:
            if s.get(db.Device, device_id) is None:
                raise NotFoundError(f"no device {device_id!r}")
            row = s.get(db.DeviceKey, device_id)
            if row is not None and row.public_key == public_key.hex():
                return {"device_id": device_id, "keyid": kid, "status": "unchanged"}
            if row is not None and not replace:
                raise ConflictError(
                    f"device {device_id!r} already has key {row.keyid[:16]}…; an admin "
                    "replaces it (`modelfleet device key --replace`)"
                )
            status = "registered" if row is None else "replaced"
            if row is None:
                row = db.DeviceKey(device_id=device_id)
                s.add(row)
            old = row.keyid if status == "replaced" else None
            row.public_key, row.keyid = public_key.hex(), kid
            row.added_at, row.added_by = self._ctx.now(), actor
            self._ctx.audit(
                s, actor, "device.key", device_id, {"keyid": kid, "replaced": old, "status": status}
            )
        log.info("device %s: key %s %s by %s", device_id, kid[:16], status, actor)
        return {"device_id": device_id, "keyid": kid, "status": status}

    def get(self, device_id: str) -> JSONDict:
        """``{"device_id", "keyid", "public_key" (hex), "added_at", "added_by"}``.

        Raises:
            NotFoundError: no such device, or no key for it.
        """
        with self._ctx.read() as s:
            if s.get(db.Device, device_id) is None:
                raise NotFoundError(f"no device {device_id!r}")
            row = s.get(db.DeviceKey, device_id)
            if row is None:
                raise NotFoundError(f"device {device_id!r} has no registered key")
            return {
                "device_id": device_id,
                "keyid": row.keyid,
                "public_key": row.public_key,
                "added_at": _iso(row.added_at),
                "added_by": row.added_by,
            }


@dataclass(frozen=True)
class _Checked:
    """One envelope verified, with its device's enrolled site."""

    payload: DevicePayload
    site: str


class ReturnIngest:
    """Ingest of return bundles.

    Args:
        service: the hub (``HubService``: its context, telemetry, fleet, deployments and
            director are used).
    """

    def __init__(self, service: Any) -> None:
        self._service = service
        self._ctx: HubContext = service.context

    def ingest(self, data: bytes, actor: str, *, max_bytes: int = MAX_BUNDLE_BYTES) -> JSONDict:
        """Verify a whole bundle, then store it exactly once.

        Returns:
            ``{"status": "ingested" | "already_ingested", "digest", "site", "created_at",
            "devices": [{"device_id", "as_of", "stored", "duplicates", "review_samples",
            "report": "recorded" | "older" | "none"}], ...}``; for a bundle already ingested,
            the first ingest's summary and ``ingested_at``, and nothing is written.

        Raises:
            InvalidInputError: not a return bundle, truncated, corrupt, too large, a newer
                format, a device twice, a site that is not the device's, a malformed
                record; nothing stored.
            NotFoundError: an envelope of a device the hub does not know; nothing stored.
            TrustError: a device with no registered key, or an envelope whose signature does
                not verify with it (tampered, or signed with another key); nothing stored.
            StorageError: the database failed (a re-ingest finds what was stored).
        """
        bundle = unpack_bundle(data, max_bytes=max_bytes)
        earlier = self._earlier(bundle.digest)
        if earlier is not None:
            log.info("return bundle %s ingested before: nothing to do", bundle.digest[:16])
            return earlier
        checked = self._verify(bundle)
        batches = {c.payload.device_id: list(self._batches(c.payload)) for c in checked}
        self._service.fleet.flush_seen()  # last_seen of recent check-ins, for the comparison
        devices: list[JSONDict] = []
        changed = False
        for c in checked:
            p = c.payload
            stored = duplicates = 0
            for body in batches[p.device_id]:
                answer = self._service.telemetry.ingest(p.device_id, body)
                stored += int(answer["stored"])
                duplicates += int(answer["duplicates"])
            report, as_of, moved = self._record_report(p, bundle.digest, actor)
            changed = changed or moved
            devices.append(
                {
                    "device_id": p.device_id,
                    "as_of": _iso(as_of),
                    "records": len(p.records),
                    "stored": stored,
                    "duplicates": duplicates,
                    "review_samples": sum(1 for r in p.records if r.get("kind") == "review_sample"),
                    "seq_range": list(p.seq_range) if p.seq_range else None,
                    "report": report,
                }
            )
        if changed:
            self._service.director.publish()
        summary: JSONDict = {
            "digest": bundle.digest,
            "site": bundle.site,
            "created_at": _iso(bundle.created_at),
            "devices": devices,
            "stored": sum(d["stored"] for d in devices),
            "duplicates": sum(d["duplicates"] for d in devices),
        }
        now = self._ctx.now()
        try:
            with self._ctx.write() as s:
                s.add(
                    db.ReturnBundle(
                        digest=bundle.digest,
                        site=bundle.site,
                        created_at=bundle.created_at,
                        ingested_at=now,
                        ingested_by=actor,
                        summary=summary,
                    )
                )
                self._ctx.audit(
                    s,
                    actor,
                    "bundle.ingest",
                    bundle.site or "-",
                    {k: summary[k] for k in ("digest", "created_at", "stored", "duplicates")},
                )
        except ConflictError:  # a concurrent ingest of the same file recorded it first
            again = self._earlier(bundle.digest)
            if again is not None:
                return again
            raise
        log.info(
            "return bundle %s from site %r: %d devices, %d records stored, %d duplicates",
            bundle.digest[:16],
            bundle.site,
            len(devices),
            summary["stored"],
            summary["duplicates"],
        )
        return {"status": "ingested", **summary, "ingested_at": _iso(now)}

    def ingested(self, limit: int = 100) -> list[JSONDict]:
        """The bundles ingested, newest first."""
        r = db.ReturnBundle
        with self._ctx.read() as s:
            rows = s.scalars(select(r).order_by(r.ingested_at.desc()).limit(limit)).all()
            return [
                {**dict(row.summary), "ingested_at": _iso(row.ingested_at), "by": row.ingested_by}
                for row in rows
            ]

    # -- internals -----------------------------------------------------------------------

    def _earlier(self, digest: str) -> JSONDict | None:
        with self._ctx.read() as s:
            row = s.get(db.ReturnBundle, digest)
            if row is None:
                return None
            return {
                "status": "already_ingested",
                **dict(row.summary),
                "ingested_at": _iso(row.ingested_at),
            }

    def _verify(self, bundle: ReturnBundle) -> list[_Checked]:
        """Every envelope's signature and payload, before anything is stored."""
        if not bundle.envelopes:
            raise InvalidInputError("the bundle carries no envelope")
        seen: set[str] = set()
        out: list[_Checked] = []
        with self._ctx.read() as s:
            for i, envelope in enumerate(bundle.envelopes):
                device_id = envelope_device(envelope)
                if device_id in seen:
                    raise InvalidInputError(f"device {device_id!r} has two envelopes")
                seen.add(device_id)
                device = s.get(db.Device, device_id)
                if device is None:
                    raise NotFoundError(
                        f"envelope {i}: no device {device_id!r} at this hub (unknown device)"
                    )
                key = s.get(db.DeviceKey, device_id)
                if key is None:
                    raise TrustError(
                        f"envelope {i}: device {device_id!r} has no registered key; register "
                        "it first (`modelfleet device key`)"
                    )
                try:
                    payload = verify_envelope(envelope, bytes.fromhex(key.public_key))
                except TrustError as e:
                    raise TrustError(f"envelope {i} (device {device_id!r}): {e}") from e
                if payload.device_id != device_id:  # pragma: no cover - same bytes parsed
                    raise InvalidInputError(f"envelope {i} names two devices")
                for site in (payload.site, bundle.site):
                    if site and site != device.site:
                        raise InvalidInputError(
                            f"envelope {i}: device {device_id!r} is enrolled at site "
                            f"{device.site!r}, the bundle says {site!r}"
                        )
                out.append(_Checked(payload, device.site))
        return out

    def _batches(self, p: DevicePayload) -> Iterator[bytes]:
        """The device's records as wire-format batches, each checked now (so a malformed
        record refuses the bundle before anything is stored)."""
        limit = min(_BATCH_BYTES, self._ctx.config.max_telemetry_bytes // 2)
        sent_at = self._ctx.now().isoformat()  # media-carried: no clock skew to measure
        chunk: list[dict[str, Any]] = []
        size = 0
        for record in p.records:
            encoded = len(orjson.dumps(record))
            if chunk and (size + encoded > limit or len(chunk) >= MAX_RECORDS_PER_BATCH):
                yield self._batch(p, chunk, sent_at)
                chunk, size = [], 0
            chunk.append(record)
            size += encoded
        if chunk:
            yield self._batch(p, chunk, sent_at)

    @staticmethod
    def _batch(p: DevicePayload, records: Sequence[Mapping[str, Any]], sent_at: str) -> bytes:
        doc = {
            "format": FORMAT_VERSION,
            "device_id": p.device_id,
            "buffer_id": p.buffer_id,
            "sent_at": sent_at,
            "records": list(records),
            "buffered": len(p.records),  # still on the device until forwarded online
            "evicted_total": p.evicted_total,
        }
        try:
            parse_batch(doc, p.device_id)
        except InvalidInputError as e:
            raise InvalidInputError(f"device {p.device_id!r}: {e}") from e
        return orjson.dumps(doc)

    def _record_report(
        self, p: DevicePayload, digest: str, actor: str
    ) -> tuple[str, datetime, bool]:
        """Record ``p``'s report as of its time unless the hub has a newer one.

        Returns:
            ("recorded" | "older" | "none", the as-of time, whether assignments changed).
        """
        now = self._ctx.now()
        as_of = min(p.created_at, now)
        if p.report is None:
            return "none", as_of, False
        report = p.report
        with self._ctx.write() as s:
            device = s.get(db.Device, p.device_id)
            if device is None:  # removed since the check
                raise NotFoundError(f"no device {p.device_id!r}")
            events = parse_rollback_events(report.get("rollbacks"))
            _, changed = self._service.deployments.apply_device_rollbacks(
                s, p.device_id, events, as_of
            )
            if device.last_seen is not None and device.last_seen >= as_of:
                return "older", as_of, changed
            changes = report_changes(device.reported or {}, report)
            device.reported = dict(report)
            device.last_seen = as_of
            s.add(db.DeviceReport(device_id=p.device_id, received_at=as_of, report=report))
            if "running" in changes:
                s.execute(delete(db.DeviceServing).where(db.DeviceServing.device_id == p.device_id))
                s.add_all(
                    db.DeviceServing(device_id=p.device_id, model=m, slot=slot, version=v)
                    for m, slot, v in served_versions(report)
                )
            self._ctx.audit(
                s,
                actor,
                "device.report",
                p.device_id,
                {**changes, "via": "return-bundle", "bundle": digest, "as_of": _iso(as_of)},
            )
        return "recorded", as_of, changed

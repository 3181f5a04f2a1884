"""The hub's operations: enrol devices, register versions, deploy, roll back, audit.

No HTTP in here: :mod:`modelfleet.hub.app` is a thin adapter over :class:`HubService`.
Every state change commits together with its audit entry in one database transaction;
changes to the signed TUF metadata happen inside that transaction, so a failure to sign
rolls the database back too.

Return values are JSON-ready dicts (the same shapes the REST API serves):

* version: ``{"model", "version", "sha256", "length", "manifest_sha256",
  "manifest_length", "opset", "ir_version", "schema", "lineage", "smoke_vectors",
  "created_at", "created_by", "published", "revoked", "model_path", "manifest_path",
  "deployments": [{"device_id", "role": "production"|"candidate", "mode", "share",
  "rollout_id"}]}``
* model: ``{"name", "description", "created_at", "created_by", "latest_version",
  "versions": [version]}``
* device: ``{"id", "site", "tags", "created_at", "last_seen", "report",
  "assignments": [{"model", "production", "candidate", "previous", "mode", "share",
  "slo", "rollout_id"}], "desired_state": {"serial", "sha256", "length", "issued_at"}
  | None}``
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from modelfleet._atomic import atomic_write_bytes, atomic_write_text
from modelfleet.audit.log import append_entry, list_entries, verify_chain
from modelfleet.catalog.artefacts import FileArtefactStore, is_sha256
from modelfleet.clock import Clock, SystemClock
from modelfleet.errors import (
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    StorageError,
    UnauthenticatedError,
)
from modelfleet.hub import db
from modelfleet.hub.auth import Principal, Role, hash_token, new_token, parse_role
from modelfleet.hub.config import HubConfig, HubHome, render_config_toml
from modelfleet.packaging.build import build_manifest
from modelfleet.rollout.desired_state import (
    ArtefactRef,
    DesiredState,
    Mode,
    manifest_target_path,
    model_target_path,
)
from modelfleet.rollout.desired_state import Assignment as DesiredAssignment
from modelfleet.trust.keys import generate_keys
from modelfleet.trust.repository import HubTrust

__all__ = ["ALL_DEVICES", "HubService", "init_home", "load_npy", "report_changes"]

ALL_DEVICES: Literal["all"] = "all"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
JSONDict = dict[str, Any]
_PG_WRITE_LOCK = 0x6D66_6875_6277  # any constant shared by every hub replica


def _check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidInputError(
            f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' (max 128)"
        )
    return value


def _iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat() if at is not None else None


def load_npy(data: bytes) -> np.ndarray:
    """Parse ``.npy`` bytes (no pickles).

    Raises:
        InvalidInputError: not a valid ``.npy`` array of numbers or strings.
    """
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InvalidInputError(f"the sample input is not a valid .npy array: {e}") from e
    if not isinstance(array, np.ndarray):
        raise InvalidInputError("the sample input must be a single .npy array")
    return array


def init_home(home: Path, clock: Clock | None = None, database_url: str | None = None) -> str:
    """Create a hub home: folders, config, database, keys, TUF repositories, admin token.

    Args:
        home: the folder to initialise (created if missing; may exist empty).
        clock: time source for the initial metadata (the system clock if None).
        database_url: SQLAlchemy URL; SQLite in ``home`` if None.

    Returns:
        The admin token (also written to ``home/admin.token``, mode 0600).

    Raises:
        ConfigError: ``home`` is already (or partly) initialised, or not usable.
        StorageError: the database or a file could not be written.
    """
    clock = clock or SystemClock()
    paths = HubHome(Path(home))
    leftovers = [
        p.name
        for p in (paths.config_file, paths.keys, paths.tuf, paths.admin_token, paths.trust_root)
        if p.exists()
    ]
    if leftovers:
        raise ConfigError(
            f"{paths.root} is already initialised (found {', '.join(leftovers)}); "
            "use another folder or remove it first"
        )
    try:
        paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths.artefacts.mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {paths.root}: {e.strerror or e}") from e
    config = HubConfig(home=paths.root, database_url=database_url or "")
    db.migrate(config.database_url)
    generate_keys(paths.keys)
    trust = HubTrust.init(paths.tuf, paths.keys, clock)
    atomic_write_bytes(paths.trust_root, trust.trust_root_bundle(), mode=0o644)
    # The config file goes last: it marks the home as complete.
    atomic_write_text(paths.config_file, render_config_toml(config), mode=0o600)
    service = HubService(config, clock, migrate_db=False)
    try:
        token = service.create_token(Role.ADMIN, "admin", actor="system:init")
    finally:
        service.close()
    atomic_write_text(paths.admin_token, token + "\n", mode=0o600)
    return token


class HubService:
    """The hub's operations over its database, artefact store and TUF repositories.

    Args:
        config: the hub config; its home must be initialised (see :func:`init_home`).
        clock: time source for records and signatures.
        migrate_db: bring the database schema up to date first.

    Raises:
        ConfigError: the home is not initialised or its keys/metadata are unusable.
        StorageError: the database cannot be reached or migrated.
    """

    def __init__(self, config: HubConfig, clock: Clock, *, migrate_db: bool = True) -> None:
        paths = config.paths
        if not paths.is_initialised():
            raise ConfigError(
                f"{paths.root} is not an initialised hub home; run `modelfleet init HOME`"
            )
        self.config = config
        self.clock = clock
        self.paths = paths
        self.engine = db.make_engine(config.database_url)
        if migrate_db:
            db.migrate(self.engine)
        self._sessions = db.make_sessionmaker(self.engine)
        self.store = FileArtefactStore(paths.artefacts)
        self.trust = HubTrust.open(paths.tuf, paths.keys, clock)
        # One writer at a time in this process: SQLite has one writer anyway, and the
        # audit chain and desired-state serials are read-modify-write.
        self._write_lock = threading.RLock()

    init_home = staticmethod(init_home)

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()

    # -- sessions ------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._write_lock:
            try:
                with self._sessions.begin() as session:
                    if session.get_bind().dialect.name == "postgresql":
                        # Hub replicas sharing one PostgreSQL take turns at writing, so
                        # version numbers, serials and the audit chain stay linear.
                        session.execute(
                            text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_WRITE_LOCK}
                        )
                    yield session
            except IntegrityError as e:
                raise ConflictError(f"the change clashes with a concurrent one: {e.orig}") from e
            except SQLAlchemyError as e:
                raise StorageError(f"database error: {e}") from e

    @contextmanager
    def _read(self) -> Iterator[Session]:
        try:
            with self._sessions() as session:
                yield session
        except SQLAlchemyError as e:
            raise StorageError(f"database error: {e}") from e

    def _audit(
        self,
        session: Session,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any] | None = None,
        ticket: str | None = None,
    ) -> None:
        append_entry(session, self.clock.now(), actor, action, subject, details, ticket)

    # -- tokens --------------------------------------------------------------------------

    def create_token(self, role: Role | str, subject: str, actor: str) -> str:
        """Mint a token; only its hash is stored.

        Args:
            role: the token's role.
            subject: who holds it (a user name, or the device id for ``device``).
            actor: who asks (for the audit log).

        Returns:
            The token; it cannot be recovered later.

        Raises:
            InvalidInputError: unknown role or empty subject.
            NotFoundError: a device token for an unknown device.
        """
        role = parse_role(str(role))
        if not subject or len(subject) > 256:
            raise InvalidInputError("a token needs a subject of 1 to 256 characters")
        token = new_token()
        with self._write() as s:
            if role is Role.DEVICE and s.get(db.Device, subject) is None:
                raise NotFoundError(f"no device {subject!r}")
            self._add_token(s, token, role, subject, actor)
            self._audit(s, actor, "token.create", subject, {"role": role.value})
        return token

    def _add_token(self, s: Session, token: str, role: Role, subject: str, actor: str) -> None:
        s.add(
            db.Token(
                token_sha256=hash_token(token),
                role=role.value,
                subject=subject,
                created_at=self.clock.now(),
                created_by=actor,
                revoked=False,
            )
        )

    def authenticate(self, token: str | None) -> Principal:
        """Who holds ``token``.

        Raises:
            UnauthenticatedError: no token, or not a valid, unrevoked one.
        """
        if not token:
            raise UnauthenticatedError("a bearer token is required")
        with self._read() as s:
            row = s.scalars(
                select(db.Token).where(db.Token.token_sha256 == hash_token(token))
            ).first()
        if row is None or row.revoked:
            raise UnauthenticatedError("the token is not valid")
        return Principal(Role(row.role), row.subject)

    # -- devices -------------------------------------------------------------------------

    def add_device(
        self,
        device_id: str,
        site: str | None = "",
        tags: Sequence[str] | None = None,
        actor: str = "system",
        ticket: str | None = None,
    ) -> tuple[JSONDict, str]:
        """Enrol a device and mint its token.

        Returns:
            ``(device, token)``; the token is shown only this once.

        Raises:
            InvalidInputError: a malformed id, site or tags.
            ConflictError: the id is taken.
        """
        _check_name("device id", device_id)
        site = site or ""
        if not isinstance(site, str) or len(site) > 128:
            raise InvalidInputError("site must be a string of at most 128 characters")
        if isinstance(tags, str) or not all(isinstance(t, str) and t for t in tags or ()):
            raise InvalidInputError("tags must be a list of non-empty strings")
        tag_list = sorted(set(tags or ()))
        token = new_token()
        with self._write() as s:
            if s.get(db.Device, device_id) is not None:
                raise ConflictError(f"device {device_id!r} already exists")
            s.add(
                db.Device(
                    id=device_id,
                    site=site,
                    tags=tag_list,
                    created_at=self.clock.now(),
                    last_seen=None,
                    reported=None,
                )
            )
            s.flush()
            self._add_token(s, token, Role.DEVICE, device_id, actor)
            self._audit(s, actor, "device.add", device_id, {"site": site, "tags": tag_list}, ticket)
        return self.get_device(device_id), token

    def list_devices(self) -> list[JSONDict]:
        """Every device with its assignments, desired state and last report."""
        with self._read() as s:
            return [
                self._device_view(s, d) for d in s.scalars(select(db.Device).order_by(db.Device.id))
            ]

    def get_device(self, device_id: str) -> JSONDict:
        """One device (see :meth:`list_devices`).

        Raises:
            NotFoundError: no such device.
        """
        with self._read() as s:
            return self._device_view(s, self._device_row(s, device_id))

    def _device_row(self, s: Session, device_id: str) -> db.Device:
        row = s.get(db.Device, device_id)
        if row is None:
            raise NotFoundError(f"no device {device_id!r}")
        return row

    def _device_view(self, s: Session, d: db.Device) -> JSONDict:
        assignments = s.scalars(
            select(db.Assignment)
            .where(db.Assignment.device_id == d.id)
            .order_by(db.Assignment.model)
        )
        state = s.get(db.DeviceState, d.id)
        return {
            "id": d.id,
            "site": d.site,
            "tags": list(d.tags),
            "created_at": _iso(d.created_at),
            "last_seen": _iso(d.last_seen),
            "report": d.reported,
            "assignments": [
                {
                    "model": a.model,
                    "production": a.production_version,
                    "candidate": a.candidate_version,
                    "previous": a.previous_version,
                    "mode": a.mode,
                    "share": a.share,
                    "slo": dict(a.slo),
                    "rollout_id": a.rollout_id,
                }
                for a in assignments
            ],
            "desired_state": None
            if state is None
            else {
                "serial": state.serial,
                "sha256": state.sha256,
                "length": state.length,
                "issued_at": _iso(state.issued_at),
            },
        }

    def record_report(self, device_id: str, report: Mapping[str, Any]) -> None:
        """Store a device's check-in report.

        The report is kept as sent (the agent sends its state: ``applied_serial``,
        ``models`` ``{name: {"active"|"previous"|"candidate": {"version", ...} | None,
        "mode", "share"}}``, ``last_refusal``, ``events``, ...). What the hub reads of
        it (see :func:`report_changes`) goes to the audit log when it changed: what the
        device runs, the serial it applied, a new refusal, and new events.

        Raises:
            NotFoundError: no such device.
            InvalidInputError: the report is not a JSON object.
            PayloadTooLargeError: the report exceeds ``max_report_bytes``.
        """
        if not isinstance(report, Mapping):
            raise InvalidInputError("a device report must be a JSON object")
        try:
            raw = orjson.dumps(dict(report))
        except TypeError as e:
            raise InvalidInputError(f"the report is not JSON-able: {e}") from e
        if len(raw) > self.config.max_report_bytes:
            raise PayloadTooLargeError(
                f"the report exceeds the limit of {self.config.max_report_bytes} bytes"
            )
        data: JSONDict = orjson.loads(raw)
        now = self.clock.now()
        with self._write() as s:
            device = self._device_row(s, device_id)
            changes = report_changes(device.reported or {}, data)
            device.reported = data
            device.last_seen = now
            s.add(db.DeviceReport(device_id=device_id, received_at=now, report=data))
            if changes:
                self._audit(s, f"device:{device_id}", "device.report", device_id, changes)

    # -- blobs and versions --------------------------------------------------------------

    def put_blob(self, chunks: Iterable[bytes], actor: str) -> tuple[str, int]:
        """Stream a blob into the artefact store.

        Returns:
            ``(sha256, length)``.

        Raises:
            PayloadTooLargeError: more than ``max_upload_bytes``; nothing is kept.
            StorageError: the store is not writable.
        """
        limit = self.config.max_upload_bytes

        def bounded() -> Iterator[bytes]:
            total = 0
            for chunk in chunks:
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLargeError(f"the upload exceeds the limit of {limit} bytes")
                yield chunk

        digest, length = self.store.put_stream(bounded())
        with self._write() as s:
            self._audit(s, actor, "blob.upload", digest, {"length": length})
        return digest, length

    def _blob(self, digest: str, what: str) -> bytes:
        if not isinstance(digest, str) or not is_sha256(digest):
            raise InvalidInputError(f"{what} must be a sha256 hex digest, got {digest!r}")
        try:
            return self.store.read(digest)
        except NotFoundError as e:
            raise InvalidInputError(f"{what} {digest} was not uploaded; POST it to /blobs") from e

    def register_version(
        self,
        name: str,
        model: bytes | str,
        sample_input: np.ndarray | str | None = None,
        *,
        actor: str,
        lineage: Mapping[str, Any] | None = None,
        ticket: str | None = None,
    ) -> JSONDict:
        """Register the next immutable version of ``name`` (creating the model if new).

        The model is checked (ONNX, loadable by ONNX Runtime, tensor signature) and
        smoke vectors are recorded before anything is stored.

        Args:
            name: model name.
            model: ONNX bytes, or the sha256 of an uploaded blob.
            sample_input: rows to record smoke vectors from (array, or the sha256 of an
                uploaded ``.npy`` blob); generated from the schema if None.
            actor: who registers (for the audit log).
            lineage: free-form provenance (dataset digest, run id, commit...).
            ticket: change ticket.

        Returns:
            The version (see the module docstring).

        Raises:
            InvalidModelError: not ONNX or not loadable; no version is created.
            InvalidInputError: a bad name, blob digest or sample input.
            SmokeTestError: the model does not reproduce its own outputs.
        """
        _check_name("model name", name)
        data = self._blob(model, "model blob") if isinstance(model, str) else bytes(model)
        sample = (
            load_npy(self._blob(sample_input, "sample input blob"))
            if isinstance(sample_input, str)
            else sample_input
        )
        lineage_dict = dict(lineage or {})
        try:
            orjson.dumps(lineage_dict)
        except TypeError as e:
            raise InvalidInputError(f"lineage must be JSON-able: {e}") from e
        now = self.clock.now()
        draft = build_manifest(name, 1, data, sample, lineage_dict, created_at=now)
        with self._write() as s:
            model_row = s.scalars(select(db.Model).where(db.Model.name == name)).first()
            if model_row is None:
                model_row = db.Model(name=name, description="", created_at=now, created_by=actor)
                s.add(model_row)
                s.flush()
                self._audit(s, actor, "model.create", name, None, ticket)
            latest = s.scalar(
                select(func.max(db.ModelVersion.version)).where(
                    db.ModelVersion.model_id == model_row.id
                )
            )
            version = (latest or 0) + 1
            manifest = dataclasses.replace(draft, version=version)
            manifest_bytes = manifest.to_json()
            model_digest = self.store.put_bytes(data)
            manifest_digest = self.store.put_bytes(manifest_bytes)
            s.add(
                db.ModelVersion(
                    model_id=model_row.id,
                    version=version,
                    sha256=model_digest,
                    length=len(data),
                    manifest_sha256=manifest_digest,
                    manifest_length=len(manifest_bytes),
                    opset=manifest.opset,
                    ir_version=manifest.ir_version,
                    schema=manifest.schema.to_dict(),
                    lineage=manifest.lineage,
                    smoke_vectors=len(manifest.smoke),
                    created_at=now,
                    created_by=actor,
                    published=False,
                    revoked=False,
                )
            )
            self._audit(
                s,
                actor,
                "model.register",
                f"{name}/{version}",
                {
                    "sha256": model_digest,
                    "length": len(data),
                    "manifest_sha256": manifest_digest,
                    "opset": manifest.opset,
                    "smoke_vectors": len(manifest.smoke),
                },
                ticket,
            )
        return self.get_version(name, version)

    def revoke_version(
        self, name: str, version: int, actor: str, ticket: str | None = None
    ) -> JSONDict:
        """Remove a version from the signed catalog; devices refuse it from then on.

        Devices that run it keep their assignment until redeployed or rolled back.

        Raises:
            NotFoundError: no such version.
        """
        with self._write() as s:
            row = self._version_row(s, name, version)
            self.trust.revoke_package(name, version)
            row.revoked = True
            users = self._deployments_of(s, name, version)
            self._audit(
                s,
                actor,
                "model.revoke",
                f"{name}/{version}",
                {"still_assigned": sorted({d["device_id"] for d in users})},
                ticket,
            )
        return self.get_version(name, version)

    def _model_row(self, s: Session, name: str) -> db.Model:
        row = s.scalars(select(db.Model).where(db.Model.name == name)).first()
        if row is None:
            raise NotFoundError(f"no model {name!r}")
        return row

    def _version_row(self, s: Session, name: str, version: int) -> db.ModelVersion:
        model = self._model_row(s, name)
        row = s.scalars(
            select(db.ModelVersion).where(
                db.ModelVersion.model_id == model.id, db.ModelVersion.version == version
            )
        ).first()
        if row is None:
            raise NotFoundError(f"model {name!r} has no version {version}")
        return row

    @staticmethod
    def _version_summary(name: str, v: db.ModelVersion) -> JSONDict:
        return {
            "model": name,
            "version": v.version,
            "sha256": v.sha256,
            "length": v.length,
            "manifest_sha256": v.manifest_sha256,
            "manifest_length": v.manifest_length,
            "opset": v.opset,
            "ir_version": v.ir_version,
            "schema": v.schema,
            "lineage": v.lineage,
            "smoke_vectors": v.smoke_vectors,
            "created_at": _iso(v.created_at),
            "created_by": v.created_by,
            "published": v.published,
            "revoked": v.revoked,
            "model_path": model_target_path(name, v.version),
            "manifest_path": manifest_target_path(name, v.version),
        }

    def _deployments_of(self, s: Session, name: str, version: int) -> list[JSONDict]:
        rows = s.scalars(
            select(db.Assignment)
            .where(db.Assignment.model == name)
            .order_by(db.Assignment.device_id)
        )
        out: list[JSONDict] = []
        for a in rows:
            for role, v in (
                ("production", a.production_version),
                ("candidate", a.candidate_version),
            ):
                if v == version:
                    out.append(
                        {
                            "device_id": a.device_id,
                            "role": role,
                            "mode": a.mode,
                            "share": a.share,
                            "rollout_id": a.rollout_id,
                        }
                    )
        return out

    def list_models(self) -> list[JSONDict]:
        """Every model: ``{"name", "description", "created_at", "latest_version", "versions"}``
        (``versions`` is the count)."""
        with self._read() as s:
            rows = s.execute(
                select(db.Model, func.max(db.ModelVersion.version), func.count(db.ModelVersion.id))
                .join(db.ModelVersion, db.ModelVersion.model_id == db.Model.id, isouter=True)
                .group_by(db.Model.id)
                .order_by(db.Model.name)
            ).all()
            return [
                {
                    "name": m.name,
                    "description": m.description,
                    "created_at": _iso(m.created_at),
                    "latest_version": latest,
                    "versions": count,
                }
                for m, latest, count in rows
            ]

    def get_model(self, name: str) -> JSONDict:
        """A model and all its versions.

        Raises:
            NotFoundError: no such model.
        """
        with self._read() as s:
            m = self._model_row(s, name)
            versions = s.scalars(
                select(db.ModelVersion)
                .where(db.ModelVersion.model_id == m.id)
                .order_by(db.ModelVersion.version)
            ).all()
            return {
                "name": m.name,
                "description": m.description,
                "created_at": _iso(m.created_at),
                "created_by": m.created_by,
                "latest_version": versions[-1].version if versions else None,
                "versions": [
                    {
                        **self._version_summary(name, v),
                        "deployments": self._deployments_of(s, name, v.version),
                    }
                    for v in versions
                ],
            }

    def get_version(self, name: str, version: int) -> JSONDict:
        """One version, with the devices it is deployed to and in which role.

        Raises:
            NotFoundError: no such model or version.
        """
        with self._read() as s:
            row = self._version_row(s, name, version)
            return {
                **self._version_summary(name, row),
                "deployments": self._deployments_of(s, name, version),
            }

    def manifest_bytes(self, name: str, version: int) -> bytes:
        """The stored package manifest JSON of a version.

        Raises:
            NotFoundError: no such model or version.
        """
        with self._read() as s:
            digest = self._version_row(s, name, version).manifest_sha256
        return self.store.read(digest)

    # -- deployments ---------------------------------------------------------------------

    def _targets(
        self, s: Session, devices: Sequence[str] | Literal["all"], model: str | None = None
    ) -> list[str]:
        if devices == ALL_DEVICES:
            query = select(db.Device.id).order_by(db.Device.id)
            if model is not None:
                query = (
                    select(db.Assignment.device_id)
                    .where(db.Assignment.model == model)
                    .order_by(db.Assignment.device_id)
                )
            ids = list(s.scalars(query))
        elif isinstance(devices, str):
            raise InvalidInputError(f"devices must be a list of ids or 'all', got {devices!r}")
        else:
            ids = list(dict.fromkeys(devices))
            unknown = [d for d in ids if s.get(db.Device, d) is None]
            if unknown:
                raise NotFoundError(f"no device {', '.join(repr(d) for d in unknown)}")
        if not ids:
            raise InvalidInputError("no devices to change")
        return ids

    def deploy(
        self,
        name: str,
        version: int,
        devices: Sequence[str] | Literal["all"],
        mode: Mode | str = Mode.FULL,
        share: float = 0.0,
        slo: Mapping[str, float] | None = None,
        *,
        actor: str,
        ticket: str | None = None,
    ) -> JSONDict:
        """Assign a version to devices and sign their new desired states.

        ``full`` makes the version production (the old production is kept as the
        rollback target); ``split`` and ``shadow`` keep each device's production and add
        the version as candidate, taking ``share`` of the requests (split) or a
        mirrored sample of that share (shadow).

        Args:
            name, version: the package to deploy.
            devices: device ids, or ``"all"`` for every enrolled device.
            mode: ``full``, ``split`` or ``shadow``.
            share: candidate share in (0, 1] for split/shadow; ignored for full.
            slo: the device guard's SLO policy, e.g. ``{"p99_ms": 50, "error_rate": 0.01}``.
            actor: who deploys; ticket: change ticket.

        Returns:
            ``{"model", "version", "mode", "share", "slo", "rollout_id", "devices":
            [{"device_id", "production", "candidate", "mode", "share", "serial",
            "desired_state_sha256", "desired_state_length"}]}``

        Raises:
            NotFoundError: unknown model, version or device.
            InvalidInputError: bad mode/share/slo, a revoked version, or split/shadow on
                a device without a production version of this model.
        """
        try:
            mode = Mode(mode)
        except ValueError:
            raise InvalidInputError(f"unknown mode {mode!r}; use full, split or shadow") from None
        slo_map = _check_slo(slo)
        share = float(share)
        if mode is Mode.FULL:
            share = 0.0
        elif not (math.isfinite(share) and 0.0 < share <= 1.0):
            raise InvalidInputError(f"share must be in (0, 1] for {mode.value}, got {share}")
        rollout_id = f"{name}-{version}-{secrets.token_hex(4)}"
        now = self.clock.now()
        with self._write() as s:
            row = self._version_row(s, name, version)
            if row.revoked:
                raise InvalidInputError(f"{name} version {version} is revoked")
            ids = self._targets(s, devices)
            existing = {
                a.device_id: a
                for a in s.scalars(
                    select(db.Assignment).where(
                        db.Assignment.model == name, db.Assignment.device_id.in_(ids)
                    )
                )
            }
            if mode is not Mode.FULL:
                missing = [d for d in ids if d not in existing]
                if missing:
                    raise InvalidInputError(
                        f"{mode.value} needs a production version of {name!r} on every device; "
                        f"none on {', '.join(missing)} (deploy one with mode full first)"
                    )
                same = [d for d in ids if existing[d].production_version == version]
                if same:
                    raise InvalidInputError(
                        f"{name} version {version} is already production on {', '.join(same)}"
                    )
            self.trust.publish_package(
                name,
                version,
                row.sha256,
                row.length,
                row.manifest_sha256,
                row.manifest_length,
                {
                    "model": name,
                    "version": version,
                    "opset": row.opset,
                    "runtime": "onnxruntime",
                    "ir_version": row.ir_version,
                },
            )
            row.published = True
            for device_id in ids:
                a = existing.get(device_id)
                if a is None:
                    a = db.Assignment(device_id=device_id, model=name, production_version=version)
                    s.add(a)
                elif mode is Mode.FULL and a.production_version != version:
                    a.previous_version = a.production_version
                    a.production_version = version
                if mode is Mode.FULL:
                    a.candidate_version = None
                else:
                    a.candidate_version = version
                a.mode, a.share, a.slo = mode.value, share, slo_map
                a.rollout_id, a.updated_at = rollout_id, now
            s.flush()
            states = self._sign_states(s, ids)
            self._audit(
                s,
                actor,
                "deploy",
                f"{name}/{version}",
                {
                    "devices": ids,
                    "mode": mode.value,
                    "share": share,
                    "slo": slo_map,
                    "rollout_id": rollout_id,
                },
                ticket,
            )
            summary = self._change_summary(s, name, ids, states)
        return {
            "model": name,
            "version": version,
            "mode": mode.value,
            "share": share,
            "slo": slo_map,
            "rollout_id": rollout_id,
            "devices": summary,
        }

    def rollback(
        self,
        name: str,
        devices: Sequence[str] | Literal["all"],
        *,
        actor: str,
        ticket: str | None = None,
    ) -> JSONDict:
        """Point devices back at their last good version of ``name`` (a new director
        assignment with a higher serial, never a metadata rollback).

        A device with a candidate drops it and keeps its production; a device without
        one goes back to the production it had before the last full deploy.

        Args:
            devices: device ids, or ``"all"`` for every device that has ``name``.

        Returns:
            ``{"model", "rollout_id", "devices": [{"device_id", "production",
            "candidate", "mode", "share", "serial", "desired_state_sha256",
            "desired_state_length"}]}``

        Raises:
            NotFoundError: unknown model or device.
            InvalidInputError: a device has nothing of ``name`` to roll back to.
        """
        rollout_id = f"rollback-{name}-{secrets.token_hex(4)}"
        now = self.clock.now()
        with self._write() as s:
            self._model_row(s, name)
            ids = self._targets(s, devices, model=name)
            changes: dict[str, JSONDict] = {}
            for device_id in ids:
                a = s.scalars(
                    select(db.Assignment).where(
                        db.Assignment.model == name, db.Assignment.device_id == device_id
                    )
                ).first()
                if a is None:
                    raise InvalidInputError(f"device {device_id!r} has no assignment of {name!r}")
                before = {"production": a.production_version, "candidate": a.candidate_version}
                if a.candidate_version is not None:
                    a.candidate_version = None
                elif a.previous_version is not None:
                    if self._version_row(s, name, a.previous_version).revoked:
                        raise InvalidInputError(
                            f"cannot roll {device_id!r} back: {name} version "
                            f"{a.previous_version} is revoked"
                        )
                    a.production_version, a.previous_version = a.previous_version, None
                else:
                    raise InvalidInputError(
                        f"device {device_id!r} has no earlier version of {name!r} to go back to"
                    )
                a.mode, a.share, a.rollout_id, a.updated_at = Mode.FULL.value, 0.0, rollout_id, now
                changes[device_id] = {"from": before, "to": {"production": a.production_version}}
            s.flush()
            states = self._sign_states(s, ids)
            self._audit(
                s, actor, "rollback", name, {"devices": changes, "rollout_id": rollout_id}, ticket
            )
            summary = self._change_summary(s, name, ids, states)
        return {"model": name, "rollout_id": rollout_id, "devices": summary}

    def _change_summary(
        self, s: Session, name: str, ids: list[str], states: Mapping[str, tuple[str, int, int]]
    ) -> list[JSONDict]:
        out = []
        for device_id in ids:
            a = s.scalars(
                select(db.Assignment).where(
                    db.Assignment.model == name, db.Assignment.device_id == device_id
                )
            ).one()
            sha, length, serial = states[device_id]
            out.append(
                {
                    "device_id": device_id,
                    "production": a.production_version,
                    "candidate": a.candidate_version,
                    "mode": a.mode,
                    "share": a.share,
                    "serial": serial,
                    "desired_state_sha256": sha,
                    "desired_state_length": length,
                }
            )
        return out

    def _sign_states(self, s: Session, device_ids: list[str]) -> dict[str, tuple[str, int, int]]:
        """Build, store and sign the desired state of each device from its assignments.

        Returns:
            ``{device id: (sha256, length, serial)}``.
        """
        now = self.clock.now()
        refs: dict[tuple[str, int], ArtefactRef] = {}

        def ref(model: str, version: int) -> ArtefactRef:
            if (model, version) not in refs:
                v = self._version_row(s, model, version)
                refs[model, version] = ArtefactRef(
                    model, version, v.sha256, v.length, v.manifest_sha256, v.manifest_length
                )
            return refs[model, version]

        out: dict[str, tuple[str, int, int]] = {}
        for device_id in device_ids:
            rows = s.scalars(
                select(db.Assignment)
                .where(db.Assignment.device_id == device_id)
                .order_by(db.Assignment.model)
            ).all()
            assignments = tuple(
                DesiredAssignment(
                    model=a.model,
                    production=ref(a.model, a.production_version),
                    candidate=ref(a.model, a.candidate_version)
                    if a.candidate_version is not None
                    else None,
                    mode=Mode(a.mode),
                    share=a.share,
                    slo={k: float(v) for k, v in a.slo.items()},
                    rollout_id=a.rollout_id,
                )
                for a in rows
            )
            state_row = s.get(db.DeviceState, device_id)
            serial = state_row.serial + 1 if state_row else 1
            raw = DesiredState(
                device_id=device_id,
                serial=serial,
                assignments=assignments,
                issued_at=now.astimezone(UTC).isoformat(),
            ).to_json()
            digest = self.store.put_bytes(raw)
            if state_row is None:
                s.add(
                    db.DeviceState(
                        device_id=device_id,
                        serial=serial,
                        sha256=digest,
                        length=len(raw),
                        issued_at=now,
                    )
                )
            else:
                state_row.serial, state_row.sha256 = serial, digest
                state_row.length, state_row.issued_at = len(raw), now
            out[device_id] = (digest, len(raw), serial)
        self.trust.set_desired_states({d: (sha, length) for d, (sha, length, _) in out.items()})
        return out

    # -- audit and upkeep ----------------------------------------------------------------

    def audit(self, after_seq: int = 0, limit: int = 100) -> list[JSONDict]:
        """Audit entries with ``seq > after_seq``, oldest first, at most ``limit``
        (capped by ``audit_page_limit``): ``{"seq", "at", "actor", "action", "subject",
        "ticket", "details", "prev_hash", "hash"}``."""
        limit = max(1, min(int(limit), self.config.audit_page_limit))
        with self._read() as s:
            return [r.to_dict() for r in list_entries(s, int(after_seq), limit)]

    def verify_audit(self) -> int | None:
        """The first broken ``seq`` of the audit chain, or None if it is intact."""
        with self._read() as s:
            return verify_chain(s)

    def trust_root(self) -> bytes:
        """The trust-root bundle devices bootstrap from."""
        return self.trust.trust_root_bundle()

    def refresh_expiring(self) -> list[str]:
        """Re-sign TUF roles close to expiry; returns ``"<repo>/<role>"`` of each."""
        with self._write() as s:
            done = self.trust.refresh_expiring()
            if done:
                self._audit(s, "system:refresh", "tuf.refresh", "tuf", {"roles": done})
        return done

    def tuf_metadata(self, repo: str, filename: str) -> Path:
        """The metadata file behind ``GET /tuf/<repo>/metadata/<filename>``.

        Raises:
            NotFoundError: unknown repository or file.
        """
        path = self.trust.metadata_path(repo, filename)
        if path is None or not path.is_file():
            raise NotFoundError(f"no metadata {repo}/{filename}")
        return path

    def tuf_target(self, repo: str, url_path: str) -> Path:
        """The blob behind ``GET /tuf/<repo>/targets/<dir>/<sha256>.<name>``.

        Raises:
            NotFoundError: the path is not a target listed now with that hash.
        """
        digest = self.trust.target_digest(repo, url_path)
        if digest is None:
            raise NotFoundError(f"no target {repo}/{url_path}")
        return self.store.path(digest)


def _check_slo(slo: Mapping[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (slo or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInputError(f"SLO {key!r} must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise InvalidInputError(f"SLO {key!r} must be finite")
        out[str(key)] = float(value)
    # The device enforces it: refuse here what the device's guard would not accept.
    from modelfleet.monitoring.guard import SloPolicy

    SloPolicy.from_mapping(out)
    return out


_MAX_EVENTS_LOGGED = 20


def _running(report: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    models = report.get("models")
    if not isinstance(models, Mapping):
        return out
    for name, slots in models.items():
        if not isinstance(slots, Mapping):
            continue
        entry: dict[str, Any] = {}
        for slot in ("active", "candidate", "previous"):
            rec = slots.get(slot)
            entry[slot] = rec.get("version") if isinstance(rec, Mapping) else None
        entry["mode"], entry["share"] = slots.get("mode"), slots.get("share")
        out[str(name)] = entry
    return out


def report_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> JSONDict:
    """What changed between two device reports, for the audit log (pure).

    Returns:
        Only the keys that changed among ``running`` (per model: active, candidate and
        previous versions, mode, share), ``applied_serial`` and ``last_refusal``, plus
        ``new_events`` (events not in the old report, at most 20); empty if nothing did.
    """
    changes: JSONDict = {}
    if _running(new) != _running(old):
        changes["running"] = _running(new)
    for key in ("applied_serial", "last_refusal"):
        if new.get(key) != old.get(key):
            changes[key] = new.get(key)
    old_events = old.get("events") if isinstance(old.get("events"), list) else []
    new_events = new.get("events") if isinstance(new.get("events"), list) else []
    seen = {orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in old_events or []}
    fresh = [
        e for e in new_events or [] if orjson.dumps(e, option=orjson.OPT_SORT_KEYS) not in seen
    ]
    if fresh:
        changes["new_events"] = fresh[-_MAX_EVENTS_LOGGED:]
    return changes

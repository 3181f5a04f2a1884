"""The hub service's blobs, models and versions (a mixin of ``HubService``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelfleet.catalog.artefacts import is_sha256
from modelfleet.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from modelfleet.hub import db
from modelfleet.hub._service_base import _ServiceBase
from modelfleet.hub._values import JSONDict, _check_name, _iso, load_npy
from modelfleet.packaging.build import build_manifest
from modelfleet.rollout.desired_state import manifest_target_path, model_target_path


class _VersionOps(_ServiceBase):
    """Uploaded blobs, models and their versions."""

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

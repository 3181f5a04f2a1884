"""The hub's catalog: uploaded blobs, models and their immutable versions.

Owns the ``models`` and ``model_versions`` rows and the artefact store's blobs. It decides
what the signed catalog repository must list (:meth:`Catalog.signed_targets`: every
published, unrevoked version) but never signs: :class:`~modelfleet.hub.director.Director`
does, after the commit.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelfleet.catalog.artefacts import FileArtefactStore, is_sha256
from modelfleet.catalog.schema import OutputDecision
from modelfleet.errors import (
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    RefusedUpdateError,
)
from modelfleet.hub import db
from modelfleet.hub._values import JSONDict, _check_name, _iso, load_npy
from modelfleet.hub.context import HubContext
from modelfleet.packaging.build import build_manifest
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.packaging.openssf_signing import (
    CUSTOM_KEY,
    SIGNATURE_FILE,
    custom_fields,
    ensure_signing_key,
    sign_model,
)
from modelfleet.packaging.target import TARGET_FIELD, PackageTarget
from modelfleet.rollout.desired_state import manifest_target_path, model_target_path
from modelfleet.trust.repository import TargetSpec

__all__ = [
    "CATALOG_PREFIX",
    "NO_DRIFT_MESSAGE",
    "Catalog",
    "ReleaseGate",
    "drift_summary",
    "signature_target_path",
]

ReleaseGate = Callable[[Session, str, db.ModelVersion], None]
"""Called in a registration's transaction with the new version (issue 10: release
approvals open a request for it when release keys are registered)."""


def signature_target_path(name: str, version: int) -> str:
    """Catalog target path of a version's OpenSSF model-signing bundle (issue 10)."""
    return f"models/{name}/{version}/{SIGNATURE_FILE}"


NO_DRIFT_MESSAGE = "no reference profile: drift will not be computed for this version"


def _profile_digest(manifest: PackageManifest) -> str | None:
    profile = manifest.package_profile()
    return None if profile is None else profile.digest


def drift_summary(manifest: PackageManifest) -> JSONDict:
    """What a registration answers about drift (issue 9): the profile's digest and
    columns, or that drift will not be computed."""
    profile = manifest.package_profile()
    if profile is None:
        return {"reference_profile": None, "message": NO_DRIFT_MESSAGE}
    p = profile.profile
    return {
        "reference_profile": profile.digest,
        "rows": p.rows,
        "inputs": len(p.inputs),
        "outputs": len(p.outputs),
        "categorical": [f.name for f in (*p.inputs, *p.outputs) if f.kind.value == "categorical"],
        "sketches": p.sketch_k is not None,
        "message": f"drift reference: {p.rows} rows, {len(p.inputs)} input and "
        f"{len(p.outputs)} output columns",
    }


CATALOG_PREFIX = "models/"
"""Every catalog target path starts with this (see :func:`model_target_path`)."""


class Catalog:
    """Blobs, models and versions.

    Args:
        ctx: the hub's sessions, clock and audit log.
        store: the artefact store holding every blob.
    """

    def __init__(self, ctx: HubContext, store: FileArtefactStore) -> None:
        self._ctx = ctx
        self.store = store
        # manifest digest -> its model-signing fields (manifests are immutable)
        self._signatures: dict[str, dict[str, Any] | None] = {}
        self.release_gate: ReleaseGate | None = None

    # -- blobs ---------------------------------------------------------------------------

    def put_blob(self, chunks: Iterable[bytes], actor: str) -> tuple[str, int]:
        """Stream a blob into the artefact store (see ``HubService.put_blob``).

        Raises:
            InvalidInputError: the upload is empty; nothing is stored (defect 5).
            PayloadTooLargeError: more than ``max_upload_bytes``; nothing is kept.
            StorageError: the store is not writable.
        """
        limit = self._ctx.config.max_upload_bytes
        it = iter(chunks)
        first = next((c for c in it if c), None)
        if first is None:
            raise InvalidInputError("the upload is empty: a blob needs at least one byte")

        def bounded() -> Iterator[bytes]:
            total = 0
            for chunk in itertools.chain([first], it):
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLargeError(f"the upload exceeds the limit of {limit} bytes")
                yield chunk

        digest, length = self.store.put_stream(bounded())
        with self._ctx.write() as s:
            self._ctx.audit(s, actor, "blob.upload", digest, {"length": length})
        return digest, length

    def _blob(self, digest: str, what: str) -> bytes:
        if not isinstance(digest, str) or not is_sha256(digest):
            raise InvalidInputError(f"{what} must be a sha256 hex digest, got {digest!r}")
        try:
            return self.store.read(digest)
        except NotFoundError as e:
            raise InvalidInputError(f"{what} {digest} was not uploaded; POST it to /blobs") from e

    def referenced_blobs(self, s: Session) -> set[str]:
        """Digests that must stay: every version's model and manifest, every device's
        current desired state."""
        out: set[str] = set()
        for sha, manifest_sha in s.execute(
            select(db.ModelVersion.sha256, db.ModelVersion.manifest_sha256)
        ):
            out.update((sha, manifest_sha))
            signature = self._signature_of(manifest_sha)
            if signature is not None:
                out.add(signature["bundle_sha256"])
        out.update(s.scalars(select(db.DeviceState.sha256)))
        return out

    def discard_unreferenced(self, digests: Iterable[str], actor: str, why: str) -> list[str]:
        """Delete uploaded blobs that no version references (a refused registration's).

        Returns:
            The digests deleted (audited as ``blob.discard``).
        """
        wanted = {d for d in digests if isinstance(d, str) and is_sha256(d)}
        if not wanted:
            return []
        with self._ctx.write() as s:
            gone = sorted(d for d in wanted - self.referenced_blobs(s) if self.store.delete(d))
            if gone:
                self._ctx.audit(s, actor, "blob.discard", gone[0], {"blobs": gone, "why": why})
        return gone

    # -- versions ------------------------------------------------------------------------

    def register_version(
        self,
        name: str,
        model: bytes | str,
        sample_input: np.ndarray | str | None = None,
        *,
        actor: str,
        lineage: Mapping[str, Any] | None = None,
        ticket: str | None = None,
        decisions: Mapping[str, Mapping[str, Any]] | None = None,
        reference_profile: Mapping[str, Any] | None = None,
        anomaly_scorer: Mapping[str, Any] | None = None,
        target: Mapping[str, Any] | None = None,
    ) -> JSONDict:
        """Register the next version of ``name`` (see ``HubService.register_version``).

        A refused registration deletes the blobs it named (model and sample input) when
        no version references them: nothing of a refused model stays stored (defect 5).
        """
        uploaded = [d for d in (model, sample_input) if isinstance(d, str)]
        try:
            return self._register(
                name,
                model,
                sample_input,
                actor,
                lineage,
                ticket,
                decisions,
                reference_profile,
                anomaly_scorer,
                target,
            )
        except (InvalidInputError, RefusedUpdateError) as e:
            self.discard_unreferenced(uploaded, actor, f"registration refused: {e}")
            raise

    def _register(
        self,
        name: str,
        model: bytes | str,
        sample_input: np.ndarray | str | None,
        actor: str,
        lineage: Mapping[str, Any] | None,
        ticket: str | None,
        decisions: Mapping[str, Mapping[str, Any]] | None = None,
        reference_profile: Mapping[str, Any] | None = None,
        anomaly_scorer: Mapping[str, Any] | None = None,
        target: Mapping[str, Any] | None = None,
    ) -> JSONDict:
        _check_name("model name", name)
        needs = PackageTarget.from_dict(target)
        declared = (
            {str(k): OutputDecision.from_dict(v) for k, v in decisions.items()}
            if decisions
            else None
        )
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
        now = self._ctx.now()
        draft = build_manifest(
            name,
            1,
            data,
            sample,
            lineage_dict,
            created_at=now,
            decisions=declared,
            reference_profile=reference_profile,
            anomaly_scorer=anomaly_scorer,
        )
        # issue 10: OpenSSF model signing, bound into the manifest and the TUF target
        passphrase = self._ctx.config.key_passphrase
        key_file = ensure_signing_key(self._ctx.config.paths.keys, passphrase)
        signature = sign_model(data, key_file, name, passphrase)
        with self._ctx.write() as s:
            model_row = s.scalars(select(db.Model).where(db.Model.name == name)).first()
            if model_row is None:
                model_row = db.Model(name=name, description="", created_at=now, created_by=actor)
                s.add(model_row)
                s.flush()
                self._ctx.audit(s, actor, "model.create", name, None, ticket)
            latest = s.scalar(
                select(func.max(db.ModelVersion.version)).where(
                    db.ModelVersion.model_id == model_row.id
                )
            )
            version = (latest or 0) + 1
            manifest = dataclasses.replace(
                draft,
                version=version,
                extra={**draft.extra, CUSTOM_KEY: signature.to_dict()},
            )
            if needs:  # issue 10: signed with the manifest, checked on every device
                manifest = dataclasses.replace(
                    manifest, extra={**manifest.extra, TARGET_FIELD: needs.to_dict()}
                )
            manifest_bytes = manifest.to_json()
            model_digest = self.store.put_bytes(data)
            self.store.put_bytes(signature.bundle)
            manifest_digest = self.store.put_bytes(manifest_bytes)
            version_row = db.ModelVersion(
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
            s.add(version_row)
            if self.release_gate is not None:
                s.flush()
                self.release_gate(s, name, version_row)
            self._ctx.audit(
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
                    "reference_profile": _profile_digest(manifest),
                    "model_signing": signature.subject_sha256,
                },
                ticket,
            )
        return {**self.get_version(name, version), "drift": drift_summary(manifest)}

    def set_safety_classified(
        self, name: str, classified: bool, actor: str, ticket: str | None = None
    ) -> JSONDict:
        """Mark a model safety-classified or not (issue 8): its rollouts then need a change
        ticket and a second person's approval. Audited as ``model.safety`` when it changes.

        Returns:
            The model (see ``HubService.get_model``).

        Raises:
            NotFoundError: no model ``name``.
        """
        with self._ctx.write() as s:
            row = self.model_row(s, name)
            if row.safety_classified != classified:
                row.safety_classified = classified
                self._ctx.audit(
                    s, actor, "model.safety", name, {"safety_classified": classified}, ticket
                )
        return self.get_model(name)

    def target_custom(self, name: str, v: db.ModelVersion) -> dict[str, Any]:
        """The fields signed with a version's model target (devices check them), with the
        digests of its OpenSSF model-signing bundle when it has one (issue 10)."""
        custom: dict[str, Any] = {
            "model": name,
            "version": v.version,
            "opset": v.opset,
            "runtime": "onnxruntime",
            "ir_version": v.ir_version,
        }
        signature = self._signature_of(v.manifest_sha256)
        if signature is not None:
            custom.update(custom_fields(signature, signature_target_path(name, v.version)))
        return custom

    def signed_targets(self, s: Session, *, unpublished: bool = False) -> dict[str, TargetSpec]:
        """What the catalog's top-level targets must list: every published, unrevoked
        version that needs no release signatures (those with a release request are listed
        through their release role once approved; issue 10, ADR 0027).

        Args:
            s: a read transaction.
            unpublished: also versions never assigned yet (the targets key is offline, so
                a version is signed in the ceremony before it is deployed; ADR 0043).
        """
        gated = (
            select(db.ReleaseRequest.id)
            .where(
                db.ReleaseRequest.model == db.Model.name,
                db.ReleaseRequest.version == db.ModelVersion.version,
            )
            .exists()
        )
        rows = s.execute(
            select(db.Model.name, db.ModelVersion)
            .join(db.ModelVersion, db.ModelVersion.model_id == db.Model.id)
            .where(
                *([] if unpublished else [db.ModelVersion.published.is_(True)]),
                db.ModelVersion.revoked.is_(False),
                ~gated,
            )
        ).all()
        out: dict[str, TargetSpec] = {}
        for name, v in rows:
            custom = self.target_custom(name, v)
            signature = self._signature_of(v.manifest_sha256)
            if signature is not None:
                bundle = signature_target_path(name, v.version)
                out[bundle] = (signature["bundle_length"], signature["bundle_sha256"], None)
            out[model_target_path(name, v.version)] = (v.length, v.sha256, custom)
            out[manifest_target_path(name, v.version)] = (
                v.manifest_length,
                v.manifest_sha256,
                None,
            )
        return out

    def _signature_of(self, manifest_sha256: str) -> dict[str, Any] | None:
        """The model-signing fields a version's manifest records (None: registered before
        issue 10, or its manifest is gone); cached, manifests being immutable."""
        if manifest_sha256 not in self._signatures:
            try:
                extra = PackageManifest.from_json(self.store.read(manifest_sha256)).extra
            except (NotFoundError, InvalidInputError):
                extra = {}
            found = extra.get(CUSTOM_KEY)
            if isinstance(found, dict) and isinstance(found.get("bundle_sha256"), str):
                self._signatures[manifest_sha256] = dict(found)
            else:
                self._signatures[manifest_sha256] = None
        return self._signatures[manifest_sha256]

    # -- lookups -------------------------------------------------------------------------

    def model_row(self, s: Session, name: str) -> db.Model:
        """Raises: NotFoundError: no model ``name``."""
        row = s.scalars(select(db.Model).where(db.Model.name == name)).first()
        if row is None:
            raise NotFoundError(f"no model {name!r}")
        return row

    def version_row(self, s: Session, name: str, version: int) -> db.ModelVersion:
        """Raises: NotFoundError: no such model or version."""
        model = self.model_row(s, name)
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

    def deployments_of(self, s: Session, name: str, version: int) -> list[JSONDict]:
        """``[{"device_id", "role", "mode", "share", "rollout_id"}]`` of a version."""
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
        """See ``HubService.list_models``."""
        with self._ctx.read() as s:
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
                    "safety_classified": m.safety_classified,
                }
                for m, latest, count in rows
            ]

    def get_model(self, name: str) -> JSONDict:
        """See ``HubService.get_model``."""
        with self._ctx.read() as s:
            m = self.model_row(s, name)
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
                "safety_classified": m.safety_classified,
                "latest_version": versions[-1].version if versions else None,
                "versions": [
                    {
                        **self._version_summary(name, v),
                        "deployments": self.deployments_of(s, name, v.version),
                    }
                    for v in versions
                ],
            }

    def get_version(self, name: str, version: int) -> JSONDict:
        """See ``HubService.get_version``."""
        with self._ctx.read() as s:
            row = self.version_row(s, name, version)
            return {
                **self._version_summary(name, row),
                "deployments": self.deployments_of(s, name, version),
            }

    def manifest_bytes(self, name: str, version: int) -> bytes:
        """See ``HubService.manifest_bytes``."""
        with self._ctx.read() as s:
            digest = self.version_row(s, name, version).manifest_sha256
        return self.store.read(digest)

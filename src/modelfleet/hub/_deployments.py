"""The hub service's deployments and rollbacks, and the desired states they sign (a mixin of
``HubService``).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelfleet.errors import InvalidInputError, NotFoundError
from modelfleet.hub import db
from modelfleet.hub._values import ALL_DEVICES, JSONDict, _check_slo
from modelfleet.hub._versions import _VersionOps
from modelfleet.rollout.desired_state import ArtefactRef, DesiredState, Mode
from modelfleet.rollout.desired_state import Assignment as DesiredAssignment


class _DeploymentOps(_VersionOps):
    """Deployments and rollbacks; builds on the version lookups of :class:`_VersionOps`."""

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

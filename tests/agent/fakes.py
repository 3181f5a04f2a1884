"""An in-memory package source with the same contract as the TUF client, for agent tests.

It checks what the real one checks (the director's hashes against the "catalog" and the
bytes it serves) and can be told to fail: tampered bytes, unreachable hub, revoked package.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from modelfleet.errors import (
    ArtefactVerificationError,
    CorruptDeliveryError,
    ModelfleetError,
    TransportError,
)
from modelfleet.hashing import sha256_bytes
from modelfleet.packaging.build import build_manifest
from modelfleet.rollout.desired_state import (
    ArtefactRef,
    Assignment,
    DesiredState,
    Mode,
    manifest_target_path,
    model_target_path,
)


class MemorySource:
    """Catalog + director in memory."""

    def __init__(self) -> None:
        self.catalog: dict[str, tuple[str, int]] = {}  # path -> signed (sha256, length)
        self.blobs: dict[str, bytes] = {}  # path -> bytes served
        self.desired: dict[str, bytes] = {}
        self.serial: dict[str, int] = {}
        self.offline = False
        self.downloads = 0
        #: Raised, one per artefact fetch, before anything else (fault injection).
        self.failures: list[ModelfleetError] = []
        #: While set to an unset event, artefact fetches block until it is set or the
        #: caller cancels (a download in progress, without sleeping).
        self.gate: threading.Event | None = None
        #: Set when a fetch is waiting at the gate.
        self.waiting = threading.Event()
        self.cancelled = 0

    def publish(  # type: ignore[no-untyped-def]
        self, name: str, version: int, model: bytes, sample=None, decisions=None, profile=None
    ) -> ArtefactRef:
        manifest = build_manifest(
            name, version, model, sample_input=sample, decisions=decisions,
            reference_profile=profile,
        ).to_json()  # fmt: skip
        for path, data in (
            (model_target_path(name, version), model),
            (manifest_target_path(name, version), manifest),
        ):
            self.catalog[path] = (sha256_bytes(data), len(data))
            self.blobs[path] = data
        return ArtefactRef(
            name, version, sha256_bytes(model), len(model), sha256_bytes(manifest), len(manifest)
        )

    def assign(
        self,
        device: str,
        production: ArtefactRef,
        candidate: ArtefactRef | None = None,
        mode: Mode = Mode.FULL,
        share: float = 0.0,
        slo: dict[str, float] | None = None,
    ) -> int:
        serial = self.serial.get(device, 0) + 1
        self.serial[device] = serial
        a = Assignment(production.model, production, candidate, mode, share, slo or {})
        self.desired[device] = DesiredState(device, serial, (a,)).to_json()
        return serial

    # -- PackageSource ---------------------------------------------------------------------

    def fetch_desired_state(self, device_id: str) -> bytes | None:
        if self.offline:
            raise TransportError("hub unreachable (test)")
        return self.desired.get(device_id)

    def fetch_package_file(
        self,
        target_path: str,
        expected_sha256: str,
        expected_length: int,
        dest: Path,
        cancel: threading.Event | None = None,
    ) -> Path:
        if self.offline:
            raise TransportError("hub unreachable (test)")
        if self.failures:
            raise self.failures.pop(0)
        gate = self.gate
        if gate is not None:
            self.waiting.set()
            while not gate.wait(0.01):
                if cancel is not None and cancel.is_set():
                    self.cancelled += 1
                    raise TransportError(f"{target_path}: download cancelled")
        signed = self.catalog.get(target_path)
        if signed is None:
            raise ArtefactVerificationError(f"{target_path} is not in the catalog")
        if signed != (expected_sha256, expected_length):
            raise ArtefactVerificationError(f"director and catalog disagree about {target_path}")
        data = self.blobs[target_path]
        if hashlib.sha256(data).hexdigest() != signed[0]:
            raise CorruptDeliveryError(f"{target_path}: hash mismatch")
        self.downloads += 1
        dest.write_bytes(data)
        return dest

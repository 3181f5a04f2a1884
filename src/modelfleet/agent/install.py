"""Installing one version: download both files, verify, smoke-test, commit to a slot.

The only step of the update cycle that downloads, and it runs with no lock held: status
and rollback never wait on it (issue 6, defect 13). A ``cancel`` event set from another
thread (a newer desired state superseded this one) stops the download.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Protocol

from modelfleet.agent.slots import MANIFEST_FILE, MODEL_FILE, SlotStore
from modelfleet.agent.state import SlotRecord
from modelfleet.catalog.onnx_session import max_supported_opset as _runtime_max_opset
from modelfleet.errors import (
    ArtefactVerificationError,
    CompatibilityError,
    InvalidInputError,
    ModelfleetError,
    RefusedUpdateError,
    TransportError,
    TrustError,
)
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.packaging.onnx_model import load_session
from modelfleet.packaging.smoke import check_smoke
from modelfleet.packaging.target import TARGET_FIELD, DeviceProfile, PackageTarget, target_mismatch
from modelfleet.rollout.desired_state import ArtefactRef
from modelfleet.telemetry.logs import log_context

__all__ = [
    "SUPPORTED_RUNTIMES",
    "PackageSource",
    "check_manifest_matches",
    "install_version",
    "is_refusal",
    "max_supported_opset",
    "smoke_test",
]

log = logging.getLogger("modelfleet.agent")

SUPPORTED_RUNTIMES = frozenset({"onnxruntime"})


class PackageSource(Protocol):
    """Where verified desired states and package files come from (TUF over HTTP, media…)."""

    def fetch_desired_state(self, device_id: str) -> bytes | None:
        """Return this device's verified desired-state bytes, or None if it has none."""
        ...

    def fetch_package_file(
        self,
        target_path: str,
        expected_sha256: str,
        expected_length: int,
        dest: Path,
        cancel: threading.Event | None = None,
    ) -> Path:
        """Download a catalog target, verified, and cross-checked against the director."""
        ...


def is_refusal(error: Exception) -> bool:
    """Whether an install failure is a refusal (trust or check), not a transient failure.

    A refusal for bad delivered bytes (:class:`~modelfleet.errors.CorruptDeliveryError`) is
    still retried: :func:`modelfleet.agent.refusals.failure_kind` says which (issue 11).
    """
    return isinstance(error, TrustError | RefusedUpdateError | InvalidInputError)


@functools.cache
def max_supported_opset() -> int:
    """Highest default-domain opset this device's ONNX Runtime implements (no ``onnx``
    package needed on the device)."""
    return _runtime_max_opset()


def install_version(
    source: PackageSource,
    slots: SlotStore,
    ref: ArtefactRef,
    cancel: threading.Event | None = None,
    *,
    rollout_id: str | None = None,
    profile: DeviceProfile | None = None,
) -> SlotRecord:
    """Download, verify and smoke-test one version; return its slot record.

    The manifest is fetched (verified) first and checked against the director's word and
    ``profile`` (issue 10): a package for other hardware is refused before its model is
    downloaded.

    Every line logged meanwhile carries the model, version and ``rollout_id``
    (:func:`modelfleet.telemetry.logs.log_context`).

    Raises:
        TrustError, RefusedUpdateError, InvalidInputError: refused (see :func:`is_refusal`).
        TransportError: the download failed or was cancelled (retry later).
        StorageError: the disk failed.
    """
    with log_context(model=ref.model, version=str(ref.version), rollout_id=rollout_id):
        return _install_version(source, slots, ref, cancel, profile)


def _install_version(
    source: PackageSource,
    slots: SlotStore,
    ref: ArtefactRef,
    cancel: threading.Event | None,
    profile: DeviceProfile | None = None,
) -> SlotRecord:
    if slots.has(ref.model, ref.manifest_sha256):  # this very package, verified before
        final = slots.version_dir(ref.model, ref.manifest_sha256)
        manifest = PackageManifest.from_json((final / MANIFEST_FILE).read_bytes())
        check_manifest_matches(manifest, ref, profile)  # this device's profile may differ now
    else:
        staging = slots.staging_dir()
        try:
            for path, sha, length, name in (
                (ref.manifest_path, ref.manifest_sha256, ref.manifest_length, MANIFEST_FILE),
                (ref.model_path, ref.sha256, ref.length, MODEL_FILE),
            ):
                if cancel is not None and cancel.is_set():
                    raise TransportError(f"{ref.model} v{ref.version}: download cancelled")
                source.fetch_package_file(path, sha, length, staging / name, cancel=cancel)
                if name == MANIFEST_FILE:
                    manifest = PackageManifest.from_json((staging / MANIFEST_FILE).read_bytes())
                    check_manifest_matches(manifest, ref, profile)
        except BaseException:
            slots.discard(staging)
            raise
        final = slots.commit(staging, ref.model, ref.manifest_sha256)
    try:
        smoke_test(final / MODEL_FILE, manifest)
    except ModelfleetError:
        slots.discard(final)
        raise
    log.info("installed %s v%s (%s)", ref.model, ref.version, ref.sha256[:12])
    return SlotRecord(ref.version, ref.sha256, str(final))


def check_manifest_matches(
    manifest: PackageManifest, ref: ArtefactRef, profile: DeviceProfile | None = None
) -> None:
    """The signed manifest must describe exactly the artefact the director named, for a
    runtime, opset and (with ``profile``) hardware and execution providers this device has.

    Raises:
        ArtefactVerificationError: name, version or digest differ.
        CompatibilityError: runtime, opset, hardware or execution provider this device
            cannot run.
        InvalidInputError: a malformed ``target`` field.
    """
    if (manifest.name, manifest.version, manifest.sha256) != (ref.model, ref.version, ref.sha256):
        raise ArtefactVerificationError(
            f"manifest describes {manifest.name} v{manifest.version} ({manifest.sha256[:12]}), "
            f"director named {ref.model} v{ref.version} ({ref.sha256[:12]})"
        )
    if manifest.runtime not in SUPPORTED_RUNTIMES:
        raise CompatibilityError(f"runtime {manifest.runtime!r} is not supported on this device")
    if manifest.opset > max_supported_opset():
        raise CompatibilityError(
            f"model needs ONNX opset {manifest.opset}; this device supports up to "
            f"{max_supported_opset()}"
        )
    if profile is not None:
        why = target_mismatch(PackageTarget.from_dict(manifest.extra.get(TARGET_FIELD)), profile)
        if why is not None:
            raise CompatibilityError(why)


def smoke_test(model_path: Path, manifest: PackageManifest) -> None:
    """Load the model, compare its schema with the manifest, replay the smoke vectors.

    Raises:
        InvalidModelError: ONNX Runtime cannot load it.
        RefusedUpdateError: schema differs from the signed manifest.
        SmokeTestError: an output differs from the recorded one.
    """
    from modelfleet.packaging.onnx_model import schema_of_session

    session = load_session(str(model_path))
    schema = schema_of_session(session)
    if schema != manifest.schema:
        raise RefusedUpdateError(
            "the model's input/output schema differs from its signed manifest: "
            + "; ".join(manifest.schema.compatible_with(schema) or ["shapes differ"])
        )
    check_smoke(session, manifest.smoke)

"""The one exception tree of modelfleet.

Exceptions are grouped by how the caller should react, not by where they were raised:

* :class:`InvalidInputError` - the caller sent something wrong; fix the input (HTTP 400).
* :class:`NotFoundError` - the thing named does not exist (HTTP 404).
* :class:`ConflictError` - the request clashes with existing state (HTTP 409).
* :class:`AuthError` - missing or insufficient credentials (HTTP 401 / 403).
* :class:`TrustError` - a security check failed: the artefact or metadata must be refused.
* :class:`RefusedUpdateError` - an update was refused for a functional reason (schema, smoke).
* :class:`TransportError` - the other side could not be reached; retry later.
* :class:`StorageError` - local persistence failed (disk full, permissions).
* :class:`ConfigError` - the configuration or home folder is unusable.

Foreign exceptions are translated at the boundary with ``raise ... from e``.
HTTP status codes live only in the web adapters.
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "ArtefactVerificationError",
    "AuthError",
    "CompatibilityError",
    "ConfigError",
    "ConflictError",
    "CorruptDeliveryError",
    "DeadlineExceededError",
    "ForbiddenError",
    "InvalidInputError",
    "InvalidModelError",
    "InvalidTensorError",
    "MetadataExpiredError",
    "MetadataVerificationError",
    "ModelfleetError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RefusedUpdateError",
    "SmokeTestError",
    "StorageError",
    "TransportError",
    "TrustError",
    "UnauthenticatedError",
]


class ModelfleetError(Exception):
    """Base of every error modelfleet raises on purpose."""


class ConfigError(ModelfleetError):
    """The configuration or a home/state folder is missing or unusable."""


class InvalidInputError(ModelfleetError):
    """The caller sent input that cannot be accepted as it is."""


class InvalidModelError(InvalidInputError):
    """A model file is not ONNX, or ONNX Runtime cannot load it."""


class InvalidTensorError(InvalidInputError):
    """An inference request names a wrong input, shape, dtype or is malformed."""


class PayloadTooLargeError(InvalidInputError):
    """A request body or batch exceeds a configured limit."""


class NotFoundError(ModelfleetError):
    """The model, version, device or other named thing does not exist."""


class ConflictError(ModelfleetError):
    """The request clashes with existing state (e.g. the device id is taken)."""


class AuthError(ModelfleetError):
    """Credentials are missing or not sufficient."""


class UnauthenticatedError(AuthError):
    """No valid token was presented."""


class ForbiddenError(AuthError):
    """The token is valid but its role does not allow the action."""


class TrustError(ModelfleetError):
    """A security check failed; whatever was being checked must not be used."""


class MetadataVerificationError(TrustError):
    """TUF metadata failed verification (signature, version, expiry, length)."""


class MetadataExpiredError(MetadataVerificationError):
    """TUF metadata is expired by the device's reference time (issue 11, ADR 0036).

    Not a statement about any artefact: fresh metadata (a bundle import, the hub) clears it.
    The agent keeps serving what it verified earlier and installs nothing new meanwhile.

    Attributes:
        repo: ``catalog`` or ``director``.
        role: the expired role (``timestamp``, ``snapshot``, ``targets``, ``root``), or "".
        expires: when it expired, when known.
    """

    def __init__(
        self, message: str, *, repo: str = "", role: str = "", expires: datetime | None = None
    ) -> None:
        super().__init__(message)
        self.repo = repo
        self.role = role
        self.expires = expires


class ArtefactVerificationError(TrustError):
    """A downloaded artefact does not match its signed length or hashes, or the
    director and the catalog disagree about it."""


class CorruptDeliveryError(ArtefactVerificationError):
    """The bytes delivered for an artefact do not match its signed length or hashes.

    The copy is bad (a tampered or damaged stick, a mirror's corrupted cache), not the
    signed metadata: it is refused, and another copy may be good, so the agent retries
    it (issue 11, ADR 0034).
    """


class CompatibilityError(TrustError):
    """A signed package's compatibility fields do not match this device."""


class RefusedUpdateError(ModelfleetError):
    """An update was verified but refused for a functional reason."""


class SmokeTestError(RefusedUpdateError):
    """The model does not reproduce its recorded smoke-vector outputs."""


class TransportError(ModelfleetError):
    """The peer (hub, mirror, upstream) could not be reached or answered badly."""


class DeadlineExceededError(TransportError):
    """An operation took longer than its configured limit (request timeout)."""


class StorageError(ModelfleetError):
    """Local persistence failed (disk full, permission denied, corrupt file)."""

"""The catalog's top-level targets waiting for an offline signature (issue 10, ADR 0043).

When the catalog's ``targets`` key is offline the hub cannot sign a new top-level targets
itself. Every change it would sign (a version approved or revoked, a release role
delegated, a renewal before expiry) is made instead to one *staged* copy, kept unsigned
beside the metadata folder (``<repo>.staged-targets.json``, never served), at the next
version. The operator exports it (``modelfleet keys export-targets``), signs it on the
offline machine (``keys sign-targets``, a key file or any securesystemslib signer) and
hands it back (``keys apply-targets``); the hub then checks it is exactly the staged
content, signed by a threshold of the targets keys its root lists, and publishes it with a
new snapshot and timestamp signed online.

The staged file is plain TUF metadata (``Metadata[Targets]`` without signatures), so any
TUF tooling can sign it too. Nothing here trusts its content: the hub compares a signed
copy with its own staged bytes, and devices verify the published file as any other.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Metadata, Root, Targets
from tuf.api.serialization import DeserializationError

from modelfleet._atomic import atomic_write_bytes
from modelfleet.errors import (
    ConfigError,
    ConflictError,
    InvalidInputError,
    MetadataVerificationError,
)

__all__ = [
    "STAGED_SUFFIX",
    "StagedTargets",
    "check_signed_targets",
    "describe_targets",
    "parse_targets",
    "sign_targets",
]

_log = logging.getLogger(__name__)

STAGED_SUFFIX = ".staged-targets.json"
"""Name of the staged file after the repository's name (``catalog.staged-targets.json``)."""

_Stamp = tuple[int, int, int]


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(slots=True)
class StagedTargets:
    """The staged top-level targets of one repository, as in its file.

    Attributes:
        path: the staged file.
        md: its metadata (no signatures), or None when nothing is staged.
    """

    path: Path
    md: Metadata[Targets] | None = None
    _stamp: _Stamp | None = field(default=None, repr=False)

    def load(self) -> None:
        """Re-read the file (another process may have staged a change).

        A file that is not targets metadata is moved aside (``.corrupt``) and logged.

        Raises:
            ConfigError: the file cannot be read.
        """
        stamp = _stamp(self.path)
        if stamp is None:
            self.md, self._stamp = None, None
            return
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read {self.path}: {e.strerror or e}") from e
        try:
            self.md = parse_targets(data)
        except InvalidInputError as e:
            # Set aside, not fatal: the hub re-stages from its database at the next change
            # (and approvals at its next start); a hub that failed here would serve nothing.
            aside = self.path.with_name(self.path.name + ".corrupt")
            _log.error("the staged targets %s is corrupt (%s); moved to %s", self.path, e, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            self.md, self._stamp = None, None
            return
        self._stamp = stamp

    def is_current(self) -> bool:
        """True if the file is still the one last loaded or written (a cheap ``stat``)."""
        try:
            return _stamp(self.path) == self._stamp
        except ConfigError:
            return False

    def save(self, md: Metadata[Targets]) -> bytes:
        """Write ``md`` without signatures, atomically; returns the bytes written.

        Raises:
            StorageError: the file could not be written.
        """
        md.signatures.clear()
        data = md.to_bytes()
        atomic_write_bytes(self.path, data)
        self.md, self._stamp = md, _stamp(self.path)
        return data

    def clear(self) -> None:
        """Remove the staged file (it was published, or replaced by an online signing)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.md, self._stamp = None, None


def parse_targets(data: bytes) -> Metadata[Targets]:
    """Targets metadata from bytes.

    Raises:
        InvalidInputError: malformed, or not a targets role.
    """
    try:
        md = Metadata[Targets].from_bytes(data)
    except DeserializationError as e:
        raise InvalidInputError(f"not TUF targets metadata: {e}") from e
    if not isinstance(md.signed, Targets):
        raise InvalidInputError(f"not targets metadata (a {md.signed.type} role)")
    return md


def sign_targets(data: bytes, signer: Signer) -> bytes:
    """Add ``signer``'s signature to exported targets metadata (the offline side).

    A signature by the same key replaces its earlier one; others are kept, so several
    offline keys can sign the same file in turn.

    Raises:
        InvalidInputError: ``data`` is not targets metadata, or the signer failed.
    """
    md = parse_targets(data)
    try:
        md.sign(signer, append=True)
    except Exception as e:  # securesystemslib signers raise their own types (HSM, KMS)
        raise InvalidInputError(f"signing failed: {e}") from e
    return md.to_bytes()


def check_signed_targets(
    data: bytes, staged: Metadata[Targets], root: Root, now: datetime
) -> Metadata[Targets]:
    """Verify a signed copy of the staged targets before it is published.

    Args:
        data: the signed file from the offline side.
        staged: what the hub staged (its ``signed`` part must be byte-identical).
        root: the repository's current root (whose targets keys and threshold count).
        now: for the expiry check.

    Returns:
        The signed metadata.

    Raises:
        InvalidInputError: ``data`` is not targets metadata.
        ConflictError: it is not the staged content (the catalog changed after it was
            exported, or it was edited).
        MetadataVerificationError: expired, or below the targets threshold (signatures of
            unknown keys count for nothing).
    """
    md = parse_targets(data)
    if md.signed_bytes != staged.signed_bytes:
        raise ConflictError(
            f"the signed targets (version {md.signed.version}) is not the one waiting "
            f"(version {staged.signed.version}): the catalog changed after it was exported "
            "or the file was edited; export it again (`modelfleet keys export-targets`) "
            "and sign that"
        )
    if md.signed.is_expired(now):
        raise MetadataVerificationError(
            f"the signed targets expired at {md.signed.expires.isoformat()}; export it "
            "again (a fresh expiry) and sign that"
        )
    try:
        result = root.get_verification_result(Targets.type, md.signed_bytes, md.signatures)
    except RepositoryError as e:
        raise MetadataVerificationError(f"the signed targets cannot be verified: {e}") from e
    if not result.verified:
        raise MetadataVerificationError(
            f"the signed targets has {len(result.signed)} of the {result.threshold} "
            "signatures of the catalog's targets keys it needs"
        )
    return md


def describe_targets(staged: Targets, published: Targets) -> dict[str, Any]:
    """What publishing ``staged`` over ``published`` changes, for the operator to review.

    Returns:
        ``{"version", "expires", "added", "removed", "delegated", "undelegated"}``:
        target paths added (or changed) and removed, release roles delegated and dropped.
    """

    def roles(t: Targets) -> set[str]:
        return set(t.delegations.roles or {}) if t.delegations is not None else set()

    return {
        "version": staged.version,
        "expires": staged.expires.isoformat(),
        "added": sorted(p for p, tf in staged.targets.items() if published.targets.get(p) != tf),
        "removed": sorted(set(published.targets) - set(staged.targets)),
        "delegated": sorted(roles(staged) - roles(published)),
        "undelegated": sorted(roles(published) - roles(staged)),
    }

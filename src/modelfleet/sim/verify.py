"""What a simulated device verifies, with python-tuf's Metadata API (pure: bytes in,
verified metadata or an error out; no I/O, no clock of its own).

The checks are the TUF client workflow's, as python-tuf's ``TrustedMetadataSet`` does them
for the real agent (``modelfleet.trust.client``): a new root must be signed by a threshold
of the trusted root's keys and of its own; timestamp, snapshot and targets by the trusted
root's keys for their role; versions never go back; each file matches the length and hash
its parent lists; nothing expired at the device's own time; then the director's desired
state matches its signed target, and every artefact it names is listed by the catalog with
the same sha256 and length (Uptane: the director and the image repository must agree).

A light fleet shares one :class:`MetadataCache`: parsing a file and checking its signatures
is done once per distinct bytes (keyed by sha256 and the root that checked them), so ten
thousand devices that download the same catalog timestamp pay for one signature check.
Every per-device check (versions, hashes, expiry against that device's clock) still runs
for every device.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError

from modelfleet.errors import ArtefactVerificationError, MetadataVerificationError
from modelfleet.rollout.desired_state import ArtefactRef, DesiredState

__all__ = ["MetadataCache", "RootChain", "TrustedRepo", "check_artefacts", "check_target"]

S = TypeVar("S", bound=Signed)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MetadataCache:
    """Parsed, signature-checked metadata shared by a fleet, keyed by what checked it.

    Args:
        max_entries: bound on the entries kept (oldest dropped first).
    """

    def __init__(self, max_entries: int = 512) -> None:
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, int, str, str], Signed] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def verified(self, repo: str, root: Root, root_version: int, role: type[S], data: bytes) -> S:
        """``data`` parsed as ``role`` metadata whose signatures ``root`` accepts.

        Raises:
            MetadataVerificationError: malformed, another role, or not signed by a
                threshold of ``root``'s keys for the role.
        """
        key = (repo, root_version, role.type, sha256_hex(data))
        hit = self._entries.get(key)
        if hit is not None:
            self.hits += 1
            assert isinstance(hit, role)
            return hit
        self.misses += 1
        md = _parse(repo, role, data)
        try:
            root.verify_delegate(role.type, md.signed_bytes, md.signatures)
        except RepositoryError as e:
            raise MetadataVerificationError(
                f"{repo} {role.type}: signature verification failed ({e})"
            ) from e
        signed = md.signed
        assert isinstance(signed, role)
        self._entries[key] = signed
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return signed


def _parse(repo: str, role: type[Signed], data: bytes) -> Metadata[Any]:
    try:
        md: Metadata[Any] = Metadata.from_bytes(data)
    except (DeserializationError, ValueError, TypeError, KeyError) as e:
        raise MetadataVerificationError(f"{repo} {role.type}: malformed metadata ({e})") from e
    if md.signed.type != role.type:
        raise MetadataVerificationError(
            f"{repo}: expected {role.type} metadata, got {md.signed.type}"
        )
    return md


class RootChain:
    """The trusted roots of one repository, shared by every device that pins them.

    Starts from the pinned root (the trust-root bundle's); :meth:`extend` accepts the next
    version only when both the current root and the new one sign it (TUF 5.3.4–5.3.5).
    """

    def __init__(self, repo: str, pinned: bytes) -> None:
        self.repo = repo
        md = _parse(repo, Root, pinned)
        try:
            md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
        except RepositoryError as e:
            raise MetadataVerificationError(f"{repo}: the pinned root is not self-signed") from e
        self._roots: dict[int, Root] = {md.signed.version: md.signed}
        self.pinned_version = md.signed.version

    @property
    def latest(self) -> int:
        return max(self._roots)

    def root(self, version: int) -> Root:
        return self._roots[version]

    def extend(self, trusted_version: int, data: bytes) -> int:
        """Verify ``data`` as root ``trusted_version + 1``; returns its version.

        Raises:
            MetadataVerificationError: not signed by both roots, or not the next version.
        """
        known = self._roots.get(trusted_version + 1)
        md = _parse(self.repo, Root, data)
        new: Root = md.signed
        if known is not None and new == known:
            return known.version
        if new.version != trusted_version + 1:
            raise MetadataVerificationError(
                f"{self.repo} root: expected version {trusted_version + 1}, got {new.version}"
            )
        try:
            self._roots[trusted_version].verify_delegate(Root.type, md.signed_bytes, md.signatures)
            new.verify_delegate(Root.type, md.signed_bytes, md.signatures)
        except RepositoryError as e:
            raise MetadataVerificationError(
                f"{self.repo} root {new.version}: signature verification failed ({e})"
            ) from e
        self._roots.setdefault(new.version, new)
        return new.version


def _check_meta(repo: str, what: str, meta: MetaFile, data: bytes) -> None:
    if meta.length is not None and meta.length != len(data):
        raise MetadataVerificationError(
            f"{repo} {what}: length {len(data)} is not the signed {meta.length}"
        )
    want = (meta.hashes or {}).get("sha256")
    if want is not None and want != sha256_hex(data):
        raise MetadataVerificationError(f"{repo} {what}: sha256 does not match its signed hash")


def _check_expiry(repo: str, signed: Signed, now: datetime) -> None:
    if signed.is_expired(now):
        raise MetadataVerificationError(
            f"{repo} {signed.type} version {signed.version}: metadata expired "
            f"({signed.expires.isoformat()} before the device's {now.isoformat()})"
        )


@dataclass
class TrustedRepo:
    """One device's trusted metadata of one repository (the state ngclient keeps on disk).

    Attributes:
        chain: the repository's root chain (shared).
        root_version: the root this device trusts.
        timestamp, snapshot, targets: the verified roles held (None before the first).
    """

    chain: RootChain
    root_version: int
    timestamp: Timestamp | None = None
    snapshot: Snapshot | None = None
    targets: Targets | None = None

    @classmethod
    def pinned(cls, chain: RootChain) -> TrustedRepo:
        return cls(chain, chain.pinned_version)

    @property
    def root(self) -> Root:
        return self.chain.root(self.root_version)

    def update_root(self, data: bytes) -> None:
        """Trust the next root (the answer to a ``{N+1}.root.json`` probe).

        A new root drops the held timestamp and snapshot when their keys changed (TUF
        5.3.11: fast-forward recovery), so the next refresh starts over from it.
        """
        old = self.root
        self.root_version = self.chain.extend(self.root_version, data)
        new = self.root
        for role in (Timestamp.type, Snapshot.type, Targets.type):
            if old.roles[role].keyids != new.roles[role].keyids:
                self.timestamp = self.snapshot = self.targets = None
                break

    def update_timestamp(self, cache: MetadataCache, data: bytes, now: datetime) -> bool:
        """Verify a fetched ``timestamp.json``; whether it is newer than the one held.

        Raises:
            MetadataVerificationError: bad signature, expired, or a version (its own or the
                snapshot's it names) below the one held.
        """
        _check_expiry(self.chain.repo, self.root, now)
        new = cache.verified(self.chain.repo, self.root, self.root_version, Timestamp, data)
        held = self.timestamp
        if held is not None:
            if new.version < held.version:
                raise MetadataVerificationError(
                    f"{self.chain.repo} timestamp: version rollback ({new.version} < "
                    f"{held.version})"
                )
            if new.snapshot_meta.version < held.snapshot_meta.version:
                raise MetadataVerificationError(
                    f"{self.chain.repo} timestamp: snapshot version rollback"
                )
        _check_expiry(self.chain.repo, new, now)
        changed = held is None or new.version != held.version
        self.timestamp = new
        return changed

    def snapshot_name(self) -> str:
        assert self.timestamp is not None
        return f"{self.timestamp.snapshot_meta.version}.snapshot.json"

    def needs_snapshot(self) -> bool:
        assert self.timestamp is not None
        held = self.snapshot
        return held is None or held.version != self.timestamp.snapshot_meta.version

    def update_snapshot(self, cache: MetadataCache, data: bytes, now: datetime) -> None:
        """Verify a fetched snapshot against the held timestamp.

        Raises:
            MetadataVerificationError: length/hash not the timestamp's, bad signature,
                version not the timestamp's, a targets version rollback, or expired.
        """
        assert self.timestamp is not None
        repo = self.chain.repo
        meta = self.timestamp.snapshot_meta
        _check_meta(repo, "snapshot", meta, data)
        new = cache.verified(repo, self.root, self.root_version, Snapshot, data)
        if new.version != meta.version:
            raise MetadataVerificationError(
                f"{repo} snapshot: version {new.version}, the timestamp names {meta.version}"
            )
        held = self.snapshot
        if held is not None:
            for name, old in held.meta.items():
                fresh = new.meta.get(name)
                if fresh is None or fresh.version < old.version:
                    raise MetadataVerificationError(f"{repo} snapshot: {name} version rollback")
        _check_expiry(repo, new, now)
        self.snapshot = new

    def targets_meta(self) -> MetaFile:
        assert self.snapshot is not None
        meta = self.snapshot.meta.get("targets.json")
        if meta is None:
            raise MetadataVerificationError(f"{self.chain.repo} snapshot lists no targets.json")
        return meta

    def needs_targets(self) -> bool:
        held = self.targets
        return held is None or held.version != self.targets_meta().version

    def update_targets(self, cache: MetadataCache, data: bytes, now: datetime) -> None:
        """Verify fetched top-level targets against the held snapshot.

        Raises:
            MetadataVerificationError: length/hash, signature, version or expiry.
        """
        repo = self.chain.repo
        meta = self.targets_meta()
        _check_meta(repo, "targets", meta, data)
        new = cache.verified(repo, self.root, self.root_version, Targets, data)
        if new.version != meta.version:
            raise MetadataVerificationError(
                f"{repo} targets: version {new.version}, the snapshot names {meta.version}"
            )
        _check_expiry(repo, new, now)
        self.targets = new

    def check_current(self, now: datetime) -> None:
        """Refuse to act on held metadata that has expired since it was fetched."""
        for signed in (self.timestamp, self.snapshot, self.targets):
            if signed is not None:
                _check_expiry(self.chain.repo, signed, now)

    def target(self, path: str) -> TargetFile | None:
        """The held targets' entry for ``path`` (None when not listed)."""
        if self.targets is None:
            return None
        return self.targets.targets.get(path)

    def versions(self) -> dict[str, int]:
        """``{"root": N, "timestamp": V}`` held (the check-in fast path compares these)."""
        return {
            "root": self.root_version,
            "timestamp": self.timestamp.version if self.timestamp is not None else 0,
        }


def check_target(info: TargetFile, data: bytes) -> None:
    """The desired-state bytes match their signed target.

    Raises:
        ArtefactVerificationError: length or sha256 differ.
    """
    if len(data) != info.length:
        raise ArtefactVerificationError(
            f"artefact {info.path}: length {len(data)} is not the signed {info.length}"
        )
    if info.hashes.get("sha256") != sha256_hex(data):
        raise ArtefactVerificationError(f"artefact {info.path}: hash mismatch")


def check_artefacts(desired: DesiredState, catalog: TrustedRepo) -> list[ArtefactRef]:
    """Every artefact ``desired`` names must be in the catalog with the same sha256 and
    length, for the model and its manifest (pure).

    Returns:
        The distinct artefact refs checked.

    Raises:
        ArtefactVerificationError: not in the catalog (revoked or never approved), or the
            director and the catalog disagree.
    """
    refs: dict[tuple[str, int], ArtefactRef] = {}
    for a in desired.assignments:
        for ref in (a.production, a.candidate):
            if ref is not None:
                refs.setdefault((ref.model, ref.version), ref)
    for ref in refs.values():
        for path, sha, length in (
            (ref.model_path, ref.sha256, ref.length),
            (ref.manifest_path, ref.manifest_sha256, ref.manifest_length),
        ):
            info = catalog.target(path)
            if info is None:
                raise ArtefactVerificationError(
                    f"artefact {path}: not in the catalog (revoked or never approved)"
                )
            got = info.hashes.get("sha256")
            if got != sha or info.length != length:
                raise ArtefactVerificationError(
                    f"artefact {path}: director and catalog disagree (director sha256 {sha} "
                    f"length {length}; catalog sha256 {got} length {info.length})"
                )
    return list(refs.values())


def held_versions(repos: Mapping[str, TrustedRepo]) -> dict[str, Any]:
    """``{"catalog": {"root", "timestamp"}, "director": {...}}`` held by a device."""
    return {name: repo.versions() for name, repo in repos.items()}

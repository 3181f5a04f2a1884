"""Hub side of the trust layer: TUF repositories signed with the python-tuf Metadata API.

Two repositories, Uptane style (see ``docs`` and the research notes on Uptane):

* the **catalog** lists every approved package version (``models/<name>/<v>/model.onnx`` and
  ``.../manifest.json``); its targets key can be offline: changes are then staged for the
  targets ceremony (:mod:`~modelfleet.trust.staged_targets`, ADR 0043);
* the **director** lists one ``devices/<id>/desired-state.json`` per device and is signed by
  the online ``director`` key with a short expiry.

Each repository lives in one metadata folder with consistent snapshots::

    1.root.json 2.root.json ...  N.targets.json  N.snapshot.json  timestamp.json

Files are written atomically and in dependency order (targets, then snapshot, then
timestamp), so a client that reads ``timestamp.json`` always finds the files it names.
Only metadata is signed here; the hub's artefact store holds the bytes.

:class:`TufRepository` is one such repository; :class:`~modelfleet.trust.hub_trust.HubTrust`
(re-exported here) keeps the two under one lock.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import RepositoryError, UnsignedMetadataError
from tuf.api.metadata import (
    TOP_LEVEL_ROLE_NAMES,
    DelegatedRole,
    Delegations,
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

from modelfleet._atomic import atomic_write_bytes
from modelfleet.catalog.artefacts import is_sha256
from modelfleet.clock import Clock
from modelfleet.errors import (
    ConfigError,
    ConflictError,
    InvalidInputError,
    MetadataVerificationError,
)
from modelfleet.hashing import sha256_bytes
from modelfleet.trust.expiry import ExpiryPolicy, SiteExpiry
from modelfleet.trust.keys import OfflineSigner
from modelfleet.trust.role_counters import MemoryRoleCounters, RoleCounters
from modelfleet.trust.staged_targets import (
    STAGED_SUFFIX,
    StagedTargets,
    check_signed_targets,
    describe_targets,
)

__all__ = [
    "ExpiryPolicy",
    "MemoryRoleCounters",
    "RoleCounters",
    "SiteExpiry",
    "TargetSpec",
    "TufRepository",
]

_log = logging.getLogger(__name__)

TargetSpec = tuple[int, str, dict[str, Any] | None]
"""``(length, sha256 hex, custom or None)`` of one target file."""


# Versioned targets/snapshot files kept behind the current one, so a client that read an
# older timestamp a moment ago still finds what it names. Root versions are never pruned:
# clients walk them one by one.
KEEP_VERSIONS = 16

_METADATA_NAME = re.compile(
    r"^(?:timestamp|[1-9][0-9]{0,15}\.(?:root|snapshot|targets"
    r"|release\.[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.v[1-9][0-9]{0,15}))\.json$"
)
_VERSIONED = re.compile(r"^([1-9][0-9]{0,15})\.(root|snapshot|targets)\.json$")


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise InvalidInputError("clock returned a naive datetime; expected UTC")
    return now.astimezone(UTC).replace(microsecond=0)


def _check_target_path(path: str) -> None:
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or any(p in ("", ".", "..") for p in parts)
        or any(ord(c) < 0x20 for c in path)
    ):
        raise InvalidInputError(f"invalid target path {path!r}")


class TufRepository:
    """One TUF repository (root, targets, snapshot, timestamp) in one metadata folder.

    Every change bumps targets, then snapshot, then timestamp, and writes them in that
    order. Not safe for concurrent writers on its own:
    :class:`~modelfleet.trust.hub_trust.HubTrust` serialises writers with a lock file and
    calls :meth:`reload` first.
    """

    def __init__(
        self,
        metadata_dir: Path,
        signers: Mapping[str, Signer],
        clock: Clock,
        lifetimes: Mapping[str, timedelta],
        refresh_margin: float = 1 / 3,
        counters: RoleCounters | None = None,
    ) -> None:
        """Bind a folder and its keys; use :meth:`create` or :meth:`open`, not this.

        Args:
            metadata_dir: the repository's metadata folder (its name names the repository
                in ``counters``).
            signers: a signer for each of ``root``, ``targets``, ``snapshot``, ``timestamp``.
            clock: source of ``now`` for expiry dates.
            lifetimes: lifetime per role (see :meth:`ExpiryPolicy.lifetimes`).
            refresh_margin: see :attr:`ExpiryPolicy.refresh_margin`.
            counters: the published-version counters; without them only the files on
                disk say which versions were published.
        """
        missing = TOP_LEVEL_ROLE_NAMES - set(signers)
        if missing:
            raise ConfigError(f"no signer for role(s) {', '.join(sorted(missing))}")
        self.metadata_dir = Path(metadata_dir)
        self._signers = dict(signers)
        self._clock = clock
        self._lifetimes = dict(lifetimes)
        self._margin = refresh_margin
        self._counters = counters
        self.name = self.metadata_dir.name
        self._root: Metadata[Root] = Metadata(Root())
        self._targets: Metadata[Targets] = Metadata(Targets())
        self._snapshot: Metadata[Snapshot] = Metadata(Snapshot())
        self._timestamp: Metadata[Timestamp] = Metadata(Timestamp())
        self._root_bytes = b""
        self._timestamp_bytes = b""
        # Release roles the top-level targets delegates to now (issue 10, ADR 0027), and
        # which role lists each of their paths.
        self._delegated: dict[str, Targets] = {}
        self._delegated_paths: dict[str, str] = {}
        # The next top-level targets while its key is offline (issue 10, ADR 0043).
        self._staged = StagedTargets(self.metadata_dir.with_name(self.name + STAGED_SUFFIX))

    # -- construction ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        metadata_dir: Path,
        signers: Mapping[str, Signer],
        clock: Clock,
        lifetimes: Mapping[str, timedelta],
        refresh_margin: float = 1 / 3,
        counters: RoleCounters | None = None,
    ) -> TufRepository:
        """Write version 1 of all four roles into an empty folder.

        Raises:
            ConflictError: the folder already holds a repository.
            StorageError: the folder is not writable.
        """
        repo = cls(metadata_dir, signers, clock, lifetimes, refresh_margin, counters)
        if repo.metadata_dir.exists() and any(repo.metadata_dir.glob("*.root.json")):
            raise ConflictError(f"a TUF repository already exists in {repo.metadata_dir}")
        now = _utc(clock.now())
        root = Root(expires=now + repo._lifetimes[Root.type], consistent_snapshot=True)
        for role in sorted(TOP_LEVEL_ROLE_NAMES):
            root.add_key(repo._signers[role].public_key, role)
        repo._root = Metadata(root)
        repo._targets = Metadata(Targets(expires=now + repo._lifetimes[Targets.type]))
        repo._snapshot = Metadata(Snapshot(expires=now + repo._lifetimes[Snapshot.type]))
        repo._timestamp = Metadata(Timestamp(expires=now + repo._lifetimes[Timestamp.type]))
        repo._record({r: 1 for r in TOP_LEVEL_ROLE_NAMES})
        for role in (Root.type, Targets.type, Snapshot.type, Timestamp.type):
            repo._store(role)
        return repo

    @classmethod
    def open(
        cls,
        metadata_dir: Path,
        signers: Mapping[str, Signer],
        clock: Clock,
        lifetimes: Mapping[str, timedelta],
        refresh_margin: float = 1 / 3,
        counters: RoleCounters | None = None,
    ) -> TufRepository:
        """Load the current metadata of an existing repository.

        The versions on disk are recorded in ``counters`` (adopting a store signed before
        the counters existed); versions on disk *below* the counters are reported by
        :meth:`behind` and signed above the counters at the next change.

        Raises:
            ConfigError: no repository there, its files are corrupt or badly signed, the
                given keys are not the ones its root trusts, or the root on disk is older
                than a root already published (see :meth:`reload`).
            StorageError: the counters could not be read or written.
        """
        repo = cls(metadata_dir, signers, clock, lifetimes, refresh_margin, counters)
        repo.reload()
        repo._record({r: repo.version(r) for r in TOP_LEVEL_ROLE_NAMES})
        return repo

    def reload(self) -> None:
        """Re-read the current metadata from disk (another process may have changed it).

        Raises:
            ConfigError: see :meth:`open`.
        """
        d = self.metadata_dir
        try:
            root_version = self._latest_root_version()
            if root_version is None:
                raise ConfigError(f"no TUF repository in {d}")
            root_bytes = (d / f"{root_version}.root.json").read_bytes()
            root = Metadata[Root].from_bytes(root_bytes)
            ts_bytes = (d / "timestamp.json").read_bytes()
            timestamp = Metadata[Timestamp].from_bytes(ts_bytes)
            snap_v = timestamp.signed.snapshot_meta.version
            snapshot = Metadata[Snapshot].from_bytes((d / f"{snap_v}.snapshot.json").read_bytes())
            targets_v = snapshot.signed.meta["targets.json"].version
            targets = Metadata[Targets].from_bytes((d / f"{targets_v}.targets.json").read_bytes())
            if not (
                isinstance(root.signed, Root)
                and isinstance(timestamp.signed, Timestamp)
                and isinstance(snapshot.signed, Snapshot)
                and isinstance(targets.signed, Targets)
            ):
                raise ConfigError(f"TUF metadata in {d} has the wrong role types")
            for md in (root, timestamp, snapshot, targets):
                root.signed.verify_delegate(md.signed.type, md.signed_bytes, md.signatures)
            delegated = _load_delegated(d, targets.signed, snapshot.signed)
        except (OSError, KeyError) as e:
            raise ConfigError(f"TUF metadata in {d} is incomplete: {e}") from e
        except RepositoryError as e:
            raise ConfigError(f"TUF metadata in {d} is corrupt: {e}") from e
        for role in TOP_LEVEL_ROLE_NAMES:
            if self._signers[role].public_key.keyid not in root.signed.roles[role].keyids:
                raise ConfigError(f"the {role} key does not match the root metadata in {d}")
        published_root = self._published().get(Root.type, 0)
        if root.signed.version < published_root:
            # Devices walk roots one by one from the one they hold: a root cannot be
            # re-signed above a missing one, so this store cannot be repaired by signing.
            raise ConfigError(
                f"the TUF store {d} holds root version {root.signed.version}, but root "
                f"version {published_root} was already published (the store was restored "
                "from an older copy?): restore the newer root files into it"
            )
        self._root, self._timestamp, self._snapshot, self._targets = (
            root,
            timestamp,
            snapshot,
            targets,
        )
        self._root_bytes, self._timestamp_bytes = root_bytes, ts_bytes
        self._delegated = delegated
        self._delegated_paths = {p: role for role, t in delegated.items() for p in t.targets}
        self._staged.load()
        if self._staged.md is not None and self._staged.md.signed.version <= targets_v:
            self._staged.clear()  # published meanwhile (apply-targets in another process)

    def is_current(self) -> bool:
        """True if the files on disk are still the ones last loaded or written."""
        try:
            ts = (self.metadata_dir / "timestamp.json").read_bytes()
        except OSError:
            return False
        return (
            ts == self._timestamp_bytes
            and self._latest_root_version() == self.version(Root.type)
            and self._staged.is_current()
        )

    # -- queries -----------------------------------------------------------------------

    def version(self, role: str) -> int:
        """Current version of a top-level role."""
        signed: Signed = self._md(role).signed
        return signed.version

    def expires(self, role: str) -> datetime:
        """Current expiry of a top-level role."""
        signed: Signed = self._md(role).signed
        return signed.expires

    def behind(self) -> dict[str, tuple[int, int]]:
        """Roles whose version on disk is below the published counter.

        Returns:
            ``{role: (version on disk, highest version published)}``; empty when the store
            is up to date (or there are no counters).
        """
        published = self._published()
        return {
            role: (self.version(role), published[role])
            for role in sorted(TOP_LEVEL_ROLE_NAMES)
            if published.get(role, 0) > self.version(role)
        }

    def target(self, path: str) -> TargetFile | None:
        """The signed entry for ``path`` (top-level or in a delegated release role), or
        None if not listed."""
        tf = self._targets.signed.targets.get(path)
        if tf is None and path in self._delegated_paths:
            tf = self._delegated[self._delegated_paths[path]].targets.get(path)
        return tf

    def delegated_roles(self) -> list[str]:
        """The release roles the top-level targets delegates to now, sorted."""
        return sorted(self._delegated)

    def target_paths(self) -> list[str]:
        """All listed target paths, sorted."""
        return sorted(self._targets.signed.targets)

    def has_target(self, path: str, sha256: str) -> bool:
        """True if ``path`` is listed with this sha256."""
        tf = self.target(path)
        return tf is not None and tf.hashes.get("sha256") == sha256

    def root_json(self) -> bytes:
        """The exact bytes of the current root metadata."""
        return self._root_bytes

    def metadata_path(self, filename: str) -> Path | None:
        """The file to serve for a metadata request, or None.

        Only ``timestamp.json`` and ``<N>.root.json`` / ``<N>.snapshot.json`` /
        ``<N>.targets.json`` are served; any other name (including path traversal) is None.
        """
        if not _METADATA_NAME.match(filename):
            return None
        path = self.metadata_dir / filename
        return path if path.is_file() else None

    # -- changes -----------------------------------------------------------------------

    def add_targets(self, entries: Mapping[str, TargetSpec]) -> bool:
        """Add or replace target files, in one new targets version.

        Args:
            entries: ``{target path: (length, sha256 hex, custom dict or None)}``.

        Returns:
            True if anything changed (False: every entry was already listed as given,
            and no new version was signed).

        Raises:
            InvalidInputError: a bad path, length or digest.
            StorageError: the metadata could not be written.
        """
        changes = self._target_files(entries)
        if not changes:
            return False
        with self._rollback_on_error():
            self._working().targets.update(changes)
            self._commit_targets()
        return True

    def update_targets(self, wanted: Mapping[str, TargetSpec], prefix: str = "") -> bool:
        """Make the targets under ``prefix`` exactly ``wanted``, in one new targets version.

        Args:
            wanted: ``{target path: (length, sha256 hex, custom or None)}``; every path
                must start with ``prefix``.
            prefix: listed paths starting with it that are not in ``wanted`` are removed.

        Returns:
            True if anything changed (False: nothing was signed).

        Raises:
            InvalidInputError: a bad path, length or digest.
            StorageError: the metadata could not be written.
        """
        changes = self._target_files(wanted)
        gone = [p for p in self._view().targets if p.startswith(prefix) and p not in wanted]
        if not changes and not gone:
            return False
        with self._rollback_on_error():
            working = self._working()
            for p in gone:
                del working.targets[p]
            working.targets.update(changes)
            self._commit_targets()
        return True

    def _target_files(self, entries: Mapping[str, TargetSpec]) -> dict[str, TargetFile]:
        changes: dict[str, TargetFile] = {}
        for path, (length, sha256, custom) in entries.items():
            _check_target_path(path)
            if length < 0 or not is_sha256(sha256):
                raise InvalidInputError(f"bad length or sha256 for target {path!r}")
            fields = {"custom": dict(custom)} if custom is not None else None
            tf = TargetFile(length, {"sha256": sha256}, path, fields)
            if self._view().targets.get(path) != tf:
                changes[path] = tf
        return changes

    def remove_targets(self, paths: Iterable[str]) -> bool:
        """Remove target files, in one new targets version.

        Returns:
            True if anything was removed (paths not listed are ignored).

        Raises:
            StorageError: the metadata could not be written.
        """
        gone = [p for p in paths if p in self._view().targets]
        if not gone:
            return False
        with self._rollback_on_error():
            working = self._working()
            for p in gone:
                del working.targets[p]
            self._commit_targets()
        return True

    def delegate_release(
        self, role: str, keys: Sequence[Key], threshold: int, metadata: bytes
    ) -> bool:
        """Delegate a release role's paths to ``keys`` with ``threshold`` (ADR 0027).

        ``metadata`` is the role's signed file as the approvers made it; it is checked to
        meet the threshold (the same check every device makes), stored as
        ``<version>.<role>.json`` and listed in the snapshot, then the top-level targets
        delegates exactly the paths it lists, terminating (one new targets version).

        Returns:
            True if delegated now (False: already delegated; nothing signed).

        Raises:
            InvalidInputError: malformed metadata, a bad path, fewer valid signatures of
                ``keys`` than ``threshold``, or a threshold below 1.
            ConflictError: one of its paths is already listed elsewhere in this repository.
            StorageError: the metadata could not be written.
        """
        if role in _delegated_names(self._view()):
            return False
        if threshold < 1 or threshold > len(keys):
            raise InvalidInputError(f"threshold {threshold} of {len(keys)} release key(s)")
        try:
            md = Metadata[Targets].from_bytes(metadata)
        except DeserializationError as e:
            raise InvalidInputError(f"release metadata for {role} is malformed: {e}") from e
        if not isinstance(md.signed, Targets) or md.signed.delegations is not None:
            raise InvalidInputError(f"release metadata for {role} is not a plain targets role")
        paths = sorted(md.signed.targets)
        for p in paths:
            _check_target_path(p)
            if self.target(p) is not None or p in self._view().targets:
                raise ConflictError(f"{p} is already listed in the {self.name} repository")
        delegation = DelegatedRole(role, [k.keyid for k in keys], threshold, True, paths=paths)
        probe = Targets(delegations=Delegations({k.keyid: k for k in keys}, {role: delegation}))
        try:
            probe.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as e:
            raise InvalidInputError(f"{role}: below its signature threshold ({e})") from e
        data = md.to_bytes()
        version = md.signed.version
        with self._rollback_on_error():
            atomic_write_bytes(self.metadata_dir / f"{version}.{role}.json", data)
            if not self.targets_offline:
                # Offline: listed in the snapshot when the signed targets is applied.
                self._snapshot.signed.meta[f"{role}.json"] = MetaFile(
                    version, len(data), {"sha256": sha256_bytes(data)}
                )
            top = self._working()
            if top.delegations is None or top.delegations.roles is None:
                top.delegations = Delegations({}, {})
            assert top.delegations.roles is not None
            top.delegations.keys.update({k.keyid: k for k in keys})
            top.delegations.roles[role] = delegation
            self._commit_targets()
        if not self.targets_offline:
            self._delegated[role] = md.signed
            self._delegated_paths.update(dict.fromkeys(paths, role))
        return True

    def revoke_release(self, role: str) -> bool:
        """Stop delegating to a release role (one new targets version); its paths are then
        listed nowhere. The role's file stays listed in the snapshot: clients refuse a
        snapshot that drops an entry, and no delegation reaches it any more.

        Returns:
            True if it was delegated (False: nothing signed).

        Raises:
            StorageError: the metadata could not be written.
        """
        if role not in _delegated_names(self._view()):
            return False
        with self._rollback_on_error():
            top = self._working()
            assert top.delegations is not None and top.delegations.roles is not None
            roles = top.delegations.roles
            del roles[role]
            used = {k for r in roles.values() for k in r.keyids}
            for keyid in [k for k in top.delegations.keys if k not in used]:
                del top.delegations.keys[keyid]
            if not roles:
                top.delegations = None
            self._commit_targets()
        if self.targets_offline:
            return True
        gone = self._delegated.pop(role, None)
        for p in gone.targets if gone is not None else ():
            self._delegated_paths.pop(p, None)
        return True

    def refresh_expiring(self, now: datetime | None = None) -> list[str]:
        """Re-sign every role with less than ``refresh_margin`` of its lifetime left.

        A re-signed targets forces a new snapshot and timestamp; a re-signed root is a
        new root version signed with the same keys (clients walk to it).

        Args:
            now: reference time; the repository's clock by default.

        Returns:
            The roles re-signed, in signing order.
        """
        t = _utc(now or self._clock.now())

        def due(role: str) -> bool:
            left = self.expires(role) - t
            return left < self._lifetimes[role] * self._margin

        done: list[str] = []
        root_due = due(Root.type)
        if root_due and isinstance(self._signers[Root.type], OfflineSigner):
            # An offline root is re-signed in the offline ceremony (ADR 0025), not here.
            _log.warning(
                "%s root expires %s and its key is offline: sign the next root offline",
                self.metadata_dir,
                self.expires(Root.type).isoformat(),
            )
            root_due = False
        with self._rollback_on_error():
            if root_due:
                self._bump(Root.type, t)
                self._store(Root.type)
                # Recorded after the file: a root version counted but never written would
                # leave a gap devices cannot walk over (see reload).
                self._record({Root.type: self.version(Root.type)})
                done.append(Root.type)
            targets = due(Targets.type)
            if targets and self.targets_offline:
                self._stage_renewal(t)
                targets = False
            snapshot = targets or due(Snapshot.type)
            timestamp = snapshot or due(Timestamp.type)
            self._commit(targets=targets, snapshot=snapshot, timestamp=timestamp, now=t)
        done += [
            r
            for r, flag in (
                (Targets.type, targets),
                (Snapshot.type, snapshot),
                (Timestamp.type, timestamp),
            )
            if flag
        ]
        return done

    # -- an offline targets key (issue 10, ADR 0043) -------------------------------------

    @property
    def targets_offline(self) -> bool:
        """True if the top-level targets key is offline: changes are staged for the
        targets ceremony instead of signed."""
        return isinstance(self._signers[Targets.type], OfflineSigner)

    def staged_targets(self) -> dict[str, Any] | None:
        """What waits for the offline targets signature, against what is published (see
        :func:`~modelfleet.trust.staged_targets.describe_targets`), or None."""
        md = self._staged.md
        return None if md is None else describe_targets(md.signed, self._targets.signed)

    def export_staged_targets(self) -> bytes:
        """The staged targets to sign offline, given a fresh expiry now (so the lifetime
        runs from the ceremony, not from the first change staged).

        Raises:
            ConflictError: nothing is staged.
            StorageError: the staged file could not be rewritten.
        """
        md = self._staged.md
        if md is None:
            raise ConflictError(f"no {self.name} targets waits for an offline signature")
        md.signed.expires = _utc(self._clock.now()) + self._lifetimes[Targets.type]
        return self._staged.save(md)

    def apply_staged_targets(self, data: bytes) -> list[str]:
        """Publish the staged targets signed offline, with a new snapshot and timestamp.

        Release roles it newly delegates to are listed in the snapshot from their files
        (each checked against its delegation's threshold when the store is re-read).

        Returns:
            The roles written, in order.

        Raises:
            ConflictError: nothing is staged, or ``data`` is not the staged content.
            InvalidInputError: ``data`` is not targets metadata.
            MetadataVerificationError: expired or below the targets threshold.
            ConfigError: a newly delegated release role's file is missing or invalid.
            StorageError: the metadata could not be written.
        """
        staged = self._staged.md
        if staged is None:
            raise ConflictError(f"no {self.name} targets waits for an offline signature")
        now = _utc(self._clock.now())
        md = check_signed_targets(data, staged, self._root.signed, now)
        version = md.signed.version
        with self._rollback_on_error():
            self._record({Targets.type: version})  # counted before the file (ADR 0007)
            out = md.to_bytes()
            atomic_write_bytes(self.metadata_dir / f"{version}.targets.json", out)
            self._targets = md
            meta = self._snapshot.signed.meta
            meta["targets.json"] = MetaFile(version, len(out), {"sha256": sha256_bytes(out)})
            for role in _delegated_names(md.signed):
                if f"{role}.json" not in meta:
                    meta[f"{role}.json"] = self._role_meta(role)
            self._commit(snapshot=True, now=now)
            self._staged.clear()
            self.reload()
        return [Targets.type, Snapshot.type, Timestamp.type]

    def _view(self) -> Targets:
        """The top-level targets as the next one will be (staged, else published)."""
        return self._staged.md.signed if self._staged.md is not None else self._targets.signed

    def _working(self) -> Targets:
        """The top-level targets to change: a staged copy while the key is offline (made
        from the published one if nothing is staged yet), else the published one."""
        if not self.targets_offline:
            return self._targets.signed
        if self._staged.md is None:
            self._staged.md = Metadata[Targets].from_bytes(self._targets.to_bytes())
        return self._staged.md.signed

    def _commit_targets(self) -> None:
        """Sign the changed top-level targets (and snapshot, timestamp), or, while its
        key is offline, save the staged copy at the next version for the ceremony."""
        if not self.targets_offline:
            self._commit(targets=True)
            return
        md = self._staged.md
        assert md is not None, "_working() made the staged copy"
        floor = max(self.version(Targets.type), self._published().get(Targets.type, 0))
        md.signed.version = floor + 1
        md.signed.expires = _utc(self._clock.now()) + self._lifetimes[Targets.type]
        self._staged.save(md)
        _log.warning(
            "%s targets version %d waits for its offline signature (`modelfleet keys "
            "export-targets`, `keys sign-targets`, `keys apply-targets`)",
            self.name,
            md.signed.version,
        )

    def _stage_renewal(self, now: datetime) -> None:
        """The published targets is close to expiry and its key is offline: stage a copy
        for the ceremony (once; a change already staged renews it as well)."""
        if self._staged.md is None:
            self._working()
            self._commit_targets()
        _log.warning(
            "%s targets expires %s and its key is offline: sign the staged targets offline",
            self.name,
            self.expires(Targets.type).isoformat(),
        )

    def _role_meta(self, role: str) -> MetaFile:
        versions = [
            int(p.name.split(".", 1)[0])
            for p in self.metadata_dir.glob(f"*.{role}.json")
            if p.name.split(".", 1)[0].isdigit()
        ]
        if not versions:
            raise ConfigError(f"release role {role} has no metadata file in {self.metadata_dir}")
        data = (self.metadata_dir / f"{max(versions)}.{role}.json").read_bytes()
        return MetaFile(max(versions), len(data), {"sha256": sha256_bytes(data)})

    # -- root rotation (issue 10, ADR 0025) -----------------------------------------------

    def next_root(self) -> Metadata[Root]:
        """An unsigned copy of the current root, version + 1, with a fresh expiry.

        The caller changes its keys, signs it (here or on an offline machine) and hands it
        to :meth:`install_root`.
        """
        md = Metadata[Root].from_bytes(self._root_bytes)
        md.signatures.clear()
        md.signed.version += 1
        md.signed.expires = _utc(self._clock.now()) + self._lifetimes[Root.type]
        return md

    def use_signers(self, signers: Mapping[str, Signer]) -> None:
        """Sign with ``signers`` from now on (the keys changed on disk; call :meth:`reload`
        next, which checks them against the root)."""
        self._signers = {**self._signers, **signers}

    def check_next_root(self, root: Metadata[Root]) -> None:
        """Verify ``root`` as the next root, as a device walking the chain would.

        Raises:
            MetadataVerificationError: not the next version, expired, or not signed by a
                threshold of the current root's root keys *and* of its own (TUF 5.3.4).
        """
        if not isinstance(root.signed, Root):
            raise MetadataVerificationError(f"{self.name}: not root metadata")
        want = self.version(Root.type) + 1
        if root.signed.version != want:
            raise MetadataVerificationError(
                f"{self.name}: root version {root.signed.version} is not the next one ({want})"
            )
        if root.signed.is_expired(_utc(self._clock.now())):
            raise MetadataVerificationError(f"{self.name}: root version {want} is expired")
        for who, trusted in (("current", self._root.signed), ("new", root.signed)):
            result = trusted.get_verification_result(Root.type, root.signed_bytes, root.signatures)
            if not result.verified:
                raise MetadataVerificationError(
                    f"{self.name}: root version {want} has {len(result.signed)} of the "
                    f"{result.threshold} signatures the {who} root's keys must give"
                )

    def install_root(self, root: Metadata[Root], signers: Mapping[str, Signer]) -> list[str]:
        """Adopt ``root`` (already signed) as the next root version, then re-sign every
        top-level role whose keys it changed, with ``signers``.

        Args:
            root: the next root, checked with :meth:`check_next_root`.
            signers: the signers to use from now on, for at least the roles whose keys
                changed (other roles keep theirs).

        Returns:
            The roles written, ``root`` first.

        Raises:
            MetadataVerificationError: see :meth:`check_next_root`.
            ConfigError: a signer's key is not the one ``root`` lists for its role.
            StorageError: the metadata could not be written.
        """
        self.check_next_root(root)
        new_signers = {**self._signers, **signers}
        for role in TOP_LEVEL_ROLE_NAMES:
            if new_signers[role].public_key.keyid not in root.signed.roles[role].keyids:
                raise ConfigError(f"{self.name}: the new root does not list the {role} key")
        old = self._root.signed
        changed = {
            role
            for role in TOP_LEVEL_ROLE_NAMES - {Root.type}
            if set(old.roles[role].keyids) != set(root.signed.roles[role].keyids)
        }
        if Targets.type in changed and isinstance(new_signers[Targets.type], OfflineSigner):
            # An offline targets key cannot re-sign here: the published targets must
            # already carry its signature (given in the targets ceremony, ADR 0043).
            result = root.signed.get_verification_result(
                Targets.type, self._targets.signed_bytes, self._targets.signatures
            )
            if not result.verified:
                raise ConfigError(
                    f"{self.name}: the new root's targets keys are offline and have not "
                    "signed the current targets; add the offline key first (`modelfleet "
                    "keys create targets --out FILE`), have it sign the targets (`keys "
                    "export-targets`, `keys sign-targets`, `keys apply-targets`), then "
                    "retire the online key"
                )
            changed.discard(Targets.type)
        data = root.to_bytes()
        with self._rollback_on_error():
            atomic_write_bytes(self.metadata_dir / f"{root.signed.version}.root.json", data)
            self._record({Root.type: root.signed.version})
            self._root, self._root_bytes, self._signers = root, data, new_signers
            self._commit(
                targets=Targets.type in changed,
                snapshot=Snapshot.type in changed,
                timestamp=Timestamp.type in changed,
            )
        order = (Targets.type, Snapshot.type, Timestamp.type)
        resigned = [r for i, r in enumerate(order) if any(c in changed for c in order[: i + 1])]
        return [Root.type, *resigned]

    # -- internals ---------------------------------------------------------------------

    def _md(self, role: str) -> Metadata[Any]:
        mds: dict[str, Metadata[Any]] = {
            Root.type: self._root,
            Targets.type: self._targets,
            Snapshot.type: self._snapshot,
            Timestamp.type: self._timestamp,
        }
        try:
            return mds[role]
        except KeyError:
            raise InvalidInputError(f"unknown role {role!r}") from None

    def _latest_root_version(self) -> int | None:
        versions = [
            int(m.group(1))
            for p in self.metadata_dir.glob("*.root.json")
            if (m := _VERSIONED.match(p.name))
        ]
        return max(versions, default=None)

    @contextlib.contextmanager
    def _rollback_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            # In-memory state may be half changed; the files on disk are always whole.
            with contextlib.suppress(ConfigError):
                self.reload()
            raise

    def _bump(self, role: str, now: datetime, floor: int = 0) -> None:
        signed: Signed = self._md(role).signed
        signed.version = max(signed.version, floor) + 1
        signed.expires = now + self._lifetimes[role]

    def _published(self) -> Mapping[str, int]:
        return self._counters.published(self.name) if self._counters is not None else {}

    def _record(self, versions: Mapping[str, int]) -> None:
        if self._counters is not None:
            self._counters.record(self.name, versions)

    def _commit(
        self,
        *,
        targets: bool = False,
        snapshot: bool = False,
        timestamp: bool = False,
        now: datetime | None = None,
    ) -> None:
        t = now or _utc(self._clock.now())
        roles = [
            role
            for role, flag in (
                (Targets.type, targets),
                (Snapshot.type, targets or snapshot),
                (Timestamp.type, targets or snapshot or timestamp),
            )
            if flag
        ]
        if not roles:
            return
        adopt = targets and self._staged.md is not None
        if adopt:
            # The targets key is online again: what was staged for it is signed now.
            assert self._staged.md is not None
            self._targets = Metadata(self._staged.md.signed)
        published = self._published()
        for role in roles:
            if published.get(role, 0) > self.version(role):
                _log.warning(
                    "TUF store %s holds %s version %d but version %d was published "
                    "(restored from an older copy?); signing version %d",
                    self.metadata_dir,
                    role,
                    self.version(role),
                    published[role],
                    published[role] + 1,
                )
            self._bump(role, t, published.get(role, 0))
        # Counted before any file is written: a crash in between skips a version, which
        # clients accept, but never lets a later signing reuse one.
        self._record({role: self.version(role) for role in roles})
        for role in roles:
            self._store(role)
        if adopt:
            self._staged.clear()
        self._prune()

    def _store(self, role: str) -> None:
        md = self._md(role)
        md.sign(self._signers[role])
        data = md.to_bytes()
        version = md.signed.version
        name = "timestamp.json" if role == Timestamp.type else f"{version}.{role}.json"
        atomic_write_bytes(self.metadata_dir / name, data)
        meta = MetaFile(version, len(data), {"sha256": sha256_bytes(data)})
        if role == Targets.type:
            self._snapshot.signed.meta["targets.json"] = meta
        elif role == Snapshot.type:
            self._timestamp.signed.snapshot_meta = meta
        elif role == Root.type:
            self._root_bytes = data
        else:
            self._timestamp_bytes = data

    def _prune(self) -> None:
        current = {
            Targets.type: self.version(Targets.type),
            Snapshot.type: self.version(Snapshot.type),
        }
        for p in self.metadata_dir.glob("*.json"):
            m = _VERSIONED.match(p.name)
            if (
                m
                and m.group(2) in current
                and int(m.group(1)) <= current[m.group(2)] - KEEP_VERSIONS
            ):
                with contextlib.suppress(OSError):
                    p.unlink()


def _load_delegated(d: Path, top: Targets, snapshot: Snapshot) -> dict[str, Targets]:
    """Load and verify every release role ``top`` delegates to, at the snapshot's version.

    Raises:
        KeyError: the snapshot does not list a delegated role.
        OSError: its file is missing.
        RepositoryError: it does not meet its delegation's threshold.
    """
    out: dict[str, Targets] = {}
    if top.delegations is None or not top.delegations.roles:
        return out
    for role in top.delegations.roles:
        meta = snapshot.meta[f"{role}.json"]
        md = Metadata[Targets].from_bytes((d / f"{meta.version}.{role}.json").read_bytes())
        top.verify_delegate(role, md.signed_bytes, md.signatures)
        if not isinstance(md.signed, Targets):
            raise ConfigError(f"release role {role} in {d} is not a targets role")
        out[role] = md.signed
    return out


def _delegated_names(targets: Targets) -> set[str]:
    """The role names ``targets`` delegates to."""
    if targets.delegations is None or targets.delegations.roles is None:
        return set()
    return set(targets.delegations.roles)

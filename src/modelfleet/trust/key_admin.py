"""Creating, rotating and retiring the hub's keys (``modelfleet keys``; issue 10, ADR 0025).

Every key change is a root change: the next root of each repository the role lives in
(both for ``root``; the catalog for ``targets``/``snapshot``/``timestamp``) gets the new
key ids and loses the retired ones, at version + 1, and must be signed by a threshold of
the current root keys *and* of its own root keys (TUF 5.3.4), so a device that slept
through any number of rotations walks ``N.root.json`` one by one and follows.

When the hub holds the root keys the change is signed and installed at once. When a root
key is offline the signed-so-far roots are kept in ``HOME/keys/pending-root.json``;
``export_root`` hands them out, ``modelfleet keys sign-root`` signs them on the offline
machine and :meth:`KeyAdmin.apply_root` checks and installs them. After the new roots are
installed the roles whose keys changed are re-signed with the new keys, the registry marks
the new keys active and the replaced ones retired (their key files are deleted), and
``trust-root.json`` is rewritten for new devices.

The ``director`` key also signs every per-device director repository, kept in the hub's
database (ADR 0014): this module changes the director root and the shared director's roles
and hands the new key to the trust store's per-device signer; the hub's
:class:`~modelfleet.hub.director.Director` then re-signs every device row signed by
another key (ADR 0039), here through the CLI and in any running hub.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import Root

from modelfleet._atomic import atomic_write_bytes
from modelfleet.clock import Clock
from modelfleet.errors import ConfigError, ConflictError, InvalidInputError, StorageError
from modelfleet.trust._key_files import encrypt_key_file
from modelfleet.trust.hub_trust import HubTrust
from modelfleet.trust.key_registry import (
    OFFLINE,
    ROLES,
    KeyRecord,
    KeyRegistry,
    KeyState,
    transition,
)
from modelfleet.trust.keys import (
    OfflineSigner,
    SecretsHandler,
    new_file_key,
    new_uri_key,
    signer_for,
)
from modelfleet.trust.root_signing import RootBundle, parse_bundle

__all__ = ["PENDING_ROOT_FILE", "ROLE_PLACES", "KeyAdmin", "KeyChange"]

PENDING_ROOT_FILE = "pending-root.json"

ROLE_PLACES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "root": (("catalog", ("root",)), ("director", ("root",))),
    "targets": (("catalog", ("targets",)),),
    "snapshot": (("catalog", ("snapshot",)),),
    "timestamp": (("catalog", ("timestamp",)),),
    "director": (("director", ("targets", "snapshot", "timestamp")),),
}
"""Where each hub key role is listed: ``((repository, (TUF roles...)), ...)``."""

_LISTED_IN = {**ROLE_PLACES, "timestamp": (("catalog", ("timestamp", "snapshot")),)}
"""Where a key of each role may be listed: a timestamp key may also sign the catalog's
snapshot (ADR 0043)."""


@dataclass(frozen=True, slots=True)
class KeyChange:
    """What one key operation did.

    Attributes:
        action: ``create``, ``rotate``, ``retire`` or ``apply-root``.
        role: the key role changed.
        added: key ids added (pending until the new roots are installed).
        retired: key ids retired.
        written: ``"<repo>/<role>"`` of every metadata file signed.
        pending: the new roots wait for offline signatures (see ``status``).
        status: per repository, signatures given / needed (see
            :meth:`~modelfleet.trust.root_signing.RootBundle.status`).
    """

    action: str
    role: str
    added: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    pending: bool = False
    status: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The change as JSON-ready data."""
        return {
            "action": self.action,
            "role": self.role,
            "added": self.added,
            "retired": self.retired,
            "written": self.written,
            "pending": self.pending,
            "status": self.status,
        }


class KeyAdmin:
    """Key operations on one hub home's key folder and trust store.

    Callers run one at a time per home (the CLI); the trust store's own lock keeps a
    running hub's signing consistent meanwhile, and the running hub re-reads the registry
    when it finds roots with other keys (see :class:`~modelfleet.trust.hub_trust.HubTrust`).

    Args:
        key_dir: ``HOME/keys``.
        trust: the home's trust store, opened with the same keys.
        clock: time source for key records and new roots.
        passphrase: encrypts new key files and decrypts existing ones.
        secrets: answers signer URIs' secret requests (an HSM's PIN).
        trust_root_file: ``HOME/trust-root.json``, rewritten after a root change.
    """

    def __init__(
        self,
        key_dir: Path,
        trust: HubTrust,
        clock: Clock,
        passphrase: bytes | None = None,
        secrets: SecretsHandler | None = None,
        trust_root_file: Path | None = None,
    ) -> None:
        self.key_dir = Path(key_dir)
        self.trust = trust
        self.clock = clock
        self.passphrase = passphrase
        self.secrets = secrets
        self.trust_root_file = trust_root_file

    @property
    def pending_file(self) -> Path:
        """Where next roots wait for offline signatures."""
        return self.key_dir / PENDING_ROOT_FILE

    # -- queries -----------------------------------------------------------------------

    def keys(self) -> list[dict[str, Any]]:
        """Every key: id, role, state, location, times, and the roots listing it."""
        registry = self.reconcile()
        roots = self.trust.roots()
        out = []
        for r in registry.records():
            listed = [
                repo
                for repo, tuf_roles in _LISTED_IN[r.role]
                if any(r.keyid in roots[repo].roles[t].keyids for t in tuf_roles)
            ]
            out.append({**r.to_dict(), "in_roots": listed})
        return out

    def reconcile(self) -> KeyRegistry:
        """Bring the registry in step with the installed roots (a change interrupted
        between installing roots and saving the registry is finished here).

        Returns:
            The registry, saved if anything changed.
        """
        registry = KeyRegistry.load(self.key_dir)
        if self.pending_file.exists():
            return registry
        changed = _finalise(registry, self.trust.roots(), self._now())
        if changed:
            registry.save()
            self._delete_files(changed)
        return registry

    # -- changes -----------------------------------------------------------------------

    def create(
        self,
        role: str,
        *,
        out: Path | None = None,
        uri: str | None = None,
        public_key: Key | None = None,
    ) -> KeyChange:
        """Add a new key to ``role`` (its other keys stay).

        Args:
            role: one of :data:`~modelfleet.trust.key_registry.ROLES`.
            out: write the new private key to this file instead of the key folder (an
                offline key).
            uri: the new key lives behind this signer URI (``hsm:...``); ``public_key``
                is its public key.
            public_key: see ``uri``.

        Raises:
            InvalidInputError: unknown role, ``out`` and ``uri`` both given, or ``out``
                for the ``director`` (an online key).
            ConflictError: another root change waits for offline signatures.
        """
        return self._change("create", role, out, uri, public_key, retire_all=False)

    def rotate(
        self,
        role: str,
        *,
        out: Path | None = None,
        uri: str | None = None,
        public_key: Key | None = None,
    ) -> KeyChange:
        """Replace ``role``'s active keys by one new key (arguments as :meth:`create`).

        Rotating ``root``: the next roots are signed by the old and the new root key.
        """
        return self._change("rotate", role, out, uri, public_key, retire_all=True)

    def retire(self, keyid: str) -> KeyChange:
        """Retire one key: a pending key is dropped; an active key leaves the roots.

        Raises:
            NotFoundError: no such key.
            ConflictError: the key is already retired, or retiring it would leave its
                role with fewer keys than its threshold (rotate instead).
        """
        registry = self.reconcile()
        record = registry.get(keyid)
        if record.state is KeyState.RETIRED:
            raise ConflictError(f"key {record.keyid[:16]} is already retired")
        if record.state is KeyState.PENDING:
            self._refuse_pending()
            registry.put(transition(record, KeyState.RETIRED, self._now()))
            registry.save()
            self._delete_files([record])
            return KeyChange("retire", record.role, retired=[record.keyid])
        return self._apply_change("retire", registry, record.role, [], {}, [record.keyid])

    def sign_snapshot_with_timestamp_key(self) -> KeyChange:
        """List the active timestamp key(s) for the catalog's snapshot role and retire its
        snapshot keys: one online key then signs both (TUF allows a key in several roles;
        issue 10, ADR 0043). ``rotate snapshot`` gives the role its own key again.

        Raises:
            ConflictError: another root change waits for offline signatures.
        """
        self._refuse_pending()
        registry = self.reconcile()
        timestamp = registry.active("timestamp")
        retire = [r.keyid for r in registry.active("snapshot")]
        return self._apply_change("rotate", registry, "snapshot", timestamp, {}, retire)

    def staged_targets(self) -> dict[str, Any] | None:
        """What waits for the catalog targets' offline signature, or None."""
        return self.trust.staged_catalog_targets()

    def export_targets(self) -> bytes:
        """The staged catalog targets to sign offline (``keys sign-targets``).

        Raises:
            ConflictError: nothing waits for a signature.
        """
        return self.trust.export_catalog_targets()

    def apply_targets(self, data: bytes) -> KeyChange:
        """Publish the catalog targets signed offline (checked against what is staged and
        the root's targets keys; see :meth:`HubTrust.apply_catalog_targets`)."""
        written = self.trust.apply_catalog_targets(data)
        return KeyChange("apply-targets", "targets", written=written)

    def export_root(self) -> bytes:
        """The roots waiting for offline signatures (``pending-root.json``).

        Raises:
            ConflictError: nothing is waiting.
        """
        try:
            return self.pending_file.read_bytes()
        except FileNotFoundError:
            raise ConflictError("no root change is waiting for offline signatures") from None
        except OSError as e:
            raise StorageError(f"cannot read {self.pending_file}: {e.strerror or e}") from e

    def discard_root(self) -> KeyChange:
        """Drop the roots waiting for offline signatures; their new keys are retired.

        Raises:
            ConflictError: nothing is waiting.
        """
        bundle = parse_bundle(self.export_root())
        registry = KeyRegistry.load(self.key_dir)
        dropped = []
        for record in registry.pending():
            if any(record.keyid in md.signed.keys for md in bundle.roots.values()):
                registry.put(transition(record, KeyState.RETIRED, self._now()))
                dropped.append(record)
        registry.save()
        self._delete_files(dropped)
        self.pending_file.unlink()
        return KeyChange("discard-root", "root", retired=[r.keyid for r in dropped])

    def apply_root(self, data: bytes) -> KeyChange:
        """Install next roots signed offline (a bundle from ``sign-root``).

        Each root must be the next version of its repository's root, signed by a
        threshold of the current root keys and of its own; all are installed or none.

        Raises:
            InvalidInputError: not a root-signing bundle.
            MetadataVerificationError: a root does not chain (below threshold, wrong
                version, expired); nothing is installed.
        """
        bundle = parse_bundle(data)
        registry = KeyRegistry.load(self.key_dir)
        written = self._install(registry, bundle)
        with contextlib.suppress(FileNotFoundError):
            self.pending_file.unlink()
        return KeyChange("apply-root", "root", written=written, status=bundle.status())

    def encrypt(self, also: Iterable[str] = ()) -> list[str]:
        """Encrypt every unencrypted key file of the folder with the passphrase, each
        atomically and mode 0600 (an encrypted or missing file is left alone).

        Args:
            also: names of other key files in the folder, outside the registry (the CLI
                names the audit key and the model-signing key; they belong to the hub
                and packaging layers, which this module does not import).

        Returns:
            The files encrypted.

        Raises:
            ConfigError: no passphrase was given, or a file is unreadable or corrupt.
            StorageError: a file could not be written.
        """
        if not self.passphrase:
            raise ConfigError("give the passphrase to encrypt with (MODELFLEET_KEY_PASSPHRASE)")
        names = [
            record.file
            for record in KeyRegistry.load(self.key_dir).records()
            if record.file is not None and record.state is not KeyState.RETIRED
        ]
        return [
            name
            for name in [*names, *also]
            if encrypt_key_file(self.key_dir / name, self.passphrase)
        ]

    # -- internals ---------------------------------------------------------------------

    def _now(self) -> Any:
        return self.clock.now().astimezone(UTC).replace(microsecond=0)

    def _refuse_pending(self) -> None:
        if self.pending_file.exists():
            raise ConflictError(
                "a root change waits for offline signatures: `modelfleet keys export-root`, "
                "sign it, then `keys apply-root` (or `keys discard-root`)"
            )

    def _change(
        self,
        action: str,
        role: str,
        out: Path | None,
        uri: str | None,
        public_key: Key | None,
        *,
        retire_all: bool,
    ) -> KeyChange:
        if role not in ROLES:
            raise InvalidInputError(f"unknown key role {role!r}; one of {', '.join(ROLES)}")
        if out is not None and uri is not None:
            raise InvalidInputError("give either an output file or a signer URI, not both")
        if role == "director" and out is not None:
            # It signs every device's own repository as devices' states change (ADR 0039).
            raise InvalidInputError("the director key signs online: it cannot be an offline key")
        self._refuse_pending()
        registry = self.reconcile()
        now = self._now()
        signers: dict[str, Signer] = {}
        if uri is not None:
            if public_key is None:
                raise InvalidInputError("a signer URI needs its public key")
            record = new_uri_key(role, now, uri, public_key)
            signers[record.keyid] = signer_for(record, self.key_dir, None, self.secrets)
        else:
            record, signer = new_file_key(self.key_dir, role, now, self.passphrase, out)
            signers[record.keyid] = signer
        if record.keyid in {r.keyid for r in registry.records()}:
            raise ConflictError(f"key {record.keyid[:16]} is already known to the hub")
        registry.put(record)
        registry.save()
        retire = [r.keyid for r in registry.active(role)] if retire_all else []
        if retire_all and role == "snapshot":
            # A snapshot signed with the timestamp key (ADR 0043) gets its own key again.
            shared = self.trust.roots()["catalog"].roles["snapshot"].keyids
            retire += [r.keyid for r in registry.active("timestamp") if r.keyid in shared]
        try:
            return self._apply_change(action, registry, role, [record], signers, retire)
        except BaseException:
            # Nothing lists the new key: retire it, so no unused private key stays around.
            left = KeyRegistry.load(self.key_dir)
            mine = left.get(record.keyid)
            if mine.state is KeyState.PENDING and not self.pending_file.exists():
                left.put(transition(mine, KeyState.RETIRED, now))
                left.save()
                self._delete_files([left.get(record.keyid)])
            raise

    def _apply_change(
        self,
        action: str,
        registry: KeyRegistry,
        role: str,
        add: Iterable[KeyRecord],
        new_signers: Mapping[str, Signer],
        retire: Iterable[str],
    ) -> KeyChange:
        self._refuse_pending()
        add, retire = list(add), list(retire)
        current = self.trust.roots()
        places = ROLE_PLACES[role]
        shared = set(current["catalog"].roles["snapshot"].keyids)
        if role == "timestamp" and shared & set(current["catalog"].roles["timestamp"].keyids):
            places = _LISTED_IN[role]  # the snapshot is signed with the timestamp key
        repos = [repo for repo, _ in places]
        roots = self.trust.next_roots(repos)
        for repo, tuf_roles in places:
            root = roots[repo].signed
            for tuf_role in tuf_roles:
                for record in add:
                    root.add_key(record.public_key, tuf_role)
                for keyid in retire:
                    if keyid in root.roles[tuf_role].keyids:
                        root.revoke_key(keyid, tuf_role)
                left = len(root.roles[tuf_role].keyids)
                if left < root.roles[tuf_role].threshold:
                    raise ConflictError(
                        f"{repo}/{tuf_role} would keep {left} key(s), below its threshold "
                        f"{root.roles[tuf_role].threshold}: rotate the key instead"
                    )
        # Signed here with every root key this machine holds: the current ones and, for
        # a root rotation, the new one (offline ones sign in the ceremony).
        root_signers = [
            s
            for r in registry.records()
            if r.role == "root" and r.state is KeyState.ACTIVE and r.location != OFFLINE
            for s in [signer_for(r, self.key_dir, self.passphrase, self.secrets)]
        ]
        if role == "root":
            root_signers += list(new_signers.values())
        for md in roots.values():
            for signer in root_signers:
                if not isinstance(signer, OfflineSigner):
                    md.sign(signer, append=True)
        bundle = RootBundle.make(roots, current)
        status = bundle.status()
        added = [r.keyid for r in add]
        if not all(s["ready"] for s in status.values()):
            if role == "targets" and retire and any(r.location == OFFLINE for r in add):
                # After the ceremony no key here could sign the targets the new root
                # needs: the offline key must sign it first (ADR 0043).
                raise ConflictError(
                    "with the root key offline, make the targets key offline in steps: "
                    "`modelfleet keys create targets --out FILE` (and apply that root), sign "
                    "the targets with it (`keys export-targets`, `keys sign-targets`, `keys "
                    "apply-targets`), then `keys retire` the online targets key"
                )
            atomic_write_bytes(self.pending_file, bundle.to_bytes(), mode=0o600)
            return KeyChange(action, role, added=added, pending=True, status=status)
        written = self._install(registry, bundle, new_signers)
        return KeyChange(
            action, role, added=added, retired=retire, written=written, status=bundle.status()
        )

    def _install(
        self, registry: KeyRegistry, bundle: RootBundle, fresh: Mapping[str, Signer] | None = None
    ) -> list[str]:
        """Install the bundle's roots and re-sign with the registry's keys; ``fresh``
        (by key id) are signers of keys made by this change, used while they are still in
        hand (a new offline targets key signs the targets once, here)."""
        after = KeyRegistry(self.key_dir, registry.records())
        roots = self.trust.roots()
        roots.update({repo: md.signed for repo, md in bundle.roots.items()})
        changed = _finalise(after, roots, self._now())
        signers = self._role_signers(after, fresh or {})
        written = self.trust.install_roots(bundle.roots, signers, on_installed=after.save)
        self._delete_files([r for r in changed if r.state is KeyState.RETIRED])
        if self.trust_root_file is not None:
            atomic_write_bytes(self.trust_root_file, self.trust.trust_root_bundle(), mode=0o644)
        return written

    def _role_signers(
        self, registry: KeyRegistry, fresh: Mapping[str, Signer]
    ) -> dict[str, dict[str, Signer]]:
        def pick(role: str) -> Signer | None:
            records = registry.active(role)
            online = [r for r in records if r.location != OFFLINE]
            chosen = online or records
            if not chosen:
                return None
            if chosen[-1].keyid in fresh:
                return fresh[chosen[-1].keyid]
            return signer_for(chosen[-1], self.key_dir, self.passphrase, self.secrets)

        out: dict[str, dict[str, Signer]] = {"catalog": {}, "director": {}}
        for role, places in ROLE_PLACES.items():
            signer = pick(role)
            if signer is None:
                continue
            for repo, tuf_roles in places:
                for tuf_role in tuf_roles:
                    out[repo][tuf_role] = signer
        if "snapshot" not in out["catalog"] and "timestamp" in out["catalog"]:
            out["catalog"]["snapshot"] = out["catalog"]["timestamp"]  # ADR 0043
        return out

    def _delete_files(self, records: Iterable[KeyRecord]) -> None:
        for record in records:
            if record.state is KeyState.RETIRED and record.file is not None:
                with contextlib.suppress(FileNotFoundError):
                    (self.key_dir / record.file).unlink()


def _finalise(registry: KeyRegistry, roots: Mapping[str, Root], now: Any) -> list[KeyRecord]:
    """Pending keys the roots list become active; active keys they no longer list are
    retired. Returns the records changed (as changed)."""
    changed = []
    for record in registry.records():
        listed = any(
            record.keyid in roots[repo].roles[t].keyids
            for repo, tuf_roles in _LISTED_IN[record.role]
            for t in tuf_roles
        )
        if record.state is KeyState.PENDING and listed:
            new = transition(record, KeyState.ACTIVE, now)
        elif record.state is KeyState.ACTIVE and not listed:
            new = transition(record, KeyState.RETIRED, now)
        else:
            continue
        registry.put(new)
        changed.append(new)
    return changed

"""The hub's two TUF repositories (catalog and director) kept together under one lock.

:class:`HubTrust` wraps one :class:`~modelfleet.trust.repository.TufRepository` per
repository name and serialises every change across threads and processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import Metadata, Root

from modelfleet.catalog.artefacts import is_sha256
from modelfleet.clock import Clock
from modelfleet.errors import ConfigError, ConflictError, InvalidInputError, StorageError
from modelfleet.rollout.desired_state import (
    desired_state_target_path,
    manifest_target_path,
    model_target_path,
)
from modelfleet.trust.bundle import REPOSITORIES, make_trust_root_bundle
from modelfleet.trust.device_repo import DeviceRepoSigner
from modelfleet.trust.keys import SecretsHandler, load_signers, online_key_path
from modelfleet.trust.release import release_role_name
from modelfleet.trust.repository import ExpiryPolicy, RoleCounters, TargetSpec, TufRepository

__all__ = ["HubTrust"]

_log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class HubTrust:
    """The hub's two repositories (catalog and director) under one lock.

    Layout: ``tuf_dir/catalog/``, ``tuf_dir/director/`` (metadata folders) and
    ``tuf_dir/.lock``. Every change takes an exclusive ``flock`` on the lock file and
    re-reads the metadata first, so several hub processes (or threads) never sign two
    different files with the same version. Reads take a shared lock and re-read only when
    ``timestamp.json`` or the root version changed on disk.

    With :class:`~modelfleet.trust.repository.RoleCounters` (the hub passes its database),
    no role is ever signed at or below a version already published, even after an older
    copy of the store was put back (ADR 0007).
    """

    def __init__(
        self,
        tuf_dir: Path,
        repos: Mapping[str, TufRepository],
        device_signer: DeviceRepoSigner | None = None,
    ) -> None:
        """Wrap already loaded repositories; use :meth:`init` or :meth:`open`, not this."""
        self.tuf_dir = Path(tuf_dir)
        self._repos = dict(repos)
        self._thread_lock = threading.Lock()
        self._device_signer = device_signer
        # Re-reads the key registry when another process changed the keys (issue 10).
        self._reload_keys: Callable[[], dict[str, dict[str, Signer]]] | None = None
        # Builds the per-device signer for a new director key (issue 10, ADR 0039).
        self._new_device_signer: Callable[[Signer], DeviceRepoSigner] | None = None

    # -- construction ------------------------------------------------------------------

    @staticmethod
    def _repo_args(
        tuf_dir: Path,
        key_dir: Path,
        clock: Clock,
        expiry: ExpiryPolicy | None,
        counters: RoleCounters | None,
        passphrase: bytes | None = None,
        secrets: SecretsHandler | None = None,
    ) -> dict[
        str,
        tuple[Path, dict[str, Signer], Clock, dict[str, timedelta], float, RoleCounters | None],
    ]:
        policy = expiry or ExpiryPolicy()
        signers = _repo_signers(key_dir, passphrase, secrets)
        return {
            repo: (
                Path(tuf_dir) / repo,
                signers[repo],
                clock,
                policy.lifetimes(repo),
                policy.refresh_margin,
                counters,
            )
            for repo in REPOSITORIES
        }

    @classmethod
    def _with_keys(
        cls,
        tuf_dir: Path,
        args: Mapping[str, tuple[Path, dict[str, Signer], Clock, Any, float, Any]],
        key_dir: Path,
        workers: int,
        passphrase: bytes | None,
        secrets: SecretsHandler | None,
        expiry: ExpiryPolicy | None,
    ) -> HubTrust:
        policy = expiry or ExpiryPolicy()

        def device_signer(signer: Signer) -> DeviceRepoSigner:
            return _device_signer(signer, key_dir, workers, passphrase, policy)

        hub = cls(tuf_dir, {}, device_signer(args["director"][1]["timestamp"]))
        hub._reload_keys = lambda: _repo_signers(key_dir, passphrase, secrets)
        hub._new_device_signer = device_signer
        return hub

    @classmethod
    def init(
        cls,
        tuf_dir: Path,
        key_dir: Path,
        clock: Clock,
        expiry: ExpiryPolicy | None = None,
        counters: RoleCounters | None = None,
        signing_workers: int = 1,
        *,
        passphrase: bytes | None = None,
        secrets: SecretsHandler | None = None,
    ) -> HubTrust:
        """Create both repositories' initial signed metadata.

        Keys must already exist (see :func:`modelfleet.trust.keys.generate_keys`).

        Raises:
            ConfigError: keys missing or corrupt.
            ConflictError: a repository already exists under ``tuf_dir``.
            StorageError: ``tuf_dir`` is not writable.
        """
        args = cls._repo_args(tuf_dir, key_dir, clock, expiry, counters, passphrase, secrets)
        hub = cls._with_keys(tuf_dir, args, key_dir, signing_workers, passphrase, secrets, expiry)
        with hub._locked(exclusive=True):
            for repo in REPOSITORIES:
                if any((Path(tuf_dir) / repo).glob("*.root.json")):
                    raise ConflictError(f"TUF repositories already exist in {tuf_dir}")
            hub._repos = {repo: TufRepository.create(*args[repo]) for repo in REPOSITORIES}
        return hub

    @classmethod
    def open(
        cls,
        tuf_dir: Path,
        key_dir: Path,
        clock: Clock,
        expiry: ExpiryPolicy | None = None,
        counters: RoleCounters | None = None,
        signing_workers: int = 1,
        *,
        passphrase: bytes | None = None,
        secrets: SecretsHandler | None = None,
    ) -> HubTrust:
        """Open existing repositories.

        ``signing_workers`` > 1 lets per-device signing of large stages use that many
        worker processes (see :class:`~modelfleet.trust.device_repo.DeviceRepoSigner`).
        ``passphrase`` decrypts encrypted key files; ``secrets`` answers signer URIs'
        secret requests (an HSM's PIN); see :func:`~modelfleet.trust.keys.load_signers`.

        Raises:
            ConfigError: keys or repositories missing, corrupt, or not matching.
        """
        args = cls._repo_args(tuf_dir, key_dir, clock, expiry, counters, passphrase, secrets)
        hub = cls._with_keys(tuf_dir, args, key_dir, signing_workers, passphrase, secrets, expiry)
        with hub._locked(exclusive=False):
            hub._repos = {repo: TufRepository.open(*args[repo]) for repo in REPOSITORIES}
        return hub

    # -- catalog -----------------------------------------------------------------------

    def publish_package(
        self,
        name: str,
        version: int,
        model_sha256: str,
        model_length: int,
        manifest_sha256: str,
        manifest_length: int,
        custom: dict[str, Any],
    ) -> None:
        """List a package version's model and manifest in the catalog (one targets version).

        Idempotent: publishing the same hashes again signs nothing.

        Args:
            name: model name (letters, digits, ``._-``; no ``/``).
            version: package version (positive).
            model_sha256, model_length: the ONNX artefact's digest and size.
            manifest_sha256, manifest_length: the manifest's digest and size.
            custom: opaque fields signed with the model target (``model``, ``version``,
                ``opset``, ``runtime``, ``ir_version``...).

        Raises:
            InvalidInputError: bad name, version, digest or length.
            ConflictError: the version is already listed with other hashes (package
                versions are immutable).
            StorageError: the metadata could not be written.
        """
        _check_name("model name", name)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidInputError(f"package version must be a positive integer: {version!r}")
        wanted: dict[str, TargetSpec] = {
            model_target_path(name, version): (model_length, model_sha256, dict(custom)),
            manifest_target_path(name, version): (manifest_length, manifest_sha256, None),
        }
        with self._locked(exclusive=True):
            catalog = self._repos["catalog"]
            for path, (length, sha256, _) in wanted.items():
                tf = catalog.target(path)
                if tf is not None and (tf.length != length or tf.hashes.get("sha256") != sha256):
                    raise ConflictError(
                        f"{path} is already published with other content; "
                        "package versions are immutable"
                    )
            todo = {p: spec for p, spec in wanted.items() if catalog.target(p) is None}
            if todo:
                catalog.add_targets(todo)

    def revoke_package(self, name: str, version: int) -> None:
        """Remove a package version from the catalog; devices will then refuse it.

        Idempotent: revoking a version that is not listed signs nothing.

        Raises:
            StorageError: the metadata could not be written.
        """
        with self._locked(exclusive=True):
            catalog = self._repos["catalog"]
            catalog.remove_targets(
                [model_target_path(name, version), manifest_target_path(name, version)]
            )
            catalog.revoke_release(release_role_name(name, version))

    def delegate_release(
        self, name: str, version: int, keys: Sequence[Key], threshold: int, metadata: bytes
    ) -> bool:
        """List an approved version through its release role (issue 10, ADR 0027).

        See :meth:`TufRepository.delegate_release`; idempotent.

        Raises:
            InvalidInputError: bad name or metadata, or below ``threshold``.
            ConflictError: its paths are listed elsewhere in the catalog.
            StorageError: the metadata could not be written.
        """
        _check_name("model name", name)
        with self._locked(exclusive=True):
            return self._repos["catalog"].delegate_release(
                release_role_name(name, version), keys, threshold, metadata
            )

    def delegated_releases(self) -> list[str]:
        """The release roles the catalog delegates to now (``release.<name>.v<N>``)."""
        with self._locked(exclusive=False):
            return self._repos["catalog"].delegated_roles()

    # -- an offline catalog targets key (issue 10, ADR 0043) ------------------------------

    def catalog_targets_offline(self) -> bool:
        """True if the catalog's targets key is offline (changes wait for the ceremony)."""
        with self._locked(exclusive=False):
            return self._repos["catalog"].targets_offline

    def catalog_lists(self, name: str, version: int) -> bool:
        """True if the published (signed) catalog lists the version's model, top-level or
        through its release role: what devices can install now."""
        with self._locked(exclusive=False):
            return self._repos["catalog"].target(model_target_path(name, version)) is not None

    def staged_catalog_targets(self) -> dict[str, Any] | None:
        """What waits for the catalog targets' offline signature (see
        :meth:`TufRepository.staged_targets`), or None."""
        with self._locked(exclusive=False):
            return self._repos["catalog"].staged_targets()

    def export_catalog_targets(self) -> bytes:
        """The staged catalog targets to sign offline (fresh expiry; see
        :meth:`TufRepository.export_staged_targets`).

        Raises:
            ConflictError: nothing waits for a signature.
            StorageError: the staged file could not be rewritten.
        """
        with self._locked(exclusive=True):
            return self._repos["catalog"].export_staged_targets()

    def apply_catalog_targets(self, data: bytes) -> list[str]:
        """Publish the staged catalog targets signed offline (see
        :meth:`TufRepository.apply_staged_targets`).

        Returns:
            ``"catalog/<role>"`` for every role written.
        """
        with self._locked(exclusive=True):
            return [f"catalog/{r}" for r in self._repos["catalog"].apply_staged_targets(data)]

    # -- director ----------------------------------------------------------------------

    def set_desired_states(self, states: Mapping[str, tuple[str, int]]) -> None:
        """List devices' desired-state blobs in the director (one targets version for all).

        Args:
            states: ``{device id: (sha256, length)}`` of each device's
                ``DesiredState.to_json()`` bytes (stored by the caller).

        Raises:
            InvalidInputError: a bad device id, digest or length.
            StorageError: the metadata could not be written.
        """
        entries: dict[str, TargetSpec] = {}
        for device_id, (sha256, length) in states.items():
            _check_name("device id", device_id)
            entries[desired_state_target_path(device_id)] = (length, sha256, None)
        if not entries:
            return
        with self._locked(exclusive=True):
            self._repos["director"].add_targets(entries)

    def remove_desired_states(self, device_ids: Iterable[str]) -> None:
        """Stop listing devices in the director (e.g. decommissioned devices).

        Raises:
            StorageError: the metadata could not be written.
        """
        paths = [desired_state_target_path(d) for d in device_ids]
        with self._locked(exclusive=True):
            self._repos["director"].remove_targets(paths)

    @property
    def device_signer(self) -> DeviceRepoSigner:
        """Signs per-device director repositories (issue 8, ADR 0014) with the director's
        online key, under the director's shared root.

        Raises:
            ConfigError: this instance was built without keys.
        """
        if self._device_signer is None:
            raise ConfigError("no director key loaded: open the trust store with its keys")
        return self._device_signer

    def director_root(self) -> tuple[int, bytes]:
        """``(version, bytes)`` of the director's current (shared) root."""
        with self._locked(exclusive=False):
            r = self._repos["director"]
            return r.version("root"), r.root_json()

    def versions(self, repo: str) -> tuple[int, int]:
        """``(root version, timestamp version)`` of ``repo`` now (the check-in answer).

        Raises:
            InvalidInputError: unknown repository name.
        """
        r = self.repository(repo)
        return r.version("root"), r.version("timestamp")

    # -- reconciling with a source of truth ---------------------------------------------

    def sync(self, repo: str, prefix: str, wanted: Callable[[], Mapping[str, TargetSpec]]) -> bool:
        """Make ``repo``'s targets under ``prefix`` exactly what ``wanted()`` returns.

        ``wanted`` is called while the exclusive lock is held, so a writer that read an
        older truth cannot sign over a newer one (the hub reads its database there: the
        database is committed first, the metadata follows it; issue 6).

        Returns:
            True if a new targets version was signed.

        Raises:
            InvalidInputError: unknown repository, or a bad path, digest or length.
            StorageError: the metadata could not be written.
        """
        if repo not in REPOSITORIES:
            raise InvalidInputError(f"unknown TUF repository {repo!r}")
        with self._locked(exclusive=True):
            entries = dict(wanted())
            outside = [p for p in entries if not p.startswith(prefix)]
            if outside:
                raise InvalidInputError(f"targets outside {prefix!r}: {outside[:3]}")
            return self._repos[repo].update_targets(entries, prefix)

    def behind(self) -> list[str]:
        """Roles whose file on disk is older than a version already published.

        Returns:
            ``"<repo>/<role>: store N, published M"`` per such role (empty when in step).
        """
        with self._locked(exclusive=False):
            return [
                f"{repo}/{role}: store {disk}, published {published}"
                for repo in REPOSITORIES
                for role, (disk, published) in self._repos[repo].behind().items()
            ]

    # -- serving -----------------------------------------------------------------------

    def trust_root_bundle(self) -> bytes:
        """The current roots of both repositories, for device bootstrap (``trust-root.json``)."""
        with self._locked(exclusive=False):
            return make_trust_root_bundle({r: self._repos[r].root_json() for r in REPOSITORIES})

    def metadata_path(self, repo: str, filename: str) -> Path | None:
        """The metadata file to serve for ``GET /tuf/<repo>/metadata/<filename>``, or None.

        None for an unknown repository, a name that is not TUF metadata, path
        traversal attempts, and versions that do not exist (or were pruned).
        """
        r = self._repos.get(repo)
        return r.metadata_path(filename) if r is not None else None

    def target_digest(self, repo: str, url_path: str) -> str | None:
        """Resolve a consistent-snapshot target URL path to the blob digest to serve.

        Args:
            repo: ``catalog`` or ``director``.
            url_path: e.g. ``models/iris/2/<sha256>.model.onnx``.

        Returns:
            The sha256 if the target (``models/iris/2/model.onnx``) is listed now with
            that hash; otherwise None (unknown, revoked, replaced, or malformed).
        """
        if repo not in self._repos:
            return None
        dirname, sep, filename = url_path.rpartition("/")
        digest, dot, basename = filename.partition(".")
        if not dot or not basename or not is_sha256(digest):
            return None
        path = f"{dirname}{sep}{basename}"
        with self._locked(exclusive=False):
            return digest if self._repos[repo].has_target(path, digest) else None

    def repository(self, repo: str) -> TufRepository:
        """The ``catalog`` or ``director`` repository, synced with the disk (read-only use).

        Raises:
            InvalidInputError: unknown repository name.
        """
        if repo not in self._repos:
            raise InvalidInputError(f"unknown TUF repository {repo!r}")
        with self._locked(exclusive=False):
            return self._repos[repo]

    # -- root rotation (issue 10, ADR 0025) -----------------------------------------------

    def roots(self) -> dict[str, Root]:
        """The current root of each repository (read-only use)."""
        with self._locked(exclusive=False):
            return {
                repo: Metadata[Root].from_bytes(self._repos[repo].root_json()).signed
                for repo in REPOSITORIES
            }

    def next_roots(self, repos: Iterable[str] = REPOSITORIES) -> dict[str, Metadata[Root]]:
        """Unsigned next root (version + 1, fresh expiry) of each of ``repos``.

        Raises:
            InvalidInputError: unknown repository name.
        """
        repos = list(repos)
        for repo in repos:
            if repo not in self._repos:
                raise InvalidInputError(f"unknown TUF repository {repo!r}")
        with self._locked(exclusive=False):
            return {repo: self._repos[repo].next_root() for repo in repos}

    def install_roots(
        self,
        roots: Mapping[str, Metadata[Root]],
        signers: Mapping[str, Mapping[str, Signer]] | None = None,
        on_installed: Callable[[], None] | None = None,
    ) -> list[str]:
        """Adopt signed next roots, all or none, and re-sign the roles whose keys changed.

        Every root is checked against its repository's current root (version + 1, a
        threshold of the old *and* the new root keys) before any file is written.

        Args:
            roots: ``{repo: signed next root}``.
            signers: ``{repo: {role: signer}}`` to sign with from now on (the new keys).
            on_installed: called once the roots are written, still under the lock (the
                key registry is saved there, so no other process reads new roots with
                the old registry).

        Returns:
            ``"<repo>/<role>"`` for every role written.

        Raises:
            InvalidInputError: unknown repository name.
            MetadataVerificationError: a root does not chain (nothing is written then).
            ConfigError: a signer's key is not the one the new root lists.
            StorageError: the metadata could not be written.
        """
        done: list[str] = []
        for repo in roots:
            if repo not in self._repos:
                raise InvalidInputError(f"unknown TUF repository {repo!r}")
        with self._locked(exclusive=True):
            for repo, root in roots.items():
                self._repos[repo].check_next_root(root)
            for repo, root in roots.items():
                mine = (signers or {}).get(repo, {})
                done += [f"{repo}/{r}" for r in self._repos[repo].install_root(root, mine)]
            if on_installed is not None:
                on_installed()
            director = (signers or {}).get("director", {}).get("timestamp")
            if "director" in roots and director is not None:
                self._use_director_key(director)
        return done

    # -- upkeep ------------------------------------------------------------------------

    def refresh_expiring(self) -> list[str]:
        """Re-sign roles close to expiry in both repositories.

        Returns:
            ``"<repo>/<role>"`` for every role re-signed, e.g. ``"director/timestamp"``.

        Raises:
            StorageError: the metadata could not be written.
        """
        done: list[str] = []
        with self._locked(exclusive=True):
            for repo in REPOSITORIES:
                done += [f"{repo}/{role}" for role in self._repos[repo].refresh_expiring()]
        return done

    def close(self) -> None:
        """Stop per-device signing processes, if any were started."""
        if self._device_signer is not None:
            self._device_signer.close()

    # -- internals ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        with self._thread_lock:
            try:
                self.tuf_dir.mkdir(parents=True, exist_ok=True)
                fd = open(self.tuf_dir / ".lock", "a+b")  # noqa: SIM115
            except OSError as e:
                raise StorageError(f"cannot open lock file in {self.tuf_dir}: {e}") from e
            with fd:
                fcntl.flock(fd.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                try:
                    for name, r in self._repos.items():
                        if not r.is_current():
                            self._reload(name, r)
                    yield
                finally:
                    fcntl.flock(fd.fileno(), fcntl.LOCK_UN)

    def _reload(self, name: str, repo: TufRepository) -> None:
        try:
            repo.reload()
        except ConfigError:
            # `modelfleet keys` may have installed a root with other keys: take the keys
            # the registry names now, and try once more (a real mismatch still raises).
            if self._reload_keys is None:
                raise
            signers = self._reload_keys()[name]
            repo.use_signers(signers)
            repo.reload()
            _log.info("TUF keys of %s changed on disk; signing with the new ones", name)
            if name == "director":
                self._use_director_key(signers["timestamp"])

    def _use_director_key(self, signer: Signer) -> None:
        """Sign per-device repositories with ``signer`` from now on (the director key was
        rotated; issue 10, ADR 0039). Signings under way with the old key finish; the
        hub's director re-signs every row that key signed."""
        old = self._device_signer
        if old is None or self._new_device_signer is None:
            return
        if old.keyid == signer.public_key.keyid:
            return
        self._device_signer = self._new_device_signer(signer)
        old.close(finish=True)
        _log.info(
            "per-device director repositories are signed with key %s from now on",
            signer.public_key.keyid[:16],
        )


def _repo_signers(
    key_dir: Path, passphrase: bytes | None, secrets: SecretsHandler | None
) -> dict[str, dict[str, Signer]]:
    keys = load_signers(key_dir, passphrase, secrets)
    director_key = keys["director"]
    return {
        "catalog": {r: keys[r] for r in ("root", "targets", "snapshot", "timestamp")},
        "director": {
            "root": keys["root"],
            "targets": director_key,
            "snapshot": director_key,
            "timestamp": director_key,
        },
    }


def _device_signer(
    signer: Signer,
    key_dir: Path,
    workers: int,
    passphrase: bytes | None,
    policy: ExpiryPolicy,
) -> DeviceRepoSigner:
    return DeviceRepoSigner(
        signer,
        policy.device_lifetimes(None),
        policy.refresh_margin,
        key_path=online_key_path(key_dir, "director"),
        key_passphrase=passphrase,
        workers=workers,
        site_lifetimes=policy.site_lifetimes(),  # issue 11, ADR 0037
    )


def _check_name(what: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidInputError(
            f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' (max 128)"
        )

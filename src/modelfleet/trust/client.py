"""Device side of the trust layer: python-tuf ngclient over the hub's two repositories.

A device trusts nothing the hub says until TUF has verified it:

1. the **director** repository names the device's desired state (a signed target);
2. every artefact that desired state names must also be listed in the **catalog**
   repository with exactly the same sha256 and length (Uptane: director and image
   repository must agree), and is then downloaded and checked against those.

Every tuf exception is translated at this boundary: verification failures become
:class:`~modelfleet.errors.MetadataVerificationError` or
:class:`~modelfleet.errors.ArtefactVerificationError`, transport failures
:class:`~modelfleet.errors.TransportError`, local disk failures
:class:`~modelfleet.errors.StorageError`.

The director is read per device (issue 8, ADR 0014: Uptane's per-vehicle director
repository): metadata from ``/tuf/director/devices/<id>/metadata/``, under the director's
shared root, so what a device downloads does not grow with the fleet.

Cache layout: ``cache_dir/{catalog,director}/metadata`` (ngclient's metadata cache, with
``root_history/``; the director's holds the pinned shared root) and
``cache_dir/{catalog,director}/targets``; the device's own director repository in
``cache_dir/director-device/{metadata,targets}``; the time floor in
``cache_dir/time-floor.json``; artefact downloads cut short, kept to be continued
(issue 11, ADR 0033 amendment), in ``cache_dir/catalog/partials/<sha256>.<length>.partial``
(at most four, none older than a week; :meth:`DeviceTrustClient.prune_partials`).

:meth:`DeviceTrustClient.stale` applies the check-in fast path
(:mod:`modelfleet.trust.freshness`): which repositories the hub's answer says changed.

Time (issue 11, ADR 0036): expiry is checked against ``max(now, floor)``, where the
**time floor** (``cache_dir/time-floor.json``, :mod:`modelfleet.trust._time_floor`) is the
latest time at which this device accepted metadata. A clock set back (a year, or to 1970)
cannot make expired metadata valid again; expired metadata raises
:class:`~modelfleet.errors.MetadataExpiredError`.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tuf.api.exceptions import ExpiredMetadataError, RepositoryError
from tuf.api.metadata import Metadata, Root, Signed, Targets, Timestamp
from tuf.api.serialization import DeserializationError
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from modelfleet.delivery.http_fetcher import DownloadSettings, HttpFetcher
from modelfleet.errors import (
    ArtefactVerificationError,
    ConfigError,
    MetadataVerificationError,
    StorageError,
)
from modelfleet.rollout.desired_state import desired_state_target_path
from modelfleet.trust._ngclient import (
    TrackingFetcher,
    download_target,
    new_updater,
    prune_partials,
    refresh,
    translate_tuf_errors,
)
from modelfleet.trust._time_floor import FLOOR_FILE, TimeFloor
from modelfleet.trust.bundle import REPOSITORIES, parse_trust_root_bundle
from modelfleet.trust.device_repo import DEVICE_FIELD
from modelfleet.trust.freshness import DEFAULT_MARGIN, HeldVersions, stale_repositories

__all__ = ["DeviceTrustClient", "MetadataTimes"]

log = logging.getLogger("modelfleet.trust")


@dataclass(frozen=True)
class MetadataTimes:
    """What the device's verified metadata cache says about time (ADR 0036).

    Attributes:
        reference: the time expiry is checked against now, ``max(now, floor)``.
        floor: the time floor, or None before the first accepted refresh.
        expires: per repository (``catalog``, ``director``), the earliest expiry of its
            cached top-level roles, or None where nothing is cached.
    """

    reference: datetime
    floor: datetime | None
    expires: dict[str, datetime | None]

    @property
    def expired(self) -> list[str]:
        """The repositories whose cached metadata is expired at :attr:`reference`."""
        return [r for r, t in sorted(self.expires.items()) if t is not None and t <= self.reference]


class DeviceTrustClient:
    """Verified access to the hub's director and catalog repositories for one device.

    Update cycles: :meth:`fetch_desired_state` starts a new cycle (fresh director
    refresh). The catalog is refreshed once per cycle, lazily, on the first
    :meth:`fetch_package_file`; later calls in the same cycle reuse that verified
    snapshot (consistent view of the catalog). :meth:`begin_cycle` starts a new cycle
    explicitly. One instance per cache folder (ngclient's rule). The director and the
    catalog each have their own lock, so the director can be polled while an artefact
    downloads (a newer desired state supersedes the download: see ``cancel``).
    """

    def __init__(
        self,
        cache_dir: Path,
        hub_url: str,
        token: str | Callable[[], str],
        trust_root: bytes | None,
        fetcher: FetcherInterface | None = None,
        download: DownloadSettings | None = None,
        refresh_margin: timedelta = DEFAULT_MARGIN,
        verify: ssl.SSLContext | bool = True,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        """Set up the client and cache the bundle's roots; nothing is fetched yet.

        Args:
            cache_dir: device-local folder for verified metadata and targets.
            hub_url: base URL of the hub, e.g. ``http://hub:8080``.
            token: bearer token (sent by the default :class:`HttpFetcher`), or a callable
                read per request (a device credential that rotates, issue 10).
            trust_root: the hub's ``trust-root.json`` bundle bytes, the trust anchor. None
                means: use the roots already in the cache (from an earlier run).
            fetcher: transport to use instead of an :class:`HttpFetcher` with ``token``.
            download: deadlines of the default fetcher's downloads (minimum rate, caps).
            refresh_margin: the fast path refreshes anyway when a held timestamp expires
                within this.
            verify: the default fetcher's TLS verification (a context pinning the hub's
                CA: :func:`modelfleet.delivery.tls.client_verify`).
            now: the device's wall clock (timezone-aware UTC); expiry is checked against
                ``max(now(), time floor)`` (ADR 0036). Default: the system clock.

        Raises:
            ConfigError: the bundle is malformed or its roots do not verify, or it is None
                and the cache has no trusted root yet (trust on first use is the caller's
                decision).
            StorageError: the cache folder is not writable.
        """
        self.cache_dir = Path(cache_dir)
        self._now = now or _system_now
        self._floor = TimeFloor(self.cache_dir / FLOOR_FILE)
        self._hub = hub_url.rstrip("/")
        self._own_fetcher = fetcher is None
        self._inner = fetcher or HttpFetcher(token, settings=download, verify=verify)
        self._director_lock = threading.Lock()
        self._catalog_lock = threading.Lock()
        self._catalog_stale = True
        self._fetcher = TrackingFetcher(self._inner)
        self._roots: dict[str, bytes | None]
        if trust_root is not None:
            self._roots = dict(parse_trust_root_bundle(trust_root))
            for repo in REPOSITORIES:
                # Loads and caches each root now, so later runs can start without a bundle.
                try:
                    self._updater(repo, self._now())
                except RepositoryError as e:
                    raise ConfigError(f"trust-root bundle: the {repo} root is invalid: {e}") from e
                except OSError as e:
                    raise StorageError(f"cannot write {self.cache_dir}: {e.strerror or e}") from e
        else:
            for repo in REPOSITORIES:
                if not (self._metadata_dir(repo) / "root.json").exists():
                    raise ConfigError(
                        f"no trusted {repo} root in {self.cache_dir}: "
                        "provide the hub's trust-root bundle"
                    )
            self._roots = dict.fromkeys(REPOSITORIES)
        self._catalog: Updater | None = None
        self._margin = refresh_margin

    # -- public API --------------------------------------------------------------------

    def begin_cycle(self) -> None:
        """Forget this cycle's catalog view; the next package fetch refreshes it."""
        self._catalog_stale = True

    def fetch_desired_state(self, device_id: str) -> bytes | None:
        """Refresh the director and return this device's verified desired-state bytes.

        Starts a new cycle (see the class docstring).

        Args:
            device_id: the device's id; the target is ``devices/<id>/desired-state.json``.

        Returns:
            The bytes (verified against the director's signed length and sha256), or None
            if the director lists no desired state for this device.

        Raises:
            MetadataVerificationError: director metadata failed a check (signature,
                expiry, rollback, length/hash).
            ArtefactVerificationError: the desired-state blob does not match its target.
            TransportError: the hub could not be reached or refused (e.g. HTTP 401).
            StorageError: the cache could not be written.
        """
        self.begin_cycle()
        target = desired_state_target_path(device_id)
        with self._director_lock:
            with self._translate("director"):
                now = self._now()
                updater = self._device_updater(device_id, now)
                self._refresh(updater, self._device_dir(device_id) / "metadata", now)
                self._check_bound(device_id)
                info = updater.get_targetinfo(target)
            if info is None:
                return None
            with self._translate("director", artefact=target):
                path = updater.find_cached_target(info) or updater.download_target(info)
                data = Path(path).read_bytes()
                info.verify_length_and_hashes(data)
        return data

    def refresh_catalog(self) -> None:
        """Refresh the catalog now (its versions changed; the fast path keeps it current).

        Raises:
            MetadataVerificationError, TransportError, StorageError: as for
                :meth:`fetch_package_file`.
        """
        with self._catalog_lock, self._translate("catalog"):
            self._refresh_catalog()

    def held(self, device_id: str) -> dict[str, HeldVersions | None]:
        """What this device holds, verified, of the catalog and of its own director
        repository (read from the metadata cache; None where nothing is cached)."""
        return {
            "catalog": _held(self._metadata_dir("catalog")),
            "director": _held(self._device_dir(device_id) / "metadata"),
        }

    def stale(self, device_id: str, answer: object, now: datetime | None = None) -> frozenset[str]:
        """The repositories to refresh, given the check-in answer's ``"tuf"`` versions
        (see :func:`~modelfleet.trust.freshness.stale_repositories`)."""
        return stale_repositories(
            self.held(device_id), answer, self.reference_time(now), self._margin
        )

    def reference_time(self, now: datetime | None = None) -> datetime:
        """The time expiry is checked against: ``max(now, time floor)`` (ADR 0036).

        Args:
            now: the wall clock; None: this client's clock.
        """
        return self._floor.reference(now or self._now())

    def metadata_times(self, device_id: str) -> MetadataTimes:
        """The reference time, the floor and each repository's earliest cached expiry
        (read from the verified metadata cache; for status and metrics)."""
        return MetadataTimes(
            self.reference_time(),
            self._floor.floor,
            {
                "catalog": _earliest_expiry(self._metadata_dir("catalog")),
                "director": _earliest_expiry(self._device_dir(device_id) / "metadata"),
            },
        )

    def catalog_lists(self, target_path: str, sha256: str) -> bool:
        """Whether the catalog (refreshed once per cycle) lists ``target_path`` with
        ``sha256`` now; False once it is revoked (issue 10). Downloads no artefact.

        Raises:
            MetadataVerificationError, TransportError, StorageError: as for
                :meth:`fetch_package_file`.
        """
        with self._catalog_lock, self._translate("catalog"):
            catalog = self._current_catalog()
            info = catalog.get_targetinfo(target_path)
        return info is not None and info.hashes.get("sha256") == sha256

    def fetch_package_file(
        self,
        target_path: str,
        expected_sha256: str,
        expected_length: int,
        dest: Path,
        cancel: threading.Event | None = None,
    ) -> Path:
        """Download a catalog artefact the director named, verified, to ``dest``.

        The catalog (refreshed once per cycle) must list ``target_path`` with exactly the
        director's ``expected_sha256`` and ``expected_length``; the download is checked
        against them and moved into place atomically. If ``dest`` already holds the right
        bytes nothing is downloaded.

        Args:
            target_path: e.g. ``models/iris/2/model.onnx``.
            expected_sha256: sha256 the director's desired state names.
            expected_length: length the director's desired state names.
            dest: where the verified file goes.
            cancel: when set (from another thread), the download stops with a
                TransportError (checked as bytes arrive; default fetcher only).

        Returns:
            ``dest``.

        Raises:
            ArtefactVerificationError: not in the catalog (revoked or never approved),
                director and catalog disagree, or the bytes do not match.
            MetadataVerificationError: catalog metadata failed a check.
            TransportError: the hub could not be reached or refused, or ``cancel`` was
                set; DeadlineExceededError when the download was too slow for its length.
            StorageError: ``dest`` could not be written.
        """
        with self._catalog_lock, self._cancellable(cancel):
            return self._fetch_package_file(target_path, expected_sha256, expected_length, dest)

    def _fetch_package_file(
        self, target_path: str, expected_sha256: str, expected_length: int, dest: Path
    ) -> Path:
        with self._translate("catalog"):
            catalog = self._current_catalog()
            info = catalog.get_targetinfo(target_path)
        if info is None:
            raise ArtefactVerificationError(
                f"artefact {target_path}: not in the catalog (revoked or never approved)"
            )
        catalog_sha = info.hashes.get("sha256")
        if catalog_sha != expected_sha256 or info.length != expected_length:
            raise ArtefactVerificationError(
                f"artefact {target_path}: director and catalog disagree "
                f"(director sha256 {expected_sha256} length {expected_length}; "
                f"catalog sha256 {catalog_sha} length {info.length})"
            )
        with self._translate("catalog", artefact=target_path):
            return download_target(
                catalog,
                self._fetcher,
                info,
                f"{self._hub}/tuf/catalog/targets/",
                Path(dest),
                self._metadata_dir("catalog"),
                partial_dir=self.partial_dir,
            )

    @property
    def partial_dir(self) -> Path:
        """Where catalog downloads cut short are kept to be continued (issue 11)."""
        return self.cache_dir / "catalog" / "partials"

    def prune_partials(self, keep_sha256: Iterable[str] = ()) -> list[Path]:
        """Delete the kept partial downloads except those of artefacts with a sha256 in
        ``keep_sha256`` (the ones still wanted); return those deleted. Never raises;
        does nothing while a catalog download runs."""
        wanted = set(keep_sha256)
        # Never while a download writes one: a busy catalog is pruned next time.
        if not self._catalog_lock.acquire(blocking=False):
            return []
        try:
            keep = [p for p in _listed(self.partial_dir) if p.name.split(".", 1)[0] in wanted]
            return prune_partials(self.partial_dir, keep, max_files=len(keep))
        finally:
            self._catalog_lock.release()

    def close(self) -> None:
        """Close the default fetcher's HTTP connections (a passed-in fetcher is left open)."""
        if self._own_fetcher and isinstance(self._inner, HttpFetcher):
            self._inner.close()

    # -- internals ---------------------------------------------------------------------

    def _current_catalog(self) -> Updater:
        """This cycle's verified catalog, refreshed on first use (catalog lock held)."""
        if self._catalog is None or self._catalog_stale:
            return self._refresh_catalog()
        return self._catalog

    def _refresh_catalog(self) -> Updater:
        """Refresh the catalog and make it this cycle's view (catalog lock held)."""
        now = self._now()
        updater = self._updater("catalog", now)
        self._refresh(updater, self._metadata_dir("catalog"), now)
        self._catalog = updater
        self._catalog_stale = False
        return updater

    def _refresh(self, updater: Updater, md_dir: Path, now: datetime) -> None:
        """Refresh ``updater`` and move the time floor (ADR 0036).

        Accepted: the floor rises to ``now`` (every final role was valid then, so the floor
        never passes the expiry of metadata this device accepted). Refused as expired: it
        rises to the expiry of the role found expired (signed evidence that bounds how far
        a clock set forward can push it), so a clock set back afterwards still sees it
        expired.

        Raises:
            whatever :func:`~modelfleet.trust._ngclient.refresh` raises; StorageError: the
                floor could not be written after an accepted refresh.
        """
        try:
            refresh(updater)
        except ExpiredMetadataError as e:
            reference = self._floor.reference(now)
            seen = [t for t in (getattr(e, "expires", None), _earliest_expiry(md_dir)) if t]
            passed = [t for t in seen if t <= reference]
            if passed:
                try:
                    self._floor.advance(min(passed))
                except StorageError as err:  # the expiry is what the caller must hear
                    log.error("time floor not raised after an expiry refusal: %s", err)
            raise
        self._floor.advance(now)

    @contextlib.contextmanager
    def _cancellable(self, cancel: threading.Event | None) -> Iterator[None]:
        if cancel is not None and isinstance(self._inner, HttpFetcher):
            with self._inner.cancelled_by(cancel):
                yield
        else:
            yield

    def _metadata_dir(self, repo: str) -> Path:
        return self.cache_dir / repo / "metadata"

    def _device_dir(self, device_id: str) -> Path:
        # One agent serves one device id; the id is not part of the path so a renamed
        # device cannot leave a second cache behind.
        del device_id
        return self.cache_dir / "director-device"

    def _check_bound(self, device_id: str) -> None:
        """Refuse a per-device repository signed for another device (a replay).

        Reads the targets ngclient has just verified and cached.

        Raises:
            MetadataVerificationError: the targets names another device, or none.
        """
        path = self._device_dir(device_id) / "metadata" / "targets.json"
        try:
            signed = Metadata[Targets].from_bytes(path.read_bytes()).signed
        except (OSError, DeserializationError) as e:
            raise MetadataVerificationError(f"director targets.json unreadable: {e}") from e
        owner = signed.unrecognized_fields.get(DEVICE_FIELD)
        if owner != device_id:
            raise MetadataVerificationError(
                f"director targets.json: signed for device {owner!r}, not {device_id!r} "
                "(another device's metadata replayed?)"
            )

    def _device_updater(self, device_id: str, now: datetime) -> Updater:
        """ngclient over this device's own director repository (shared root)."""
        base = self._device_dir(device_id)
        md_dir, target_dir = base / "metadata", base / "targets"
        bootstrap = self._roots["director"]
        if bootstrap is None and not (md_dir / "root.json").exists():
            bootstrap = (self._metadata_dir("director") / "root.json").read_bytes()
        return new_updater(
            md_dir,
            f"{self._hub}/tuf/director/devices/{device_id}/metadata/",
            target_dir,
            f"{self._hub}/tuf/director/targets/",
            self._fetcher,
            bootstrap,
            self._floor.reference(now),
        )

    def _updater(self, repo: str, now: datetime) -> Updater:
        return new_updater(
            self._metadata_dir(repo),
            f"{self._hub}/tuf/{repo}/metadata/",
            self.cache_dir / repo / "targets",
            f"{self._hub}/tuf/{repo}/targets/",
            self._fetcher,
            self._roots[repo],
            self._floor.reference(now),
        )

    def _translate(self, repo: str, artefact: str | None = None) -> AbstractContextManager[None]:
        """Turn tuf / OS exceptions into modelfleet ones, naming what failed."""
        return translate_tuf_errors(repo, self._fetcher, self.cache_dir, artefact)


def _held(md_dir: Path) -> HeldVersions | None:
    """The verified root and timestamp ngclient cached in ``md_dir`` (None: none yet)."""
    try:
        root = Metadata[Root].from_bytes((md_dir / "root.json").read_bytes()).signed
        ts = Metadata[Timestamp].from_bytes((md_dir / "timestamp.json").read_bytes()).signed
    except (OSError, DeserializationError):
        return None
    if not isinstance(root, Root) or not isinstance(ts, Timestamp):
        return None
    return HeldVersions(root.version, ts.version, ts.expires)


def _system_now() -> datetime:
    return datetime.now(UTC)


def _earliest_expiry(md_dir: Path) -> datetime | None:
    """The earliest ``expires`` of the top-level roles ngclient cached in ``md_dir``."""
    found: list[datetime] = []
    for role in ("root", "timestamp", "snapshot", "targets"):
        try:
            signed: Signed = Metadata.from_bytes((md_dir / f"{role}.json").read_bytes()).signed
        except (OSError, DeserializationError):
            continue
        found.append(signed.expires)
    return min(found, default=None)


def _listed(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []

"""The one way modelfleet drives python-tuf's ngclient: updater set-up, error translation,
verified target download.

Shared by the agent's :class:`~modelfleet.trust.client.DeviceTrustClient` and the
``modelfleet tuf-client`` conformance CLI (issue 10), so the conformance suite tests the
code the agent runs.

* :func:`new_updater` builds an ``Updater`` over a :class:`TrackingFetcher` (which remembers
  the last URL, to name the file that failed).
  Its expiry checks use the ``reference_time`` it is given (ADR 0036: ``max(now, floor)``
  of :mod:`modelfleet.trust._time_floor`), not ngclient's own ``datetime.now``.
* :func:`refresh` refreshes an updater; expired metadata names its role and expiry.
* :func:`translate_tuf_errors` turns every tuf / OS exception into a modelfleet one.
* :func:`download_target` fetches a verified target in **one pass**: the bytes are hashed as
  they are written to a temporary file beside the destination, which is fsynced and
  renamed into place only when length and hashes match (ADR 0024: ngclient's own
  ``download_target`` writes a temporary file, reads it back to hash it and copies it,
  three passes over a 1 GiB model).
  Given a ``partial_dir`` (the agent's catalog downloads), the partial file is **kept**
  across failures and restarts (issue 11, ADR 0033 amendment): named by the target's
  signed sha256 and length, so no other target ever reuses it; the next download hashes
  its bytes and asks the fetcher for the rest only (:meth:`HttpFetcher.fetch_from`).
  Length and hashes are still checked over the whole file; a mismatch deletes it.
  :func:`prune_partials` bounds how many are kept and for how long.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO
from urllib import parse

from tuf.api.exceptions import (
    BadVersionNumberError,
    DownloadError,
    DownloadHTTPError,
    DownloadLengthMismatchError,
    ExpiredMetadataError,
    LengthOrHashMismatchError,
    RepositoryError,
    SlowRetrievalError,
    UnsignedMetadataError,
)
from tuf.api.metadata import Metadata, Root, TargetFile
from tuf.api.serialization import DeserializationError
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from modelfleet._atomic import fsync_dir
from modelfleet.delivery.http_fetcher import (
    DownloadCancelledError,
    DownloadDeadlineError,
    HttpFetcher,
)
from modelfleet.errors import (
    ConfigError,
    CorruptDeliveryError,
    DeadlineExceededError,
    MetadataExpiredError,
    MetadataVerificationError,
    StorageError,
    TransportError,
)
from modelfleet.trust._file_writer import BackgroundWriter

__all__ = [
    "TrackingFetcher",
    "cached_target_path",
    "download_target",
    "kept_partial_path",
    "new_updater",
    "prune_partials",
    "refresh",
    "translate_tuf_errors",
]

_WRITE_CHUNK = 1 << 20

#: A download is synced to disk every this many bytes, so a power loss loses at most this
#: much of a kept partial (unsynced pages may come back as zeros: one whole re-download),
#: and the final sync has little left to write. 32 MiB: 8 MiB cost a 1 GiB install 0.4 s
#: more on a quiet 2-CPU machine (issue 10 benchmark).
_SYNC_EVERY = 32 << 20

#: Kept partials: at most this many (newest first), none older than this (issue 11).
MAX_PARTIALS = 4
MAX_PARTIAL_AGE_S = 7 * 86400.0

PARTIAL_SUFFIX = ".partial"

_SHA256 = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger(__name__)


class TrackingFetcher(FetcherInterface):
    """Delegates to another fetcher and remembers the last URL, to name failed files.

    ``download_file`` is delegated whole, so the inner fetcher sees the length a download
    may have (the :class:`HttpFetcher` sizes its deadline by it).
    """

    def __init__(self, inner: FetcherInterface) -> None:
        self.inner = inner
        self.last_url: str | None = None

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.last_url = url
        return self.inner.fetch(url)

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        self.last_url = url
        with self.inner.download_file(url, max_length) as f:
            yield f

    @contextlib.contextmanager
    def stream(self, url: str, max_length: int) -> Iterator[Iterator[bytes]]:
        """The body of ``url`` as chunks, sized for a download of ``max_length`` bytes.

        The caller enforces the length (see :func:`download_target`); an
        :class:`HttpFetcher` sizes its deadline by it.
        """
        self.last_url = url
        if isinstance(self.inner, HttpFetcher):
            with self.inner.sized(max_length):
                yield self.inner.fetch(url)
        else:
            yield self.inner.fetch(url)

    @contextlib.contextmanager
    def stream_from(
        self, url: str, max_length: int, offset: int
    ) -> Iterator[tuple[int, Iterator[bytes]]]:
        """Where the body of ``url`` starts and its chunks, from ``offset`` on when the
        inner fetcher can (an :class:`HttpFetcher`, whose deadline counts the remaining
        bytes); any other fetcher, or a server that will not, starts at 0."""
        self.last_url = url
        if isinstance(self.inner, HttpFetcher):
            with self.inner.sized(max_length):
                yield self.inner.fetch_from(url, offset)
        else:
            yield 0, self.inner.fetch(url)


def new_updater(
    metadata_dir: Path,
    metadata_url: str,
    target_dir: Path | None,
    target_url: str | None,
    fetcher: TrackingFetcher,
    bootstrap: bytes | None,
    reference_time: datetime | None = None,
) -> Updater:
    """An ngclient ``Updater`` (folders created; ``bootstrap`` None: the cached root).

    Args:
        reference_time: the time its expiry checks use (timezone-aware); None: ngclient's
            own ``datetime.now(UTC)`` at construction.

    Raises:
        OSError: a folder cannot be created.
        RepositoryError: ``bootstrap`` (or the cached root) is not a valid root.
        ConfigError: the installed python-tuf no longer lets the reference time be set.
    """
    metadata_dir.mkdir(parents=True, exist_ok=True)
    if target_dir is not None:
        target_dir.mkdir(parents=True, exist_ok=True)
    fetcher.last_url = None
    updater = Updater(
        str(metadata_dir),
        metadata_url,
        None if target_dir is None else str(target_dir),
        target_url,
        fetcher=fetcher,
        bootstrap=bootstrap,
    )
    if reference_time is not None:
        _set_reference_time(updater, reference_time)
    return updater


def _set_reference_time(updater: Updater, reference_time: datetime) -> None:
    """Make ``updater`` check expiry against ``reference_time`` (ADR 0036).

    Private API, checked against python-tuf 7.0.1 (pyproject pins ``tuf>=7.0.1,<8``):
    ``Updater.__init__`` builds ``self._trusted_set = TrustedMetadataSet(...)``, whose
    ``__init__`` sets ``self.reference_time = datetime.now(timezone.utc)``; every expiry
    check (final root, timestamp, snapshot, targets) reads that attribute, and the initial
    root is loaded without one. Fails closed if the layout changes.
    """
    trusted = getattr(updater, "_trusted_set", None)
    if trusted is None or not hasattr(trusted, "reference_time"):
        raise ConfigError(
            "python-tuf's Updater no longer has _trusted_set.reference_time "
            "(checked for tuf 7.0.1): the device time floor cannot be applied"
        )
    trusted.reference_time = reference_time


class _ExpiredRoleError(ExpiredMetadataError):
    """ngclient's expiry refusal, with the role that expired and when (translated by
    :func:`translate_tuf_errors`)."""

    def __init__(self, message: str, role: str, expires: datetime | None) -> None:
        super().__init__(message)
        self.role = role
        self.expires = expires


def refresh(updater: Updater) -> None:
    """``updater.refresh()``; an expiry refusal names the role and when it expired.

    Raises:
        whatever ``Updater.refresh`` raises (an expiry as an ``ExpiredMetadataError``).
    """
    try:
        updater.refresh()
    except ExpiredMetadataError as e:
        role, expires, at = _expired_role(updater, str(e))
        when = f" {expires.isoformat()}" if expires is not None else ""
        checked = f", checked at {at.replace(microsecond=0).isoformat()}" if at else ""
        raise _ExpiredRoleError(
            f"{role or 'metadata'} expired{when}{checked}", role, expires
        ) from e


def _expired_role(updater: Updater, message: str) -> tuple[str, datetime | None, datetime | None]:
    """(role, expires, reference time) of the expired role that expired first.

    The earliest expiry is the least a wrong clock can claim (ADR 0036: the floor is raised
    to it). ngclient (7.0.1) adds an expired timestamp or snapshot to its trusted set before
    it refuses it; a targets role is refused before it is added: then only its name is
    known (from the message).
    """
    trusted = getattr(updater, "_trusted_set", None)
    raw_at = getattr(trusted, "reference_time", None)
    at = raw_at if isinstance(raw_at, datetime) else None
    expired: list[tuple[datetime, str]] = []
    if trusted is not None and at is not None:
        for role in ("root", "timestamp", "snapshot", "targets"):
            try:
                signed = trusted[role]
            except KeyError:
                continue
            if signed.is_expired(at):
                expired.append((signed.expires, role))
    if expired:
        expires, role = min(expired)
        return role, expires, at
    for role in ("timestamp", "snapshot", "root", "targets"):
        if role in message:
            return role, None, at
    return "", None, at


def cached_target_path(target_dir: Path, info: TargetFile) -> Path:
    """Where a target is kept in ``target_dir``: its URL-quoted path (as ngclient names it),
    so one target path always maps to one file name, and none escapes ``target_dir``."""
    return target_dir / parse.quote(info.path, safe="")


def kept_partial_path(partial_dir: Path, info: TargetFile) -> Path | None:
    """Where a partial download of ``info`` is kept in ``partial_dir``:
    ``<sha256>.<length>.partial`` from its signed metadata, so a different target or hash
    never reuses it; None when it has no well-formed sha256 (then nothing is kept)."""
    sha = info.hashes.get("sha256", "")
    if not _SHA256.fullmatch(sha) or info.length < 0:
        return None
    return partial_dir / f"{sha}.{info.length}{PARTIAL_SUFFIX}"


def prune_partials(
    partial_dir: Path,
    keep: Iterable[Path] = (),
    *,
    now: float | None = None,
    max_age_s: float = MAX_PARTIAL_AGE_S,
    max_files: int = MAX_PARTIALS,
) -> list[Path]:
    """Delete kept partials not in ``keep`` that are older than ``max_age_s`` (by mtime)
    or beyond the ``max_files`` newest (``keep`` counted first); return those deleted.

    Args:
        now: the wall clock in seconds (mtimes are wall-clock); None: ``time.time()``.
    """
    kept = {Path(p) for p in keep}
    try:
        found = [p for p in partial_dir.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]
    except OSError:
        return []
    at = time.time() if now is None else now
    aged: list[tuple[float, Path]] = []
    for p in found:
        if p in kept:
            continue
        with contextlib.suppress(OSError):
            aged.append((p.stat().st_mtime, p))
    aged.sort(reverse=True)
    room = max(0, max_files - len(kept & set(found)))
    removed: list[Path] = []
    for n, (mtime, p) in enumerate(aged):
        if n >= room or at - mtime > max_age_s:
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def download_target(
    updater: Updater,
    fetcher: TrackingFetcher,
    info: TargetFile,
    target_base_url: str,
    dest: Path,
    metadata_dir: Path,
    partial_dir: Path | None = None,
) -> Path:
    """Download ``info`` to ``dest``, verified, in one pass; nothing is written to ``dest``
    unless the length and every hash match. ``dest`` already right: nothing is fetched.

    Args:
        updater: a refreshed updater (its metadata folder holds the trusted root, which
            says whether target URLs carry the hash prefix).
        fetcher: the updater's fetcher.
        info: the verified target, from ``updater.get_targetinfo``.
        target_base_url: base URL of the repository's targets.
        dest: where the file goes (a ``.partial`` sibling is used meanwhile).
        metadata_dir: the updater's metadata folder.
        partial_dir: keep the partial download here across failures and restarts (see
            :func:`kept_partial_path`; best on ``dest``'s filesystem) and continue it from
            where it stopped. None: a ``.partial`` sibling of ``dest``, deleted on failure.

    Returns:
        ``dest``.

    Raises:
        DownloadLengthMismatchError: the server sent more than ``info.length`` (the
            download is cut there).
        LengthOrHashMismatchError: fewer bytes, or a hash differs (over the whole file,
            kept bytes included: a kept partial is deleted then).
        DownloadError: transport failure (a kept partial stays). OSError: ``dest`` cannot
            be written.
    """
    if updater.find_cached_target(info, str(dest)) is not None:
        return dest
    url = target_base_url.rstrip("/") + "/" + _target_url_path(updater, info, metadata_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    kept = kept_partial_path(partial_dir, info) if partial_dir is not None else None
    if kept is None:
        tmp = dest.with_name(f".{dest.name}.partial")
        try:
            _download(fetcher, info, url, tmp, 0, {n: _hasher(n) for n in info.hashes})
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    else:
        kept.parent.mkdir(parents=True, exist_ok=True)
        prune_partials(kept.parent, keep=[kept])
        hashers = {n: _hasher(n) for n in info.hashes}
        offset = _hash_kept(kept, info, hashers)
        try:
            _download(fetcher, info, url, kept, offset, hashers, keep=True)
        except (LengthOrHashMismatchError, DownloadLengthMismatchError):
            with contextlib.suppress(OSError):
                kept.unlink()
            raise
        _move(kept, dest)
    fsync_dir(dest.parent)
    return dest


def _hash_kept(kept: Path, info: TargetFile, hashers: dict[str, hashlib._Hash]) -> int:
    """Feed a kept partial's bytes to ``hashers``; return its length (0: none, or it was
    longer than the target and is deleted)."""
    try:
        size = kept.stat().st_size
    except FileNotFoundError:
        return 0
    if size > info.length:
        log.warning(
            "%s: kept partial %s is longer (%d) than the signed length %d, deleted",
            info.path,
            kept.name,
            size,
            info.length,
        )
        kept.unlink()
        return 0
    with open(kept, "rb") as f:
        while block := f.read(_WRITE_CHUNK):
            for h in hashers.values():
                h.update(block)
    if size:
        log.info("%s: continuing a kept partial download at %d of %d", info.path, size, info.length)
    return size


def _download(
    fetcher: TrackingFetcher,
    info: TargetFile,
    url: str,
    tmp: Path,
    offset: int,
    hashers: dict[str, hashlib._Hash],
    keep: bool = False,
) -> None:
    """Write the target's bytes from ``offset`` on to ``tmp`` (its first ``offset`` bytes
    already there and hashed), check length and hashes over the whole file, fsync.
    The fetcher may start over from 0 (then ``tmp`` is rewritten and the hashes reset)."""
    with _rest(fetcher, url, info.length, offset) as (start, chunks):
        if start != offset:
            hashers = {n: _hasher(n) for n in info.hashes}
        with open(tmp, "r+b" if start else "wb") as out:
            out.seek(start)
            out.truncate()
            received = start
            # The disk's writes and syncs run on their own thread, overlapping the hashing
            # (both release the GIL); every byte is written before the file is judged.
            writer = BackgroundWriter(out, _SYNC_EVERY)
            try:
                for chunk in chunks:
                    received += len(chunk)
                    if received > info.length:
                        raise DownloadLengthMismatchError(
                            f"{info.path}: more than its signed length {info.length}"
                        )
                    for h in hashers.values():
                        h.update(chunk)
                    writer.put(chunk)
            except DownloadError:
                with contextlib.suppress(OSError):
                    writer.close()
                    if keep:  # what arrived is kept for the next run: make it durable
                        os.fsync(out.fileno())
                raise
            except BaseException:
                with contextlib.suppress(OSError):
                    writer.close()
                raise
            writer.close()
            if received != info.length:
                raise LengthOrHashMismatchError(
                    f"{info.path}: length {received} != signed length {info.length}"
                )
            for name, h in hashers.items():
                if h.hexdigest() != info.hashes[name]:
                    raise LengthOrHashMismatchError(f"{info.path}: {name} hash mismatch")
            os.fsync(out.fileno())


@contextlib.contextmanager
def _rest(
    fetcher: TrackingFetcher, url: str, length: int, offset: int
) -> Iterator[tuple[int, Iterator[bytes]]]:
    """The body from ``offset`` on: nothing when the kept bytes are the whole length
    (their hashes decide), else as :meth:`TrackingFetcher.stream_from`."""
    if offset and offset >= length:
        yield offset, iter(())
    elif offset:
        with fetcher.stream_from(url, length, offset) as rest:
            yield rest
    else:
        with fetcher.stream(url, length) as chunks:
            yield 0, chunks


def _move(src: Path, dest: Path) -> None:
    """Rename ``src`` to ``dest``; across filesystems, copy beside ``dest`` first."""
    try:
        os.replace(src, dest)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    src.unlink()


def _hasher(name: str) -> hashlib._Hash:
    try:
        return hashlib.new(name)
    except ValueError as e:
        raise LengthOrHashMismatchError(f"unsupported hash algorithm {name!r}") from e


def _target_url_path(updater: Updater, info: TargetFile, metadata_dir: Path) -> str:
    """The target's path in the URL: ``dir/<hash>.<name>`` under consistent snapshots with
    hash-prefixed targets (spec §5.7.3), else its path."""
    path = info.path
    if updater.config.prefix_targets_with_hash and _consistent_snapshot(metadata_dir):
        dirname, sep, basename = path.rpartition("/")
        path = f"{dirname}{sep}{next(iter(info.hashes.values()))}.{basename}"
    return path


def _consistent_snapshot(metadata_dir: Path) -> bool:
    """From the trusted root ngclient persisted (``root.json``) after verifying it."""
    root = Metadata[Root].from_bytes((metadata_dir / "root.json").read_bytes()).signed
    return bool(root.consistent_snapshot)


@contextlib.contextmanager
def translate_tuf_errors(
    repo: str, fetcher: TrackingFetcher, cache_dir: Path, artefact: str | None = None
) -> Iterator[None]:
    """Turn tuf / OS exceptions into modelfleet ones, naming what failed.

    Args:
        repo: the repository's name in messages (``catalog``, ``director``…).
        fetcher: names the metadata file that failed (its last URL).
        cache_dir: named when the local cache cannot be written.
        artefact: the target being downloaded, if any: bytes that do not match its
            signed length or hashes become :class:`CorruptDeliveryError` (issue 11: that
            copy is bad, another may be good).

    Raises:
        MetadataVerificationError (MetadataExpiredError when it expired),
        CorruptDeliveryError, TransportError
        (DeadlineExceededError), StorageError: translated, ``from`` the original.
    """
    try:
        yield
    except DownloadHTTPError as e:
        raise TransportError(f"{_what(repo, fetcher, artefact)}: HTTP {e.status_code}") from e
    except DownloadLengthMismatchError as e:
        if artefact is not None:
            raise CorruptDeliveryError(f"artefact {artefact}: longer than its signed length") from e
        raise MetadataVerificationError(
            f"{_what(repo, fetcher, None)}: longer than allowed ({e})"
        ) from e
    except DownloadDeadlineError as e:
        raise DeadlineExceededError(f"{_what(repo, fetcher, artefact)}: {e}") from e
    except SlowRetrievalError as e:
        raise TransportError(f"{_what(repo, fetcher, artefact)}: timed out") from e
    except DownloadCancelledError as e:
        raise TransportError(f"{_what(repo, fetcher, artefact)}: download cancelled") from e
    except DownloadError as e:
        cause = e.__cause__ or e
        raise TransportError(f"{_what(repo, fetcher, artefact)}: {cause}") from e
    except RepositoryError as e:
        if artefact is not None and isinstance(e, LengthOrHashMismatchError):
            kind = "length mismatch" if "length" in str(e).lower() else "hash mismatch"
            raise CorruptDeliveryError(f"artefact {artefact}: {kind} ({e})") from e
        if isinstance(e, ExpiredMetadataError):
            raise MetadataExpiredError(
                f"{_what(repo, fetcher, None)}: metadata expired ({repo} {e})",
                repo=repo,
                role=getattr(e, "role", ""),
                expires=getattr(e, "expires", None),
            ) from e
        raise MetadataVerificationError(
            f"{_what(repo, fetcher, None)}: {_metadata_failure(e)} ({e})"
        ) from e
    except OSError as e:
        raise StorageError(f"{repo} cache in {cache_dir}: {e.strerror or e}") from e


def _what(repo: str, fetcher: TrackingFetcher, artefact: str | None) -> str:
    if artefact is not None:
        return f"artefact {artefact}"
    url = fetcher.last_url
    name = url.rsplit("/", 1)[-1] if url else "metadata"
    return f"{repo} {name}"


def _metadata_failure(e: RepositoryError) -> str:
    if isinstance(e, UnsignedMetadataError):
        return "signature verification failed"
    if isinstance(e, ExpiredMetadataError):
        return "metadata expired"
    if isinstance(e, BadVersionNumberError):
        return "version rollback or mismatch"
    if isinstance(e, LengthOrHashMismatchError):
        return "length or hash mismatch"
    if isinstance(e, DeserializationError):
        return "malformed metadata"
    return "rejected"

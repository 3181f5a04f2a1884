"""Reading and writing site trees through python-tuf's fetcher interface (issue 11).

* :class:`FolderFetcher` lets a device update from a mounted folder (an unpacked
  removable-media bundle, a site share): the URLs the TUF client asks for under the hub's
  base URL are read from the folder laid out as a site tree
  (:mod:`modelfleet.delivery.site_tree`). Nothing is trusted because it came on a stick:
  the same ngclient verification runs as over HTTPS (signatures, thresholds, expiry,
  rollback, lengths, hashes, director ⇔ catalog agreement); the fetcher only moves bytes.
  A file the folder lacks answers like the hub's ``404`` (``DownloadHTTPError``), so
  ngclient stops probing for newer roots as it does online. :meth:`FolderFetcher.fingerprint`
  says when the folder's content changed (a re-made stick mounted), so the agent retries a
  download whose bytes were bad at once rather than after its backoff (ADR 0034).
* :class:`RecordingFetcher` wraps another fetcher and writes every body it delivered in
  full into a site tree, so one TUF cycle run against the hub leaves behind exactly the
  files a device's client walks (the root chain, timestamp, snapshot, targets, the
  desired state and its artefacts) — the way a bundle or a device folder is filled.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient.fetcher import FetcherInterface

from modelfleet._atomic import fsync_dir
from modelfleet.delivery import site_tree
from modelfleet.errors import InvalidInputError, StorageError

__all__ = ["FolderFetcher", "RecordingFetcher", "tree_relative"]

log = logging.getLogger("modelfleet.delivery")

_CHUNK = 1 << 20


def tree_relative(base_url: str, url: str) -> str:
    """The site-tree path of ``url`` under ``base_url`` (percent-decoded, checked).

    Raises:
        InvalidInputError: ``url`` is not under ``base_url`` or is not a site-tree path.
    """
    base = urlsplit(base_url.rstrip("/"))
    parts = urlsplit(url)
    if (parts.scheme, parts.netloc) != (base.scheme, base.netloc) or parts.query:
        raise InvalidInputError(f"{url!r} is not under {base_url!r}")
    prefix = base.path.rstrip("/") + "/"
    if not parts.path.startswith(prefix):
        raise InvalidInputError(f"{url!r} is not under {base_url!r}")
    relative = unquote(parts.path[len(prefix) :])
    site_tree.tree_path(relative)
    return relative


class FolderFetcher(FetcherInterface):
    """Serves the TUF client's GETs under ``base_url`` from the site tree at ``root``.

    The base class bounds every download by the length the signed metadata allows; this
    class refuses any path outside the tree (``..``, odd characters, a symbolic link, a
    non-regular file) with ``DownloadError`` and a missing file with
    ``DownloadHTTPError(404)``.
    """

    def __init__(self, root: Path, base_url: str, *, chunk_size: int = _CHUNK) -> None:
        """Read from ``root`` the URLs under ``base_url`` (the hub URL the device's trust
        client was given)."""
        self.root = Path(root)
        self._base = base_url.rstrip("/")
        self._chunk = chunk_size

    def fingerprint(self) -> str:
        """A digest of the folder's listing: every entry's path, type, size, inode and
        modification and change times (no file is read). It changes when a file is
        written, replaced or removed, or another medium is mounted there; equal listings
        give equal digests. Never raises: a missing or unreadable folder has a digest too.
        """
        digest = hashlib.sha256()
        try:
            top = os.stat(self.root)
        except OSError as e:
            return f"unreadable: {e.strerror or e}"
        digest.update(f"{top.st_dev}:{top.st_ino}:{top.st_ctime_ns}\n".encode())
        for folder, dirs, files in os.walk(self.root, onerror=lambda e: None):
            dirs.sort()
            for name in sorted(files + dirs):
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue  # removed while walking: the next look sees the change
                line = (
                    f"{os.path.relpath(path, self.root)}\0{st.st_mode}:{st.st_size}:"
                    f"{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}\n"
                )
                digest.update(line.encode(errors="surrogateescape"))
        return digest.hexdigest()

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            relative = tree_relative(self._base, url)
        except InvalidInputError as e:
            raise DownloadError(f"folder {self.root}: {e}") from e
        path = site_tree.resolve(self.root, relative)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError as e:
            raise DownloadHTTPError(f"folder {self.root}: no {relative}", 404) from e
        except OSError as e:
            raise DownloadError(f"folder {self.root}: cannot read {relative}: {e}") from e
        handle = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            handle.close()
            raise DownloadError(f"folder {self.root}: {relative} is not a regular file")
        return self._chunks(handle, relative)

    def _chunks(self, handle: IO[bytes], relative: str) -> Iterator[bytes]:
        try:
            while chunk := handle.read(self._chunk):
                yield chunk
        except OSError as e:
            raise DownloadError(f"folder {self.root}: reading {relative} failed: {e}") from e
        finally:
            handle.close()


class RecordingFetcher(FetcherInterface):
    """Delegates to ``inner`` and writes each body delivered in full under ``root``.

    A body is spooled to a hidden ``.<name>.partial`` file beside its place as it streams
    (memory stays one chunk, whatever the artefact's size) and renamed into place, fsynced,
    only once the caller has read it to the end; a body the caller stops reading (a length
    bound hit, an error) is deleted. Only URLs under ``base_url`` that are site-tree paths are
    kept; :attr:`recorded` lists them in the order they were written.
    """

    def __init__(self, inner: FetcherInterface, root: Path, base_url: str) -> None:
        self.inner = inner
        self.root = Path(root)
        self._base = base_url.rstrip("/")
        self.recorded: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        body = self.inner.fetch(url)
        try:
            relative = tree_relative(self._base, url)
        except InvalidInputError:
            log.debug("not recorded (not a site-tree path): %s", url)
            return body
        return self._recorded(relative, body)

    def _recorded(self, relative: str, body: Iterator[bytes]) -> Iterator[bytes]:
        dest = site_tree.resolve(self.root, relative)
        tmp = dest.with_name(f".{dest.name}.partial")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            out = open(tmp, "wb")  # noqa: SIM115 - closed in the finally below
        except OSError as e:
            raise StorageError(f"cannot record {relative}: {e.strerror or e}") from e
        done = False
        try:
            for chunk in body:
                out.write(chunk)
                yield chunk
            out.flush()
            os.fsync(out.fileno())
            out.close()
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
            done = True
        except OSError as e:
            raise StorageError(f"cannot record {relative}: {e.strerror or e}") from e
        finally:
            out.close()
            if not done:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        self.recorded.append(relative)

"""The site tree: the hub's TUF URL layout as a folder (issue 11).

A site mirror's cache, an unpacked removable-media bundle and a folder a device updates
from all share one layout: a file's path relative to the tree's root is exactly the path
of the hub URL that serves it, so a device verifies the same bytes the same way whether
they came over HTTPS, from a mirror or on a stick. Nothing in a tree is trusted because it
is there; the TUF client verifies everything it reads.

Layout (all paths relative to the root)::

    trust-root.json                                  the hub's trust-root bundle
    tuf/catalog/metadata/<file>                      catalog metadata (root chain, ...)
    tuf/catalog/targets/<consistent-snapshot path>   package files
    tuf/director/metadata/<file>                     the shared director metadata
    tuf/director/devices/<device id>/metadata/<file> one device's director metadata
    tuf/director/targets/devices/<device id>/<file>  one device's desired state

Pure path arithmetic plus one safe writer; no network.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from modelfleet._atomic import atomic_write_bytes
from modelfleet.errors import InvalidInputError

__all__ = ["TRUST_ROOT", "TUF_PREFIX", "resolve", "tree_path", "write_file"]

TUF_PREFIX = "tuf/"
TRUST_ROOT = "trust-root.json"
_SEGMENT = re.compile(r"^[A-Za-z0-9._+@=-]{1,255}$")


def tree_path(relative: str) -> PurePosixPath:
    """``relative`` (a hub URL path without the leading slash) checked as a tree path.

    Raises:
        InvalidInputError: empty, absolute, with ``..``, ``.`` or an odd character, or not
            under ``tuf/`` (other than ``trust-root.json``).
    """
    if relative == TRUST_ROOT:
        return PurePosixPath(relative)
    parts = relative.split("/")
    if not relative.startswith(TUF_PREFIX) or any(
        p in ("", ".", "..") or not _SEGMENT.match(p) for p in parts
    ):
        raise InvalidInputError(f"not a site-tree path: {relative!r}")
    return PurePosixPath(relative)


def resolve(root: Path, relative: str) -> Path:
    """The file under ``root`` for tree path ``relative`` (checked by :func:`tree_path`);
    never outside ``root``."""
    return Path(root).joinpath(*tree_path(relative).parts)


def write_file(root: Path, relative: str, data: bytes) -> Path:
    """Write ``data`` at tree path ``relative`` crash-safely (see :mod:`modelfleet._atomic`).

    Raises:
        InvalidInputError: a bad path (see :func:`tree_path`).
        StorageError: the file could not be written (full disk, read-only, ...).
    """
    dest = resolve(root, relative)
    atomic_write_bytes(dest, data)
    return dest

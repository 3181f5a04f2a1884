"""The trust-root bundle: both repositories' root metadata in one file for device bootstrap.

Wire format (``trust-root.json``)::

    {"format": "modelfleet.trust-root/v1", "catalog": <root metadata>, "director": <root metadata>}

The root metadata objects are kept verbatim; their signatures cover the canonical JSON of
their ``signed`` part, so re-serialising them does not invalidate them.
"""

from __future__ import annotations

import json
from typing import Any

from modelfleet.errors import ConfigError

__all__ = ["REPOSITORIES", "TRUST_ROOT_FORMAT", "make_trust_root_bundle", "parse_trust_root_bundle"]

TRUST_ROOT_FORMAT = "modelfleet.trust-root/v1"
REPOSITORIES: tuple[str, ...] = ("catalog", "director")


def make_trust_root_bundle(roots: dict[str, bytes]) -> bytes:
    """Build bundle bytes from ``{"catalog": root bytes, "director": root bytes}``.

    Raises:
        ConfigError: a repository is missing or its root is not JSON.
    """
    out: dict[str, Any] = {"format": TRUST_ROOT_FORMAT}
    for repo in REPOSITORIES:
        try:
            out[repo] = json.loads(roots[repo])
        except (KeyError, ValueError) as e:
            raise ConfigError(f"no usable {repo} root metadata for the trust-root bundle") from e
    return json.dumps(out, sort_keys=True, indent=1).encode("utf-8")


def parse_trust_root_bundle(raw: bytes) -> dict[str, bytes]:
    """Split bundle bytes into ``{"catalog": root bytes, "director": root bytes}``.

    Only the structure is checked here; the roots' signatures are checked by the TUF
    client when it loads them.

    Raises:
        ConfigError: not JSON, wrong ``format``, or a repository's root is missing.
    """
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"trust-root bundle is not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != TRUST_ROOT_FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise ConfigError(f"unsupported trust-root bundle format {fmt!r}")
    roots: dict[str, bytes] = {}
    for repo in REPOSITORIES:
        root = doc.get(repo)
        if not isinstance(root, dict) or not isinstance(root.get("signed"), dict):
            raise ConfigError(f"trust-root bundle has no {repo} root metadata")
        roots[repo] = json.dumps(root, sort_keys=True).encode("utf-8")
    return roots

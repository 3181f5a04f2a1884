"""The offline root ceremony's file: the next roots of both repositories, to be signed
elsewhere (issue 10, ADR 0025).

The hub writes a *root-signing bundle* when a key change needs root signatures it cannot
give itself (the root key is offline). The bundle travels to the offline machine, where
:func:`sign_bundle` adds a signature with a key file or any securesystemslib signer (an
HSM), and back, where the hub checks each root against its current one and installs them.

Format (``modelfleet-root-signing/1``)::

    {"format": "modelfleet-root-signing/1",
     "roots": {"catalog": <root metadata>, "director": <root metadata>},
     "signing_keys": {"<keyid>": <public key>, ...},   # old and new root keys
     "thresholds": {"catalog": {"current": {"keyids": [...], "threshold": 1}}, ...}}

``signing_keys`` and ``thresholds`` only help the offline side say whom it may sign for
and what is still missing; the hub never trusts them: it verifies against its own roots.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from securesystemslib.signer import Key, Signer, SSlibKey
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization import DeserializationError

from modelfleet.errors import InvalidInputError

__all__ = [
    "BUNDLE_FORMAT",
    "RootBundle",
    "parse_bundle",
    "sign_bundle",
]

BUNDLE_FORMAT = "modelfleet-root-signing/1"


@dataclass(frozen=True, slots=True)
class RootBundle:
    """Next roots to sign, with the root keys that may sign them.

    Attributes:
        roots: ``{repo: next root metadata}`` (signatures so far included).
        signing_keys: ``{keyid: public key}`` of the current and the next root keys.
        current: ``{repo: (root keyids, threshold)}`` of the roots they replace.
    """

    roots: dict[str, Metadata[Root]]
    signing_keys: dict[str, Key]
    current: dict[str, tuple[list[str], int]]

    @classmethod
    def make(cls, roots: Mapping[str, Metadata[Root]], current: Mapping[str, Root]) -> RootBundle:
        """A bundle of ``roots`` replacing the ``current`` roots of the same repositories."""
        keys: dict[str, Key] = {}
        for repo, md in roots.items():
            for root in (current[repo], md.signed):
                for keyid in root.roles[Root.type].keyids:
                    keys[keyid] = root.keys[keyid]
        return cls(
            dict(roots),
            keys,
            {
                repo: (
                    list(current[repo].roles[Root.type].keyids),
                    current[repo].roles[Root.type].threshold,
                )
                for repo in roots
            },
        )

    def to_bytes(self) -> bytes:
        """The bundle as JSON."""
        body = {
            "format": BUNDLE_FORMAT,
            "roots": {repo: md.to_dict() for repo, md in self.roots.items()},
            "signing_keys": {k: key.to_dict() for k, key in self.signing_keys.items()},
            "thresholds": {
                repo: {"current": {"keyids": ids, "threshold": t}}
                for repo, (ids, t) in self.current.items()
            },
        }
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()

    def status(self) -> dict[str, dict[str, Any]]:
        """Per repository: the version, and signatures given / needed by the current and
        the next root keys (``"ready"`` when both thresholds are met)."""
        out: dict[str, dict[str, Any]] = {}
        for repo, md in self.roots.items():
            ids, threshold = self.current[repo]
            new = md.signed.roles[Root.type]
            have = set(md.signatures)
            cur_n = len(have & set(ids))
            new_n = len(have & set(new.keyids))
            out[repo] = {
                "version": md.signed.version,
                "current_signed": cur_n,
                "current_threshold": threshold,
                "new_signed": new_n,
                "new_threshold": new.threshold,
                "ready": cur_n >= threshold and new_n >= new.threshold,
            }
        return out


def parse_bundle(data: bytes) -> RootBundle:
    """Read a root-signing bundle.

    Raises:
        InvalidInputError: not JSON, not this format, or a root is malformed.
    """
    try:
        body = json.loads(data)
    except ValueError as e:
        raise InvalidInputError(f"root-signing bundle is not JSON: {e}") from e
    if not isinstance(body, dict) or body.get("format") != BUNDLE_FORMAT:
        raise InvalidInputError(f"not a root-signing bundle (expected format {BUNDLE_FORMAT})")
    try:
        roots: dict[str, Metadata[Root]] = {}
        for repo, md in dict(body["roots"]).items():
            parsed = Metadata[Root].from_dict(dict(md))
            if not isinstance(parsed.signed, Root):
                raise InvalidInputError(f"root-signing bundle: {repo} is not root metadata")
            roots[str(repo)] = parsed
        keys: dict[str, Key] = {
            str(k): SSlibKey.from_dict(str(k), dict(v))
            for k, v in dict(body["signing_keys"]).items()
        }
        current = {
            str(repo): (
                [str(i) for i in t["current"]["keyids"]],
                int(t["current"]["threshold"]),
            )
            for repo, t in dict(body["thresholds"]).items()
        }
    except (KeyError, TypeError, ValueError, DeserializationError, RepositoryError) as e:
        raise InvalidInputError(f"root-signing bundle is malformed: {e}") from e
    if set(current) != set(roots):
        raise InvalidInputError("root-signing bundle: thresholds do not name the same roots")
    return RootBundle(roots, keys, current)


def sign_bundle(bundle: RootBundle, signer: Signer) -> list[str]:
    """Add ``signer``'s signature to every root of ``bundle`` (in place).

    Args:
        bundle: the bundle.
        signer: a current or next root key (a key file's CryptoSigner, an HSMSigner...).

    Returns:
        The repositories signed.

    Raises:
        InvalidInputError: the key is neither a current nor a next root key.
    """
    keyid = signer.public_key.keyid
    if keyid not in bundle.signing_keys:
        raise InvalidInputError(
            f"key {keyid[:16]} is not a root key of these roots (current or next)"
        )
    for md in bundle.roots.values():
        md.sign(signer, append=True)
    return sorted(bundle.roots)

"""Signed head checkpoints of the audit chain (issue 8, ADR 0016).

A checkpoint says "the chain had ``seq`` entries and the last one hashed to ``hash``",
signed with the hub's audit key (ed25519). The hub rewrites the signed head in the same
transaction as every append, so the database never holds a chain without its head;
removing entries from the end (truncation) then contradicts the head, and a forged head
needs the key. The signed bytes are the canonical JSON (sorted keys, no spaces) of
``{"_type": "modelfleet-audit-checkpoint", "at", "hash", "seq"}``: the ``_type`` keeps a
checkpoint signature from ever being mistaken for a TUF signature.

``scripts/verify_audit_chain.py`` rebuilds the same bytes with the standard library only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from modelfleet.audit.log import iso

__all__ = ["CHECKPOINT_TYPE", "Checkpoint", "CheckpointSigner", "keyid_of", "verify_checkpoint"]

CHECKPOINT_TYPE = "modelfleet-audit-checkpoint"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A head of the chain: ``seq`` entries, the last hashing to ``hash``, as of ``at``.

    ``keyid`` and ``signature`` (hex) are empty for an unsigned head (one written before
    the hub had an audit key, e.g. by migration 0006).
    """

    seq: int
    hash: str
    at: datetime
    keyid: str = ""
    signature: str = ""

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers."""
        body = {"_type": CHECKPOINT_TYPE, "at": iso(self.at), "hash": self.hash, "seq": self.seq}
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "at": iso(self.at),
            "keyid": self.keyid or None,
            "signature": self.signature or None,
        }


def keyid_of(public: Ed25519PublicKey) -> str:
    """SHA-256 hex of the raw 32-byte public key."""
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


class CheckpointSigner:
    """Signs checkpoints with one ed25519 private key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.keyid = keyid_of(self.public)

    @property
    def public_hex(self) -> str:
        """The raw public key, hex (what an export carries and a verifier pins)."""
        return self.public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    def sign(self, head: Checkpoint) -> Checkpoint:
        """``head`` with this key's keyid and signature."""
        sig = self._private.sign(head.signed_bytes()).hex()
        return Checkpoint(head.seq, head.hash, head.at, self.keyid, sig)


def verify_checkpoint(head: Checkpoint, public: Ed25519PublicKey) -> str | None:
    """Check ``head``'s signature against ``public``.

    Returns:
        None when it verifies, else why not (unsigned, other key, bad signature).
    """
    if not head.signature:
        return "the head checkpoint is not signed"
    if head.keyid != keyid_of(public):
        return f"the head checkpoint is signed by key {head.keyid[:16]}…, not the hub's"
    try:
        public.verify(bytes.fromhex(head.signature), head.signed_bytes())
    except (InvalidSignature, ValueError):
        return "the head checkpoint's signature does not verify"
    return None

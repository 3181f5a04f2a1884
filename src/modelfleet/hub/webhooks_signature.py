"""Webhook signatures (issue 9, ADR 0021): HMAC-SHA256 over ``timestamp.body``, pure.

The hub sends, with every delivery::

    X-Modelfleet-Signature: t=1764676800,v1=<64 lowercase hex digits>
    X-Modelfleet-Event-Id: 42

``v1`` is the lowercase hex HMAC-SHA256, keyed by the subscription's secret (its UTF-8
bytes), of the ASCII timestamp, a dot, and the request body exactly as received (the
Stripe scheme). A receiver recomputes it over the raw body (never a re-serialised one),
compares in constant time, refuses a timestamp older than a tolerance (5 minutes here) to
stop replays, and drops an event id it has seen (deliveries are at least once). The
stdlib is enough::

    import hashlib, hmac, time

    def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
        fields = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        t = fields.get("t", "")
        if not t.isdigit() or abs(time.time() - int(t)) > tolerance_s:
            return False
        mac = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256)
        return hmac.compare_digest(mac.hexdigest(), fields.get("v1", ""))

A header may carry several ``v1=`` values (while a secret is being rotated): any match
is enough.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from modelfleet.errors import InvalidInputError

__all__ = [
    "EVENT_ID_HEADER",
    "EVENT_KIND_HEADER",
    "SIGNATURE_HEADER",
    "TOLERANCE_S",
    "sign",
    "signature_header",
    "verify",
]

SIGNATURE_HEADER: Final = "X-Modelfleet-Signature"
EVENT_ID_HEADER: Final = "X-Modelfleet-Event-Id"
EVENT_KIND_HEADER: Final = "X-Modelfleet-Event-Kind"
#: How old (or how far ahead) a signature's timestamp may be when it is checked.
TOLERANCE_S: Final = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``b"<timestamp>." + body`` keyed by ``secret``."""
    message = str(int(timestamp)).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The value of :data:`SIGNATURE_HEADER`: ``t=<timestamp>,v1=<hex>``."""
    return f"t={int(timestamp)},v1={sign(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, now: float, tolerance_s: float = TOLERANCE_S
) -> int:
    """Check a signature header against the raw ``body``; return its timestamp.

    Args:
        secret: the subscription's secret.
        header: the :data:`SIGNATURE_HEADER` value.
        body: the request body exactly as received.
        now: the receiver's time (Unix seconds).
        tolerance_s: the largest accepted distance between ``now`` and the timestamp.

    Raises:
        InvalidInputError: the header is malformed, the timestamp is outside the
            tolerance, or no ``v1`` value matches.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if not value.isdigit():
                raise InvalidInputError("the signature's timestamp is not a number")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise InvalidInputError("the signature header needs t=... and v1=...")
    if abs(now - timestamp) > tolerance_s:
        raise InvalidInputError(
            f"the signature's timestamp is {abs(now - timestamp):.0f} s away "
            f"(tolerance {tolerance_s:.0f} s)"
        )
    expected = sign(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise InvalidInputError("the signature does not match the body")
    return timestamp

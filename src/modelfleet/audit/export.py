"""The audit export file (``modelfleet audit export``): JSON Lines.

Line 1 is the header ``{"format": "modelfleet-audit-export", "version": 1, "exported_at",
"checkpoint": {"seq", "hash", "at", "keyid", "signature"}, "public_key": {"keytype":
"ed25519", "keyid", "public"} | null, "witness": checkpoint | null}``; then entries
``1..checkpoint.seq``, one :meth:`~modelfleet.audit.log.AuditRecord.to_dict` per line,
oldest first. ``scripts/verify_audit_chain.py`` checks such a file with the standard
library only (ADR 0016).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from modelfleet.audit.log import iso

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "entry_line", "header_line"]

EXPORT_FORMAT = "modelfleet-audit-export"
EXPORT_VERSION = 1


def header_line(anchor: Mapping[str, Any], exported_at: datetime) -> bytes:
    """The first line, from the hub's ``GET /api/v1/audit/head`` answer ``anchor``."""
    header = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "exported_at": iso(exported_at),
        "checkpoint": anchor["checkpoint"],
        "public_key": anchor.get("public_key"),
        "witness": anchor.get("witness"),
    }
    return orjson.dumps(header, option=orjson.OPT_SORT_KEYS) + b"\n"


def entry_line(entry: Mapping[str, Any]) -> bytes:
    """One entry's line (the fields as the hub served them)."""
    return orjson.dumps(dict(entry), option=orjson.OPT_SORT_KEYS) + b"\n"

"""modelfleet.audit: the append-only, hash-chained audit log."""

from modelfleet.audit.log import (
    GENESIS_HASH,
    AuditRecord,
    AuditRow,
    AuditStore,
    append_entry,
    entry_hash,
    first_broken,
    list_entries,
    verify_chain,
)

__all__ = [
    "GENESIS_HASH",
    "AuditRecord",
    "AuditRow",
    "AuditStore",
    "append_entry",
    "entry_hash",
    "first_broken",
    "list_entries",
    "verify_chain",
]

"""modelfleet.audit: the append-only, hash-chained audit log, its signed head and checks."""

from modelfleet.audit.checkpoint import Checkpoint, CheckpointSigner, verify_checkpoint
from modelfleet.audit.log import (
    GENESIS_HASH,
    AuditQuery,
    AuditRecord,
    AuditRow,
    AuditStore,
    append_entry,
    entry_hash,
    first_broken,
    list_entries,
    verify_chain,
)
from modelfleet.audit.verify import ChainProblem, ChainReport, ProblemKind, check_chain

__all__ = [
    "GENESIS_HASH",
    "AuditQuery",
    "AuditRecord",
    "AuditRow",
    "AuditStore",
    "ChainProblem",
    "ChainReport",
    "Checkpoint",
    "CheckpointSigner",
    "ProblemKind",
    "append_entry",
    "check_chain",
    "entry_hash",
    "first_broken",
    "list_entries",
    "verify_chain",
    "verify_checkpoint",
]

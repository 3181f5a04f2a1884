"""The hub service's audit log access and TUF upkeep (a mixin of ``HubService``)."""

from __future__ import annotations

from pathlib import Path

from modelfleet.audit.log import list_entries, verify_chain
from modelfleet.errors import NotFoundError
from modelfleet.hub._service_base import _ServiceBase
from modelfleet.hub._values import JSONDict


class _UpkeepOps(_ServiceBase):
    """The audit log, the trust root and TUF metadata and targets."""

    # -- audit and upkeep ----------------------------------------------------------------

    def audit(self, after_seq: int = 0, limit: int = 100) -> list[JSONDict]:
        """Audit entries with ``seq > after_seq``, oldest first, at most ``limit``
        (capped by ``audit_page_limit``): ``{"seq", "at", "actor", "action", "subject",
        "ticket", "details", "prev_hash", "hash"}``."""
        limit = max(1, min(int(limit), self.config.audit_page_limit))
        with self._read() as s:
            return [r.to_dict() for r in list_entries(s, int(after_seq), limit)]

    def verify_audit(self) -> int | None:
        """The first broken ``seq`` of the audit chain, or None if it is intact."""
        with self._read() as s:
            return verify_chain(s)

    def trust_root(self) -> bytes:
        """The trust-root bundle devices bootstrap from."""
        return self.trust.trust_root_bundle()

    def refresh_expiring(self) -> list[str]:
        """Re-sign TUF roles close to expiry; returns ``"<repo>/<role>"`` of each."""
        with self._write() as s:
            done = self.trust.refresh_expiring()
            if done:
                self._audit(s, "system:refresh", "tuf.refresh", "tuf", {"roles": done})
        return done

    def tuf_metadata(self, repo: str, filename: str) -> Path:
        """The metadata file behind ``GET /tuf/<repo>/metadata/<filename>``.

        Raises:
            NotFoundError: unknown repository or file.
        """
        path = self.trust.metadata_path(repo, filename)
        if path is None or not path.is_file():
            raise NotFoundError(f"no metadata {repo}/{filename}")
        return path

    def tuf_target(self, repo: str, url_path: str) -> Path:
        """The blob behind ``GET /tuf/<repo>/targets/<dir>/<sha256>.<name>``.

        Raises:
            NotFoundError: the path is not a target listed now with that hash.
        """
        digest = self.trust.target_digest(repo, url_path)
        if digest is None:
            raise NotFoundError(f"no target {repo}/{url_path}")
        return self.store.path(digest)

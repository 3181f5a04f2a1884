"""A plain TUF client over one repository, for the tuf-conformance suite (issue 10).

:class:`ConformanceClient` is what ``modelfleet tuf-client`` runs: ngclient set up, fetched
and translated exactly as the agent's :class:`~modelfleet.trust.client.DeviceTrustClient`
does (:mod:`modelfleet.trust._ngclient`), over the agent's :class:`HttpFetcher`, minus the
agent's two-repository (director + catalog) rule, which the suite's single repository
cannot exercise.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType

from tuf.api.metadata import Metadata
from tuf.api.serialization import DeserializationError
from tuf.ngclient import Updater

from modelfleet.delivery.http_fetcher import HttpFetcher
from modelfleet.errors import ArtefactVerificationError, ConfigError, MetadataVerificationError
from modelfleet.trust._ngclient import (
    TrackingFetcher,
    cached_target_path,
    download_target,
    new_updater,
    translate_tuf_errors,
)

__all__ = ["ConformanceClient"]

_TOP_LEVEL = ("root", "timestamp", "snapshot", "targets")


class ConformanceClient:
    """One update cycle against one TUF repository (ngclient: one refresh per instance).

    The trusted root must already be in ``metadata_dir/root.json`` (``tuf-client init``).
    """

    def __init__(
        self,
        metadata_dir: Path,
        metadata_url: str,
        target_dir: Path | None = None,
        target_base_url: str | None = None,
        fetcher: HttpFetcher | None = None,
    ) -> None:
        """Set up; nothing is fetched yet.

        Raises:
            ConfigError: no trusted root in ``metadata_dir`` (run ``init`` first), or it is
                not a valid root.
            StorageError: a folder cannot be created.
        """
        self.metadata_dir = Path(metadata_dir)
        self.target_dir = None if target_dir is None else Path(target_dir)
        self._target_base_url = target_base_url
        self._inner = fetcher or HttpFetcher()
        self._owns_fetcher = fetcher is None
        self._fetcher = TrackingFetcher(self._inner)
        if not (self.metadata_dir / "root.json").is_file():
            raise ConfigError(f"no trusted root in {self.metadata_dir}: run 'init' first")
        try:
            with self._translate():
                self._updater: Updater = new_updater(
                    self.metadata_dir,
                    metadata_url,
                    self.target_dir,
                    target_base_url,
                    self._fetcher,
                    None,
                )
        except MetadataVerificationError as e:
            raise ConfigError(f"trusted root in {self.metadata_dir} is invalid: {e}") from e
        self._refreshed = False

    def refresh(self) -> dict[str, int]:
        """Run the TUF client workflow for the top-level roles (once per instance).

        Returns:
            The trusted version of each top-level role afterwards.

        Raises:
            MetadataVerificationError, TransportError, StorageError: as translated by
                :func:`~modelfleet.trust._ngclient.translate_tuf_errors`.
        """
        with self._translate():
            self._updater.refresh()
        self._refreshed = True
        return self._versions()

    def download(self, target_path: str) -> Path:
        """Download one target, verified (refreshing first if not done yet); a cached file
        that matches is not fetched again.

        Returns:
            The file's path in ``target_dir``.

        Raises:
            ArtefactVerificationError: the target is not listed, or its bytes do not match.
            MetadataVerificationError, TransportError, StorageError: as for :meth:`refresh`
                (delegated metadata is loaded here).
            ConfigError: no ``target_dir`` / ``target_base_url``.
        """
        if self.target_dir is None or self._target_base_url is None:
            raise ConfigError("download needs a target folder and a target base URL")
        if not self._refreshed:
            self.refresh()
        with self._translate():
            info = self._updater.get_targetinfo(target_path)
        if info is None:
            raise ArtefactVerificationError(f"target {target_path!r}: not in the repository")
        dest = cached_target_path(self.target_dir, info)
        with self._translate(artefact=target_path):
            return download_target(
                self._updater,
                self._fetcher,
                info,
                self._target_base_url,
                dest,
                self.metadata_dir,
            )

    def close(self) -> None:
        """Close the HTTP connections of the fetcher this client created."""
        if self._owns_fetcher:
            self._inner.close()

    def __enter__(self) -> ConformanceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _translate(self, artefact: str | None = None) -> AbstractContextManager[None]:
        return translate_tuf_errors("repository", self._fetcher, self.metadata_dir, artefact)

    def _versions(self) -> dict[str, int]:
        versions: dict[str, int] = {}
        for role in _TOP_LEVEL:
            try:
                md = Metadata.from_bytes((self.metadata_dir / f"{role}.json").read_bytes())
            except (OSError, DeserializationError):
                continue
            versions[role] = md.signed.version
        return versions

"""Verified model versions on the device's disk, content-addressed.

``models/<name>/<manifest sha256>/{model.onnx,manifest.json}``: a folder per signed package,
named by its manifest's digest (the manifest binds the model's digest, version and profile),
so two versions with identical model bytes but their own manifests never share one
(issue 9: each keeps its own reference profile and decisions). Folders of older agents,
named by the model's digest, keep working: ``state.json`` records each slot's path.
A version directory appears only
by an atomic rename from ``.staging`` once both files passed TUF verification, so a
directory that exists is always complete. Which directory is active, previous or
candidate is recorded in ``state.json`` (see :mod:`modelfleet.agent.state`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from modelfleet._atomic import fsync_dir
from modelfleet.catalog.artefacts import is_sha256
from modelfleet.errors import InvalidInputError, StorageError

__all__ = ["SlotStore"]

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


class SlotStore:
    """The folder of installed versions under ``state_dir/models``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def version_dir(self, model: str, digest: str) -> Path:
        """The folder of ``model``'s package whose manifest has sha256 ``digest``."""
        if not is_sha256(digest) or "/" in model or model.startswith("."):
            raise InvalidInputError(f"bad slot name {model!r}/{digest!r}")
        return self.root / model / digest

    def has(self, model: str, digest: str) -> bool:
        """Whether the package's folder is complete (it exists only once verified)."""
        d = self.version_dir(model, digest)
        return (d / MODEL_FILE).is_file() and (d / MANIFEST_FILE).is_file()

    def staging_dir(self) -> Path:
        """A fresh empty folder on the same filesystem, for downloads in progress."""
        d = self.root / ".staging" / uuid.uuid4().hex
        try:
            d.mkdir(parents=True)
        except OSError as e:
            raise StorageError(f"cannot create {d}: {e.strerror or e}") from e
        return d

    def commit(self, staging: Path, model: str, digest: str) -> Path:
        """Move a verified staging folder into place (atomic rename) and return it."""
        final = self.version_dir(model, digest)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                shutil.rmtree(staging, ignore_errors=True)
                return final
            for f in staging.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(staging, final)
            fsync_dir(final.parent)
        except OSError as e:
            raise StorageError(f"cannot install {model}@{digest[:12]}: {e.strerror or e}") from e
        return final

    def discard(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def garbage_collect(self, keep: Iterable[Path | str]) -> list[Path]:
        """Delete installed version folders not in ``keep`` (the slots' recorded paths) and
        stale staging."""
        keep_dirs = {Path(p) for p in keep}
        removed: list[Path] = []
        shutil.rmtree(self.root / ".staging", ignore_errors=True)
        if not self.root.is_dir():
            return removed
        for model_dir in self.root.iterdir():
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            for vdir in model_dir.iterdir():
                if vdir not in keep_dirs:
                    shutil.rmtree(vdir, ignore_errors=True)
                    removed.append(vdir)
        return removed

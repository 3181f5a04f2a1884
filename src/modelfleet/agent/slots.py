"""Verified model versions on the device's disk, content-addressed.

``models/<name>/<sha256>/{model.onnx,manifest.json}``. A version directory appears only
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

    def version_dir(self, model: str, sha256: str) -> Path:
        if not is_sha256(sha256) or "/" in model or model.startswith("."):
            raise InvalidInputError(f"bad slot name {model!r}/{sha256!r}")
        return self.root / model / sha256

    def has(self, model: str, sha256: str) -> bool:
        d = self.version_dir(model, sha256)
        return (d / MODEL_FILE).is_file() and (d / MANIFEST_FILE).is_file()

    def staging_dir(self) -> Path:
        """A fresh empty folder on the same filesystem, for downloads in progress."""
        d = self.root / ".staging" / uuid.uuid4().hex
        try:
            d.mkdir(parents=True)
        except OSError as e:
            raise StorageError(f"cannot create {d}: {e.strerror or e}") from e
        return d

    def commit(self, staging: Path, model: str, sha256: str) -> Path:
        """Move a verified staging folder into place (atomic rename) and return it."""
        final = self.version_dir(model, sha256)
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
            raise StorageError(f"cannot install {model}@{sha256[:12]}: {e.strerror or e}") from e
        return final

    def discard(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def garbage_collect(self, keep: Iterable[tuple[str, str]]) -> list[Path]:
        """Delete installed versions not in ``keep`` (pairs of model, sha256) and stale staging."""
        keep_dirs = {self.version_dir(m, s) for m, s in keep}
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

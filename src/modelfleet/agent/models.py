"""The loaded-model cache: which installed versions are in memory, with an injected probe.

Loading a version (ONNX Runtime session + warm-up) costs time and memory; the cache keeps
each loaded version once, by :func:`~modelfleet.agent.plan.slot_key`, and drops the ones
no route uses. Whether the *previous* version may stay loaded (instant rollback) depends on
free memory, asked of a :data:`MemoryProbe` the caller passes in (tests give a fixed one).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from modelfleet.agent.plan import slot_key
from modelfleet.agent.slots import MANIFEST_FILE, MODEL_FILE
from modelfleet.agent.state import ModelSlots, SlotRecord
from modelfleet.errors import InvalidInputError
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.packaging.reference import PackageProfile
from modelfleet.rollout.desired_state import Mode
from modelfleet.serving.host import ModelHost
from modelfleet.serving.model import RuntimeSettings
from modelfleet.serving.router import Route
from modelfleet.serving.runtime import LoadedModel

__all__ = [
    "MemoryProbe",
    "ModelCache",
    "ModelLoader",
    "memory_allows",
    "onnx_loader",
    "proc_meminfo_available",
    "profile_of",
    "publish_route",
]

log = logging.getLogger("modelfleet.agent")

#: Bytes of memory available now, or None when the platform does not say.
MemoryProbe = Callable[[], int | None]
#: (model name, version, model file, sha256) -> a loaded model.
ModelLoader = Callable[[str, str, Path, str], LoadedModel]


def proc_meminfo_available() -> int | None:
    """MemAvailable from /proc/meminfo, or None where the kernel does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_allows(model_bytes: int, available: int | None, headroom: float = 4.0) -> bool:
    """Whether keeping another copy of a model of ``model_bytes`` leaves room to spare.

    ONNX Runtime needs a few times the file size for a session; ``headroom`` times the
    file size plus 256 MiB must stay available. Unknown memory counts as enough.
    """
    if available is None:
        return True
    return available > model_bytes * headroom + (256 << 20)


def _manifest_beside(model_file: Path) -> PackageManifest | None:
    """The verified manifest installed next to ``model_file``, None when there is none."""
    try:
        raw = (model_file.parent / MANIFEST_FILE).read_bytes()
        return PackageManifest.from_json(raw)
    except (OSError, InvalidInputError):
        return None


#: (model, version, profile or None) -> None: told the drift profile of each version loaded.
ProfileSink = Callable[[str, str, PackageProfile | None], None]
#: (model, version, the manifest's anomaly_scorer or None) -> None (issue 9).
ScorerSink = Callable[[str, str, "Mapping[str, Any] | None"], None]


def profile_of(manifest: PackageManifest | None) -> PackageProfile | None:
    """The reference profile of a verified manifest; None when it has none, or one this
    agent cannot read (logged: the model still serves, its drift is not counted)."""
    if manifest is None:
        return None
    try:
        return manifest.package_profile()
    except InvalidInputError as e:
        log.warning(
            "%s v%s: drift not counted, its reference profile is unreadable: %s",
            manifest.name,
            manifest.version,
            e,
        )
        return None


def onnx_loader(
    settings: RuntimeSettings | None = None,
    profiles: ProfileSink | None = None,
    scorers: ScorerSink | None = None,
) -> ModelLoader:
    """A loader of installed versions into ONNX Runtime with ``settings`` (execution
    providers, thread counts), each with the output decisions its signed manifest declares
    (what a shadow comparison judges); ``profiles`` is told each loaded version's reference
    profile, and ``scorers`` its anomaly scorer (from the same verified manifest), before
    the version can be routed."""
    runtime = settings or RuntimeSettings()

    def load(name: str, version: str, path: Path, sha256: str) -> LoadedModel:
        manifest = _manifest_beside(path)
        decisions = None if manifest is None else manifest.effective_decisions()
        model = LoadedModel.load(name, version, path, sha256, runtime, decisions)
        if profiles is not None or scorers is not None:
            if manifest is not None and str(manifest.version) != version:
                # a folder of an older agent, keyed by the model's digest: another version
                # of the same bytes installed the manifest found here; its profile is not ours
                log.warning(
                    "%s v%s: drift not counted, the manifest beside it is v%s's",
                    name,
                    version,
                    manifest.version,
                )
                manifest = None
            if profiles is not None:
                profiles(name, version, profile_of(manifest))
            if scorers is not None:
                scorers(name, version, None if manifest is None else manifest.anomaly_scorer)
        return model

    return load


_load = onnx_loader()


class ModelCache:
    """Loaded versions by slot key; thread-safe.

    Loading runs outside the cache's own lock, so the updater can load a new version
    before it takes its state lock to switch (status never waits on a model load).

    Args:
        memory: the free-memory probe.
        loader: how a version is loaded (tests may count loads).
    """

    def __init__(
        self, memory: MemoryProbe = proc_meminfo_available, loader: ModelLoader = _load
    ) -> None:
        self._memory = memory
        self._loader = loader
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str, rec: SlotRecord) -> LoadedModel:
        """The loaded, warmed-up model of ``rec`` (loaded now if it is not yet)."""
        key = slot_key(rec.sha256, rec.version)
        with self._lock:
            model = self._loaded.get(key)
        if model is not None:
            return model
        model = self._loader(name, str(rec.version), Path(rec.path) / MODEL_FILE, rec.sha256)
        model.warm_up()
        with self._lock:
            return self._loaded.setdefault(key, model)

    def is_loaded(self, rec: SlotRecord) -> bool:
        with self._lock:
            return slot_key(rec.sha256, rec.version) in self._loaded

    def may_keep(self, rec: SlotRecord) -> bool:
        """Whether ``rec`` can be (or stay) in memory beside what serves now."""
        if self.is_loaded(rec):
            return True
        try:
            size = (Path(rec.path) / MODEL_FILE).stat().st_size
        except OSError:
            return False
        return memory_allows(size, self._memory())

    def retain(self, keys: Iterable[str]) -> None:
        """Unload every version whose slot key is not in ``keys``."""
        keep = set(keys)
        with self._lock:
            for key in list(self._loaded):
                if key not in keep:
                    del self._loaded[key]

    def describe(self) -> list[str]:
        """``["m v2", ...]``, for status."""
        with self._lock:
            return sorted(f"{m.name} v{m.version}" for m in self._loaded.values())


def publish_route(
    host: ModelHost,
    cache: ModelCache,
    name: str,
    slots: ModelSlots,
    keep_previous: bool,
    used: set[str],
) -> None:
    """Load what ``slots`` serve and switch the host's route; unload what nothing uses.

    The previous version stays loaded (instant rollback) only when ``keep_previous`` and
    memory allows. ``used``: slot keys other models' slots still name.

    Raises:
        ModelfleetError: a version does not load (the route is left as it was).
    """
    if slots.active is None:
        host.remove(name)
        return
    production = cache.get(name, slots.active)
    candidate = cache.get(name, slots.candidate) if slots.candidate else None
    previous = None
    if slots.previous is not None and keep_previous:
        if cache.may_keep(slots.previous):
            previous = cache.get(name, slots.previous)
        else:
            log.warning(
                "not keeping %s v%s loaded: too little free memory (rollback will "
                "load it from disk)",
                name,
                slots.previous.version,
            )
    host.set_route(name, Route(production, candidate, Mode(slots.mode), slots.share, previous))
    for other in host.names():
        route = host.route(other)
        if route is None:
            continue
        for m in (route.production, route.candidate, route.previous):
            if m is not None:
                used.add(slot_key(m.digest, m.version))
    cache.retain(used)

"""The device's update cycle: fetch the director's word, verify, install, smoke-test, switch.

The shell around :mod:`modelfleet.agent.plan` (pure decisions). Every step that fails
leaves the device serving what it had; the reason is kept in the state and reported at
the next check-in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from modelfleet.agent.plan import SlotPlan, plan_slots, slot_key
from modelfleet.agent.slots import MANIFEST_FILE, MODEL_FILE, SlotStore
from modelfleet.agent.state import (
    AgentState,
    ModelSlots,
    Refusal,
    SlotRecord,
    load_state,
    save_state,
)
from modelfleet.clock import Clock
from modelfleet.errors import (
    ArtefactVerificationError,
    CompatibilityError,
    InvalidInputError,
    ModelfleetError,
    RefusedUpdateError,
    TransportError,
    TrustError,
)
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.packaging.onnx_model import load_session
from modelfleet.packaging.smoke import check_smoke
from modelfleet.rollout.desired_state import (
    ArtefactRef,
    Assignment,
    DesiredState,
    Mode,
)
from modelfleet.serving.host import ModelHost
from modelfleet.serving.router import Route
from modelfleet.serving.runtime import LoadedModel

__all__ = ["CycleResult", "PackageSource", "Updater"]

log = logging.getLogger("modelfleet.agent")

SUPPORTED_RUNTIMES = frozenset({"onnxruntime"})
#: An unchanged state is still rewritten this often, so ``last_check`` on disk stays recent.
STATE_REFRESH_S = 300.0


def max_supported_opset() -> int:
    """Highest default-domain opset this device's ONNX stack knows."""
    import onnx.defs

    return int(onnx.defs.onnx_opset_version())


class PackageSource(Protocol):
    """Where verified desired states and package files come from (TUF over HTTP, media…)."""

    def fetch_desired_state(self, device_id: str) -> bytes | None:
        """Return this device's verified desired-state bytes, or None if it has none."""
        ...

    def fetch_package_file(
        self, target_path: str, expected_sha256: str, expected_length: int, dest: Path
    ) -> Path:
        """Download a catalog target, verified, and cross-checked against the director."""
        ...


@dataclass(frozen=True)
class CycleResult:
    """What one update cycle did."""

    changed: bool
    serial: int
    refusals: tuple[Refusal, ...] = ()
    error: str = ""


class Updater:
    """Applies the director's desired state to this device; thread-safe.

    Args:
        device_id: this device's id; a desired state for another id is refused.
        state_dir: persistent folder (state.json, models/).
        source: verified package source.
        host: the serving host whose routes are switched.
        clock: wall clock for timestamps in the state.
        keep_previous_loaded: keep the previous version in memory for instant rollback.
    """

    def __init__(
        self,
        device_id: str,
        state_dir: Path,
        source: PackageSource | None,
        host: ModelHost,
        clock: Clock,
        keep_previous_loaded: bool = True,
    ) -> None:
        self.device_id = device_id
        self.state_dir = Path(state_dir)
        self.source = source
        self.host = host
        self.clock = clock
        self.keep_previous_loaded = keep_previous_loaded
        self.slots = SlotStore(self.state_dir / "models")
        self._lock = threading.RLock()
        self._loaded: dict[str, LoadedModel] = {}
        self.state: AgentState = load_state(self.state_dir, device_id)
        #: Called after every route switch with (model, slots, fallback_ok): the guard
        #: re-targets its watch. ``fallback_ok`` is False when the previous version is
        #: one the device rolled away from (a rollback to it would flap).
        self.on_route_published: Callable[[str, ModelSlots, bool], None] | None = None
        self._persisted_key = b""
        self._persisted_at = float("-inf")

    # -- startup -------------------------------------------------------------------------

    def restore(self) -> list[str]:
        """Serve what the state says, from disk only (works with no hub in reach).

        Returns:
            Problems found (a version that no longer loads is dropped and reported).
        """
        problems: list[str] = []
        with self._lock:
            for name, slots in list(self.state.models.items()):
                try:
                    self._publish_route(name, slots)
                except ModelfleetError as e:
                    problems.append(f"{name}: {e}")
                    log.error("cannot restore %s: %s", name, e)
        return problems

    # -- the cycle -----------------------------------------------------------------------

    def run_cycle(self) -> CycleResult:
        """Check the director once and apply any change.

        Never raises for hub or verification problems: they are recorded in the state.
        """
        if self.source is None:
            return CycleResult(False, self.state.applied_serial, error="no package source")
        now = self._now()
        try:
            raw = self.source.fetch_desired_state(self.device_id)
        except TransportError as e:
            with self._lock:
                self.state.last_check = now
                self.state.last_error = f"hub unreachable: {e}"
                self._save()
            return CycleResult(False, self.state.applied_serial, error=str(e))
        except TrustError as e:
            with self._lock:
                self.state.last_check = now
                self.state.last_error = f"director metadata refused: {e}"
                self.state.add_event(now, "refused", f"director metadata refused: {e}")
                self._save()
            log.error("director metadata refused: %s", e)
            return CycleResult(False, self.state.applied_serial, error=str(e))
        with self._lock:
            self.state.last_check = now
            self.state.last_error = ""
            if raw is None:
                self._save()
                return CycleResult(False, self.state.applied_serial)
            try:
                desired = DesiredState.from_json(raw)
            except InvalidInputError as e:
                self.state.last_error = str(e)
                self._save()
                return CycleResult(False, self.state.applied_serial, error=str(e))
            if desired.device_id != self.device_id:
                msg = f"desired state is for device {desired.device_id!r}, not this one"
                self.state.last_error = msg
                self._save()
                return CycleResult(False, self.state.applied_serial, error=msg)
            if desired.serial < self.state.applied_serial:
                msg = f"desired state serial {desired.serial} is older than applied"
                self.state.last_error = msg
                self._save()
                return CycleResult(False, self.state.applied_serial, error=msg)
            if desired.serial == self.state.applied_serial and self.state.desired is not None:
                self._save()
                return CycleResult(False, desired.serial)
            refusals: list[Refusal] = []
            for assignment in desired.assignments:
                refusals.extend(self._apply(assignment, desired.serial))
            for name in list(self.state.models):
                if desired.assignment(name) is None:
                    self._unassign(name)
            self.state.applied_serial = desired.serial
            self.state.desired = {
                "serial": desired.serial,
                "assignments": [a.to_dict() for a in desired.assignments],
            }
            self._save()
            self._collect_garbage()
            return CycleResult(True, desired.serial, tuple(refusals))

    def _apply(self, assignment: Assignment, serial: int) -> list[Refusal]:
        name = assignment.model
        current = self.state.models.get(name, ModelSlots())
        plan = plan_slots(current, assignment, serial, self.state.refused, self.state.rolled_back)
        refusals: list[Refusal] = []
        installed: dict[str, SlotRecord] = {}
        for ref in plan.to_install:
            try:
                installed[slot_key(ref.sha256, ref.version)] = self._install(ref)
            except (TrustError, RefusedUpdateError, InvalidInputError) as e:
                refusals.append(self._refuse(ref, serial, e))
            except ModelfleetError as e:  # transport, storage: retry next cycle
                self.state.add_event(self._now(), "error", f"{name} v{ref.version}: {e}")
                log.warning("install of %s v%s failed: %s", name, ref.version, e)
        new_slots = plan.resolve(current, installed)
        if new_slots != current or name not in self.host.names():
            try:
                self._publish_route(name, new_slots)
            except ModelfleetError as e:
                self.state.add_event(self._now(), "error", f"{name}: cannot serve: {e}")
                return refusals
            self._describe_switch(name, current, new_slots)
            self.state.models[name] = new_slots
        return refusals

    def _install(self, ref: ArtefactRef) -> SlotRecord:
        """Download, verify, smoke-test one version; return its slot record."""
        assert self.source is not None
        if self.slots.has(ref.model, ref.sha256):
            final = self.slots.version_dir(ref.model, ref.sha256)
            manifest = PackageManifest.from_json((final / MANIFEST_FILE).read_bytes())
        else:
            staging = self.slots.staging_dir()
            try:
                self.source.fetch_package_file(
                    ref.model_path, ref.sha256, ref.length, staging / MODEL_FILE
                )
                self.source.fetch_package_file(
                    ref.manifest_path,
                    ref.manifest_sha256,
                    ref.manifest_length,
                    staging / MANIFEST_FILE,
                )
                manifest = PackageManifest.from_json((staging / MANIFEST_FILE).read_bytes())
                check_manifest_matches(manifest, ref)
            except BaseException:
                self.slots.discard(staging)
                raise
            final = self.slots.commit(staging, ref.model, ref.sha256)
        try:
            smoke_test(final / MODEL_FILE, manifest)
        except ModelfleetError:
            self.slots.discard(final)
            raise
        log.info("installed %s v%s (%s)", ref.model, ref.version, ref.sha256[:12])
        return SlotRecord(ref.version, ref.sha256, str(final))

    def _refuse(self, ref: ArtefactRef, serial: int, error: ModelfleetError) -> Refusal:
        kind = "trust" if isinstance(error, TrustError) else "check"
        refusal = Refusal(
            at=self._now(),
            model=ref.model,
            version=ref.version,
            sha256=ref.sha256,
            serial=serial,
            reason=str(error),
            kind=kind,
        )
        self.state.refused[ref.sha256] = serial
        self.state.last_refusal = refusal
        self.state.add_event(refusal.at, "refused", f"{ref.model} v{ref.version}: {error}")
        log.error("REFUSED %s v%s: %s", ref.model, ref.version, error)
        return refusal

    def _unassign(self, name: str) -> None:
        self.host.remove(name)
        self.state.models.pop(name, None)
        self.state.add_event(self._now(), "unassigned", f"{name} is no longer assigned")

    # -- rollback ------------------------------------------------------------------------

    def rollback(
        self,
        model: str | None = None,
        reason: str = "operator request",
        away_from: int | None = None,
    ) -> dict[str, Any]:
        """Switch back without downloading anything.

        A model with a candidate drops the candidate; otherwise the previous version
        becomes active again. The version rolled away from is not re-applied until the
        director issues a new desired state.

        Args:
            model: one model, or every model when None.
            reason: kept in the events and reported to the hub.
            away_from: only roll back if this is the version being rolled away from
                (the guard's check that nothing changed since it decided).

        Returns:
            ``{"rolled_back": [{"model", "from", "to"}], "reason"}``.

        Raises:
            InvalidInputError: nothing to roll back to.
        """
        with self._lock:
            names = [model] if model else list(self.state.models)
            done: list[dict[str, Any]] = []
            for name in names:
                slots = self.state.models.get(name)
                if slots is None or slots.active is None:
                    continue
                if slots.candidate is not None:
                    away = slots.candidate
                    new = ModelSlots(slots.active, slots.previous, None, "full", 0.0, slots.slo)
                    to_version = slots.active.version
                elif slots.previous is not None:
                    away = slots.active
                    new = ModelSlots(slots.previous, slots.active, None, "full", 0.0, slots.slo)
                    to_version = slots.previous.version
                else:
                    continue
                if away_from is not None and away.version != away_from:
                    continue
                self.state.rolled_back[away.sha256] = self.state.applied_serial
                self._publish_route(name, new)
                self.state.models[name] = new
                done.append({"model": name, "from": away.version, "to": to_version})
                msg = f"{name}: rolled back from v{away.version} to v{to_version} ({reason})"
                self.state.add_event(self._now(), "rollback", msg)
                log.warning(msg)
            if not done:
                raise InvalidInputError("nothing to roll back: no previous version or candidate")
            self._save()
            return {"rolled_back": done, "reason": reason}

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The state as a JSON-able dict, plus what is loaded in memory."""
        with self._lock:
            data = self.state.to_dict()
            data["loaded"] = sorted(f"{m.name} v{m.version}" for m in self._loaded.values())
            return data

    # -- internals -----------------------------------------------------------------------

    def _load(self, name: str, rec: SlotRecord) -> LoadedModel:
        key = slot_key(rec.sha256, rec.version)
        model = self._loaded.get(key)
        if model is None:
            model = LoadedModel.load(
                name, str(rec.version), Path(rec.path) / MODEL_FILE, rec.sha256
            )
            model.warm_up()
            self._loaded[key] = model
        return model

    def _publish_route(self, name: str, slots: ModelSlots) -> None:
        if slots.active is None:
            self.host.remove(name)
            return
        production = self._load(name, slots.active)
        candidate = self._load(name, slots.candidate) if slots.candidate else None
        previous = None
        if slots.previous is not None and self.keep_previous_loaded:
            model_file = Path(slots.previous.path) / MODEL_FILE
            loaded = slot_key(slots.previous.sha256, slots.previous.version) in self._loaded
            if loaded or memory_allows(model_file):
                previous = self._load(name, slots.previous)
            else:
                log.warning(
                    "not keeping %s v%s loaded: too little free memory (rollback will "
                    "load it from disk)",
                    name,
                    slots.previous.version,
                )
        self.host.set_route(
            name, Route(production, candidate, Mode(slots.mode), slots.share, previous)
        )
        self._unload_unused()
        if self.on_route_published is not None:
            fallback_ok = (
                slots.previous is not None
                and self.state.rolled_back.get(slots.previous.sha256) is None
            )
            self.on_route_published(name, slots, fallback_ok)

    def _unload_unused(self) -> None:
        used = {
            slot_key(r.sha256, r.version)
            for s in self.state.models.values()
            for r in (s.active, s.candidate, s.previous if self.keep_previous_loaded else None)
            if r is not None
        }
        for name in self.host.names():
            route = self.host.route(name)
            if route is None:
                continue
            for m in (route.production, route.candidate, route.previous):
                if m is not None:
                    used.add(slot_key(m.digest, m.version))
        for key in list(self._loaded):
            if key not in used:
                del self._loaded[key]

    def _describe_switch(self, name: str, old: ModelSlots, new: ModelSlots) -> None:
        def v(r: SlotRecord | None) -> str:
            return f"v{r.version}" if r else "none"

        share = f" {new.share:.0%}" if new.candidate else ""
        msg = (
            f"{name}: active {v(old.active)} -> {v(new.active)}, candidate {v(new.candidate)} "
            f"({new.mode}{share}), previous {v(new.previous)}"
        )
        self.state.add_event(self._now(), "switch", msg)
        log.info(msg)

    def _collect_garbage(self) -> None:
        keep = {
            (name, r.sha256)
            for name, s in self.state.models.items()
            for r in (s.active, s.previous, s.candidate)
            if r is not None
        }
        self.slots.garbage_collect(keep)

    def _save(self) -> None:
        """Persist the state when it changed (the time of the last check alone does not
        count, so an idle device does not rewrite and fsync its flash every poll), and at
        least every :data:`STATE_REFRESH_S` seconds."""
        content = self.state.to_dict()
        content.pop("last_check", None)
        key = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        now = self.clock.monotonic()
        if key == self._persisted_key and now - self._persisted_at < STATE_REFRESH_S:
            return
        save_state(self.state_dir, self.state)
        self._persisted_key = key
        self._persisted_at = now

    def _now(self) -> str:
        return self.clock.now().replace(microsecond=0).isoformat()


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, or None where the kernel does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_allows(model_file: Path, headroom: float = 4.0) -> bool:
    """Whether keeping another copy of this model in memory leaves room to spare.

    ONNX Runtime needs a few times the file size for a session; ``headroom`` times the
    file size plus 256 MiB must stay available. Unknown memory counts as enough.
    """
    available = available_memory_bytes()
    if available is None:
        return True
    try:
        size = model_file.stat().st_size
    except OSError:
        return False
    return available > size * headroom + (256 << 20)


def check_manifest_matches(manifest: PackageManifest, ref: ArtefactRef) -> None:
    """The signed manifest must describe exactly the artefact the director named.

    Raises:
        ArtefactVerificationError: name, version or digest differ.
        CompatibilityError: runtime or opset this device cannot run.
    """
    if (manifest.name, manifest.version, manifest.sha256) != (ref.model, ref.version, ref.sha256):
        raise ArtefactVerificationError(
            f"manifest describes {manifest.name} v{manifest.version} ({manifest.sha256[:12]}), "
            f"director named {ref.model} v{ref.version} ({ref.sha256[:12]})"
        )
    if manifest.runtime not in SUPPORTED_RUNTIMES:
        raise CompatibilityError(f"runtime {manifest.runtime!r} is not supported on this device")
    if manifest.opset > max_supported_opset():
        raise CompatibilityError(
            f"model needs ONNX opset {manifest.opset}; this device supports up to "
            f"{max_supported_opset()}"
        )


def smoke_test(model_path: Path, manifest: PackageManifest) -> None:
    """Load the model, compare its schema with the manifest, replay the smoke vectors.

    Raises:
        InvalidModelError: ONNX Runtime cannot load it.
        RefusedUpdateError: schema differs from the signed manifest.
        SmokeTestError: an output differs from the recorded one.
    """
    from modelfleet.packaging.onnx_model import schema_of_session

    session = load_session(str(model_path))
    schema = schema_of_session(session)
    if schema != manifest.schema:
        raise RefusedUpdateError(
            "the model's input/output schema differs from its signed manifest: "
            + "; ".join(manifest.schema.compatible_with(schema) or ["shapes differ"])
        )
    check_smoke(session, manifest.smoke)


__all__ += ["SlotPlan", "check_manifest_matches", "smoke_test"]

"""The simulator's shell: thousands of :class:`~modelfleet.sim.device.SimDevice` in one
process, on one asyncio loop, talking to a real hub over HTTP/1.1 (h11 on asyncio streams:
:mod:`modelfleet.sim._http`).

Each device, every ``poll_s`` (jittered) of simulated time, does what the agent does: close
its telemetry windows, check in (``POST /api/v1/devices/{id}/report``), refresh the
director unless the check-in answer's ``tuf`` versions say nothing changed (the check-in
fast path), verify (:mod:`modelfleet.sim.verify`), check the desired state's artefacts
against the catalog, apply it, report again at once, and send its buffered telemetry.

Time comes from a :class:`~modelfleet.clock.Clock`. A :class:`~modelfleet.clock.ManualClock`
runs **virtual time**: the fleet advances the clock itself in steps of ``step_s`` and runs
every device due in a step concurrently, as fast as the hub answers (an hour of polling
in seconds, independent of the hub's own clock). Any other clock (``ScaledClock`` from
``MODELFLEET_SIM_CLOCK``, the system clock) is **paced**: devices are run when the clock
reaches their time, so a hub on the same scaled clock sees a fleet living at its rate.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from modelfleet.backoff import jittered_interval
from modelfleet.clock import Clock, ManualClock, ScaledClock
from modelfleet.errors import (
    ArtefactVerificationError,
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    MetadataVerificationError,
    ModelfleetError,
    NotFoundError,
    TransportError,
    TrustError,
    UnauthenticatedError,
)
from modelfleet.rollout.desired_state import DesiredState
from modelfleet.sim._http import H11Pool, Response
from modelfleet.sim.device import SimDevice, Tally
from modelfleet.sim.director import DirectorLayout, DirectorLayouts, desired_state_url
from modelfleet.sim.faults import Fault, device_effects
from modelfleet.sim.traffic import Traffic
from modelfleet.sim.verify import (
    MetadataCache,
    RootChain,
    TrustedRepo,
    check_artefacts,
    check_target,
)
from modelfleet.trust.bundle import parse_trust_root_bundle
from modelfleet.trust.freshness import HeldVersions, stale_repositories

__all__ = ["FleetSimulator", "Progress", "SimConfig"]

log = logging.getLogger("modelfleet.sim")


@dataclass(frozen=True)
class SimConfig:
    """A simulated fleet.

    Attributes:
        hub_url: the hub's base URL.
        token: an operator (or admin) token: enrols the devices.
        devices: how many (1 to 100,000).
        prefix: device ids are ``{prefix}-{i:05d}``.
        site: site name; with ``sites`` > 1 the devices are spread over ``{site}-{k}``.
        tags: tags of every device.
        poll_s: simulated seconds between check-ins (jittered ±20 %).
        window_s: telemetry window length (simulated seconds).
        faults: the faults switched on.
        traffic: what healthy traffic looks like.
        concurrency: requests in flight at once (HTTP connections).
        seed: random seed (jitter, traffic).
        download: download each version's model bytes once (fleet-wide) and verify them.
        batch_records: most telemetry records per batch.
        step_s: virtual time step (ManualClock only).
        timeout_s: seconds per HTTP request.
        trust_root: the trust-root bundle bytes to pin (None: ``GET /api/v1/trust-root``).
    """

    hub_url: str
    token: str
    devices: int = 100
    prefix: str = "sim"
    site: str = "sim"
    sites: int = 1
    tags: tuple[str, ...] = ()
    poll_s: float = 60.0
    window_s: float = 60.0
    faults: tuple[Fault, ...] = ()
    traffic: Traffic = field(default_factory=Traffic)
    concurrency: int = 32
    seed: int = 0
    download: bool = False
    batch_records: int = 1000
    step_s: float = 5.0
    timeout_s: float = 60.0
    trust_root: bytes | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= 100_000:
            raise InvalidInputError("devices must be between 1 and 100,000")
        if not 1 <= self.sites <= self.devices:
            raise InvalidInputError("sites must be between 1 and the number of devices")
        if not (1.0 <= self.poll_s <= 86_400.0 and 1.0 <= self.window_s <= 3_600.0):
            raise InvalidInputError("poll_s must be in [1, 86400] and window_s in [1, 3600]")
        if not 1 <= self.concurrency <= 1024:
            raise InvalidInputError("concurrency must be between 1 and 1024")
        if not 1 <= self.batch_records <= 5000:
            raise InvalidInputError("batch_records must be between 1 and 5000")
        if not 0.01 <= self.step_s <= 3600.0:
            raise InvalidInputError("step_s must be within [0.01, 3600]")

    def site_of(self, i: int) -> str:
        return self.site if self.sites == 1 else f"{self.site}-{i % self.sites}"


@dataclass(frozen=True)
class Progress:
    """A progress sample for the CLI's line."""

    sim_s: float
    wall_s: float
    checkins: int
    errors: int
    serving: Mapping[str, Mapping[str, int]]


class _Fleetwide:
    """State shared by every device: verification cache, roots, the director layout,
    versions already downloaded."""

    def __init__(self, bundle: bytes) -> None:
        roots = parse_trust_root_bundle(bundle)
        self.director = RootChain("director", roots["director"])
        self.catalog = RootChain("catalog", roots["catalog"])
        self.cache = MetadataCache()
        self.layouts = DirectorLayouts()
        self.downloaded: set[str] = set()


class FleetSimulator:
    """A simulated fleet against a real hub; a synchronous facade over its own event loop.

    Use: ``sim.enrol()`` once, then ``sim.run_for(seconds)`` as often as wanted (the
    caller may change the hub between runs: deploy, roll back), ``sim.summary()``,
    ``sim.close()``.

    Args:
        config: the fleet.
        clock: the simulated time (see the module docstring); default the system clock.
        progress: called about once a second of real time while running.
    """

    def __init__(
        self,
        config: SimConfig,
        clock: Clock | None = None,
        *,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        from modelfleet.clock import SystemClock

        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._virtual = isinstance(self.clock, ManualClock)
        self._rate = self.clock.rate if isinstance(self.clock, ScaledClock) else 1.0
        self._progress = progress
        self._runner = asyncio.Runner()
        self._http: H11Pool | None = None
        self._rng = random.Random(config.seed)
        self.devices: list[SimDevice] = []
        self._shared: _Fleetwide | None = None
        self._heap: list[tuple[float, int]] = []
        self._start_mono = self.clock.monotonic()
        self._wall = 0.0
        self._cpu = 0.0
        self._last_errors: list[str] = []
        self._error_kinds: dict[str, int] = {}
        self._requests: dict[str, int] = {}
        self._lag_max = 0.0

    # -- the facade ------------------------------------------------------------------------

    def enrol(self) -> None:
        """Fetch the trust root and enrol every device (``POST /api/v1/devices``).

        Raises:
            ConflictError: a device id exists and the token may not mint device tokens.
            UnauthenticatedError, ForbiddenError: the token may not enrol devices.
            TransportError: the hub cannot be reached.
        """
        self._runner.run(self._enrol())

    def run_for(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Run the fleet for ``seconds`` of simulated time (or until ``until()`` is true,
        checked after every step)."""
        if not self.devices:
            raise InvalidInputError("enrol the fleet before running it")
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            self._runner.run(self._run(seconds, until))
        finally:
            self._wall += time.perf_counter() - t0
            self._cpu += time.process_time() - c0

    def close(self) -> None:
        if self._http is not None:
            self._runner.run(self._http.aclose())
            self._http = None
        self._runner.close()

    def __enter__(self) -> FleetSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def elapsed_s(self) -> float:
        """Simulated seconds since the simulator was made."""
        return self.clock.monotonic() - self._start_mono

    def serving(self) -> dict[str, dict[str, int]]:
        """``{model: {"v3": n, "v3+v4": n (candidate)}}`` over the fleet now."""
        out: dict[str, dict[str, int]] = {}
        for d in self.devices:
            for model, (prod, cand) in d.serving().items():
                key = f"v{prod}" + (f"+v{cand}" if cand is not None else "")
                per = out.setdefault(model, {})
                per[key] = per.get(key, 0) + 1
        return {m: dict(sorted(v.items())) for m, v in sorted(out.items())}

    def summary(self) -> dict[str, Any]:
        """Counts over the whole run (JSON-able): devices per version, check-ins, bytes per
        device, telemetry, rollbacks, errors, and the simulator's own CPU time."""
        t = Tally()
        for d in self.devices:
            for name in vars(t):
                setattr(t, name, getattr(t, name) + getattr(d.tally, name))
        n = max(1, len(self.devices))
        wall = max(self._wall, 1e-9)
        shared = self._shared
        return {
            "devices": len(self.devices),
            "sim_seconds": round(self.elapsed_s, 1),
            "wall_seconds": round(self._wall, 2),
            "sim_cpu_seconds": round(self._cpu, 2),
            "clock": "virtual" if self._virtual else f"paced x{self._rate:g}",
            "director_layout": shared.layouts.layout.value if shared else "unknown",
            "serving": self.serving(),
            "checkins": t.checkins,
            "checkins_per_s": round(t.checkins / wall, 1),
            "requests": dict(sorted(self._requests.items())),
            "requests_per_s": round(t.requests / wall, 1),
            "refreshes": t.refreshes,
            "refreshes_skipped": t.refreshes_skipped,
            "applied": t.applied,
            "bytes_received": t.bytes_received,
            "bytes_sent": t.bytes_sent,
            "bytes_received_per_device": round(t.bytes_received / n),
            "bytes_sent_per_device": round(t.bytes_sent / n),
            "telemetry": {
                "windows": t.windows,
                "events": t.events,
                "batches": t.batches,
                "acked": t.records_acked,
                "buffered": sum(len(d.buffer) for d in self.devices),
                "evicted": t.evicted,
            },
            "guard_rollbacks": t.guard_rollbacks,
            "rollbacks_acknowledged": t.rollbacks_acked,
            "rollbacks_unacknowledged": sum(len(d.rollbacks) for d in self.devices),
            "refusals": t.refusals,
            "crashes": t.crashes,
            "offline_ticks": t.offline_ticks,
            "errors": t.errors,
            "error_kinds": dict(sorted(self._error_kinds.items())),
            "last_errors": list(self._last_errors),
            "max_lag_s": round(self._lag_max, 2),
            "verify_cache": {"hits": shared.cache.hits, "misses": shared.cache.misses}
            if shared
            else {},
            "faults": [f.spec for f in self.config.faults],
        }

    # -- enrolment -------------------------------------------------------------------------

    def _client(self) -> H11Pool:
        if self._http is None:
            self._http = H11Pool(
                self.config.hub_url, self.config.concurrency, self.config.timeout_s
            )
        return self._http

    async def _enrol(self) -> None:
        cfg = self.config
        operator = {"Authorization": f"Bearer {cfg.token}"}
        bundle = cfg.trust_root
        if bundle is None:
            r = await self._send(None, "GET", "/api/v1/trust-root", headers=operator)
            _raise_for(r, "GET /api/v1/trust-root")
            bundle = r.content
        shared = self._shared = _Fleetwide(bundle)
        sem = asyncio.Semaphore(cfg.concurrency)

        async def one(i: int) -> SimDevice:
            device_id, site = f"{cfg.prefix}-{i:05d}", cfg.site_of(i)
            async with sem:
                token = await self._enrol_one(device_id, site, operator)
            return SimDevice(
                device_id=device_id,
                site=site,
                tags=cfg.tags,
                token=token,
                effects=device_effects(cfg.faults, device_id, site),
                director=TrustedRepo.pinned(shared.director),
                catalog=TrustedRepo.pinned(shared.catalog),
            )

        self.devices = list(await asyncio.gather(*(one(i) for i in range(cfg.devices))))
        now = self.clock.monotonic()
        self._heap = [(now + self._rng.random() * cfg.poll_s, i) for i in range(cfg.devices)]
        heapq.heapify(self._heap)

    async def _enrol_one(self, device_id: str, site: str, operator: dict[str, str]) -> str:
        body = {"id": device_id, "site": site, "tags": list(self.config.tags)}
        r = await self._send(None, "POST", "/api/v1/devices", json=body, headers=operator)
        if r.status == 409:
            # Enrolled by an earlier run: its token was shown only then; mint a new one.
            minted = {"role": "device", "subject": device_id}
            r = await self._send(None, "POST", "/api/v1/tokens", json=minted, headers=operator)
            if r.status == 403:
                raise ConflictError(
                    f"device {device_id!r} is already enrolled and this token may not mint "
                    "device tokens: use another --prefix, or an admin token"
                )
        _raise_for(r, f"enrolling {device_id}")
        token = orjson.loads(r.content).get("token")
        if not isinstance(token, str):
            raise TransportError(f"the hub answered enrolling {device_id} without a token")
        return token

    # -- the schedule ----------------------------------------------------------------------

    async def _run(self, seconds: float, until: Callable[[], bool] | None) -> None:
        cfg = self.config
        end = self.clock.monotonic() + seconds
        queue: asyncio.Queue[int] = asyncio.Queue()
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(cfg.concurrency)]
        last_progress = time.perf_counter()
        wall0 = time.perf_counter()
        checked = 0.0
        try:
            while self.clock.monotonic() < end if not self._virtual else self._heap:
                if not self._heap:  # paced: every device is in flight
                    await asyncio.sleep(0.01)
                    continue
                t = self._heap[0][0]
                if t >= end:
                    if self._virtual:
                        break
                    await asyncio.sleep(min(0.5, (end - self.clock.monotonic()) / self._rate))
                    continue
                if self._virtual:
                    assert isinstance(self.clock, ManualClock)
                    step_end = min(end, t + cfg.step_s)
                    ahead = step_end - self.clock.monotonic()
                    if ahead > 0:
                        self.clock.advance(ahead)
                else:
                    wait = (t - self.clock.monotonic()) / self._rate
                    if wait > 0:
                        await asyncio.sleep(min(wait, 0.5))
                        continue
                now = self.clock.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due, i = heapq.heappop(self._heap)
                    self._lag_max = max(self._lag_max, (now - due) / self._rate)
                    queue.put_nowait(i)
                if self._virtual:
                    await queue.join()  # the step ends when its devices are done
                else:
                    await asyncio.sleep(0)
                if self._progress is not None and time.perf_counter() - last_progress >= 1.0:
                    last_progress = time.perf_counter()
                    self._progress(self._sample(time.perf_counter() - wall0))
                # ``until`` may ask the hub: at most every 0.2 real seconds when paced
                if until is not None and (self._virtual or time.perf_counter() - checked > 0.2):
                    checked = time.perf_counter()
                    if until():
                        break
            await queue.join()
            if self._virtual and not (until is not None and until()):
                ahead = end - self.clock.monotonic()
                if ahead > 0:
                    assert isinstance(self.clock, ManualClock)
                    self.clock.advance(ahead)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if self._progress is not None:
            self._progress(self._sample(time.perf_counter() - wall0))

    def _sample(self, wall: float) -> Progress:
        return Progress(
            self.elapsed_s,
            wall,
            sum(d.tally.checkins for d in self.devices),
            sum(d.tally.errors for d in self.devices),
            self.serving(),
        )

    async def _worker(self, queue: asyncio.Queue[int]) -> None:
        while True:
            i = await queue.get()
            try:
                await self._tick(self.devices[i])
            except Exception as e:  # one device's failure must not stop the fleet
                log.exception("simulated device %s failed", self.devices[i].device_id)
                self._note_error(self.devices[i], e)
            finally:
                delay = jittered_interval(self.config.poll_s, self._rng.random)
                heapq.heappush(self._heap, (self.clock.monotonic() + delay, i))
                queue.task_done()

    # -- one device's tick -----------------------------------------------------------------

    def _device_now(self, d: SimDevice) -> datetime:
        now = self.clock.now()
        skew = d.effects.skew_s
        return now + timedelta(seconds=skew) if skew else now

    async def _tick(self, d: SimDevice) -> None:
        cfg = self.config
        now = self._device_now(d)
        d.close_windows(now, cfg.window_s, cfg.traffic, cfg.faults, self._rng)
        if d.effects.offline_at(self.elapsed_s):
            d.tally.offline_ticks += 1
            return
        try:
            answer = await self._check_in(d, now)
            if self._needs_refresh(d, answer, now):
                await self._update(d, answer, now)
            else:
                d.tally.refreshes_skipped += 1
            await self._send_telemetry(d)
        except ModelfleetError as e:
            self._note_error(d, e)

    async def _check_in(self, d: SimDevice, now: datetime) -> dict[str, Any]:
        body = orjson.dumps(d.report(now))
        r = await self._send(d, "POST", f"/api/v1/devices/{d.device_id}/report", content=body,
                             kind="report")  # fmt: skip
        _raise_for(r, "check-in")
        d.tally.checkins += 1
        answer = _json_object(r)
        applied = answer.get("applied_rollbacks")
        if isinstance(applied, list) and applied:
            d.acknowledge(str(i) for i in applied)
        return answer

    @staticmethod
    def _stale(repo: TrustedRepo, answer: Mapping[str, Any], now: datetime) -> bool:
        """The check-in fast path, by the agent's rule (:mod:`modelfleet.trust.freshness`):
        refresh unless the hub's answer names the root and timestamp held and the held
        timestamp is not close to expiry."""
        name = repo.chain.repo
        ts = repo.timestamp
        held = None if ts is None else HeldVersions(repo.root_version, ts.version, ts.expires)
        return name in stale_repositories({name: held}, answer.get("tuf"), now)

    def _needs_refresh(self, d: SimDevice, answer: Mapping[str, Any], now: datetime) -> bool:
        return self._stale(d.director, answer, now)

    async def _update(self, d: SimDevice, answer: Mapping[str, Any], now: datetime) -> None:
        d.tally.refreshes += 1
        desired, raw_sha = await self._fetch_desired(d, answer, now)
        if desired is None or (raw_sha == d.desired_sha256 and not d.needs_work(desired)):
            return
        reason = d.screen(desired)
        if reason:
            d.last_error = reason
            return
        d.desired_sha256 = raw_sha
        if not d.needs_work(desired):
            return
        try:
            if self._stale(d.catalog, answer, now):
                await self._refresh_repo(d, d.catalog, "/tuf/catalog/metadata/", answer,
                                         "catalog", now)  # fmt: skip
            refs = check_artefacts(desired, d.catalog)
            if self.config.download:
                await self._download(d, refs)
        except TrustError as e:
            d.refuse(desired, str(e), "trust", now)
            self._note_error(d, e)
        else:
            d.apply(desired, now)
            d.last_error = ""
        await self._check_in(d, now)  # the agent reports at once after an apply

    async def _fetch_desired(
        self, d: SimDevice, answer: Mapping[str, Any], now: datetime
    ) -> tuple[DesiredState | None, str]:
        shared = self._shared
        assert shared is not None
        mono = self.clock.monotonic()
        layout: DirectorLayout | None = shared.layouts.first(mono)
        while layout is not None:
            if d.director_layout != layout.value:
                # Another layout is another repository: its versions start over.
                d.director = TrustedRepo(shared.director, d.director.root_version)
                d.director_layout = layout.value
            base = shared.layouts.base(layout, d.device_id)
            try:
                await self._refresh_repo(d, d.director, base, answer, "director", now)
            except NotFoundError:
                layout = shared.layouts.on_not_found(layout)
                continue
            shared.layouts.on_found(layout, mono)
            break
        else:
            return None, ""
        info = d.director.target(f"devices/{d.device_id}/desired-state.json")
        if info is None:
            return None, ""
        sha = info.hashes.get("sha256", "")
        if sha == d.desired_sha256 and d.desired is not None:
            return d.desired, sha
        r = await self._send(d, "GET", desired_state_url(d.device_id, sha), kind="desired-state")
        _raise_for(r, "desired state")
        check_target(info, r.content)
        try:
            return DesiredState.from_json(r.content), sha
        except InvalidInputError as e:
            raise ArtefactVerificationError(f"desired state: {e}") from e

    async def _refresh_repo(
        self,
        d: SimDevice,
        repo: TrustedRepo,
        base: str,
        answer: Mapping[str, Any],
        name: str,
        now: datetime,
    ) -> None:
        """The TUF refresh of one repository (root probe unless the check-in named the
        root held, timestamp, then snapshot and targets only when they changed)."""
        cache = self._cache()
        tuf = answer.get("tuf")
        told = tuf.get(name) if isinstance(tuf, Mapping) else None
        kind = f"tuf-{name}"
        if not (isinstance(told, Mapping) and told.get("root") == repo.root_version):
            while True:
                r = await self._send(d, "GET", f"{base}{repo.root_version + 1}.root.json",
                                     kind=kind)  # fmt: skip
                if r.status == 404:
                    break
                _raise_for(r, f"{name} root")
                repo.update_root(r.content)
        r = await self._send(d, "GET", f"{base}timestamp.json", kind=kind)
        _raise_for(r, f"{name} timestamp")
        repo.update_timestamp(cache, r.content, now)
        try:
            if repo.needs_snapshot():
                r = await self._send(d, "GET", f"{base}{repo.snapshot_name()}", kind=kind)
                _raise_for(r, f"{name} snapshot")
                repo.update_snapshot(cache, r.content, now)
            if repo.needs_targets():
                version = repo.targets_meta().version
                r = await self._send(d, "GET", f"{base}{version}.targets.json", kind=kind)
                _raise_for(r, f"{name} targets")
                repo.update_targets(cache, r.content, now)
        except NotFoundError as e:  # only a missing timestamp says "no such repository"
            raise TransportError(str(e)) from e
        repo.check_current(now)

    async def _download(self, d: SimDevice, refs: list[Any]) -> None:
        shared = self._shared
        assert shared is not None
        from modelfleet.sim.verify import sha256_hex

        for ref in refs:
            if ref.sha256 in shared.downloaded:
                continue
            path = f"/tuf/catalog/targets/models/{ref.model}/{ref.version}/{ref.sha256}.model.onnx"
            r = await self._send(d, "GET", path, kind="artefact")
            _raise_for(r, f"artefact {ref.model} v{ref.version}")
            if len(r.content) != ref.length or sha256_hex(r.content) != ref.sha256:
                raise ArtefactVerificationError(
                    f"artefact {ref.model_path}: the bytes do not match the signed hash"
                )
            shared.downloaded.add(ref.sha256)

    async def _send_telemetry(self, d: SimDevice) -> None:
        cfg = self.config
        if not d.telemetry_due():
            return
        late = bool(d.effects.late)
        for i in range(3):  # a few batches a tick; a long backlog drains over ticks
            batch, taken = d.batch(self._device_now(d), cfg.batch_records, cfg.traffic,
                                   newer_first=late and i == 0)  # fmt: skip
            if not batch:
                return
            path = f"/api/v1/devices/{d.device_id}/telemetry"
            r = await self._send(d, "POST", path, content=orjson.dumps(batch), kind="telemetry")
            _raise_for(r, "telemetry")
            d.acked(taken)

    # -- HTTP ------------------------------------------------------------------------------

    def _cache(self) -> MetadataCache:
        assert self._shared is not None
        return self._shared.cache

    async def _send(
        self,
        d: SimDevice | None,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        kind: str = "enrol",
    ) -> Response:
        hdrs = dict(headers or {})
        if d is not None:
            hdrs["Authorization"] = f"Bearer {d.token}"
        if json is not None:
            content = orjson.dumps(json)
        if content is not None:
            hdrs["Content-Type"] = "application/json"
        r = await self._client().request(method, path, content, hdrs)
        self._requests[kind] = self._requests.get(kind, 0) + 1
        if d is not None:
            d.tally.requests += 1
            d.tally.bytes_received += len(r.content)
            d.tally.bytes_sent += len(content or b"")
        return r

    def _note_error(self, d: SimDevice, e: BaseException) -> None:
        d.tally.errors += 1
        kind = type(e).__name__
        self._error_kinds[kind] = self._error_kinds.get(kind, 0) + 1
        self._last_errors = [*self._last_errors[-4:], f"{d.device_id}: {e}"]
        if isinstance(e, MetadataVerificationError | ArtefactVerificationError):
            d.last_error = str(e)


def _json_object(r: Response) -> dict[str, Any]:
    try:
        data = orjson.loads(r.content) if r.content else {}
    except orjson.JSONDecodeError as e:
        raise TransportError(f"{r.path}: the hub answered with invalid JSON") from e
    return data if isinstance(data, dict) else {}


def _raise_for(r: Response, what: str) -> None:
    if r.is_success:
        return
    detail = r.text[:200]
    msg = f"{what}: {r.method} {r.path} answered HTTP {r.status}"
    if r.status == 401:
        raise UnauthenticatedError(f"{msg}: the hub does not accept the token")
    if r.status == 403:
        raise ForbiddenError(f"{msg}: the token may not do this")
    if r.status == 404:
        raise NotFoundError(msg)
    if r.status == 409:
        raise ConflictError(f"{msg}: {detail}")
    if r.status in (400, 413, 422):
        raise InvalidInputError(f"{msg}: {detail}")
    raise TransportError(msg)

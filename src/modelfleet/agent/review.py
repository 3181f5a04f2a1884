"""The review sampler on the device: a bounded sample of suspect windows' requests (issue 9).

Labels arrive late, if ever; a human can label a few rows a day. The sampler keeps, per
``(model, version, role)`` and telemetry window, a bounded reservoir of answered rows — the
inputs, every output, the anomaly score and the request id — and at the window's close asks
whether the window is *suspect* (:func:`suspect_reasons`):

* ``anomaly``: the share of scored rows whose anomaly score is above the scorer's threshold
  (:mod:`modelfleet.agent.anomaly`) is at least ``anomaly_share``;
* ``disagreement``: a shadow candidate of the model disagreed with production on at least
  ``disagreement_share`` of at least ``min_compared`` comparisons in the window;
* ``drift``: the window's own profile counts (its ``"profile"`` field) against the
  version's reference profile give :data:`~modelfleet.monitoring.drift.Verdict.DRIFT`
  (:func:`modelfleet.monitoring.drift.evaluate`; SciPy is needed for the p-values: without
  it the drift signal is skipped, logged once).

A suspect window's samples become telemetry records of kind ``"review_sample"``
(``docs/telemetry-format.md``), appended to the device's write-ahead buffer with the window
itself and forwarded like any record, exactly once at the hub. A non-suspect window's
reservoir is dropped. The records of one UTC day stay under ``budget_bytes`` (their encoded
sizes plus the buffer's per-row overhead); a sample past the budget is dropped and counted.
**Nothing is sampled unless configured**: the agent builds a sampler only for
``agent run --review-budget BYTES`` above 0.

Which rows the reservoir keeps: one candidate row per request (the most anomalous one when
scores exist, else a random one), kept by weighted reservoir sampling (Efraimidis–Spirakis
A-Res, key ``u ** (1 / w)``): a row above the anomaly threshold weighs ``anomaly_weight``
(10) times a normal one, so the anomalous rows are the ones a reviewer sees first while
normal rows still come along for contrast. Cost on the request path: one heap operation per
request, and a copy of one row when it enters the reservoir.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from modelfleet._atomic import atomic_write_bytes
from modelfleet.agent.anomaly import AnomalyScorer
from modelfleet.catalog.dtypes import datatype_of
from modelfleet.clock import Clock
from modelfleet.errors import ConfigError, InvalidInputError, StorageError
from modelfleet.packaging.reference import PackageProfile
from modelfleet.telemetry.buffer import ROW_OVERHEAD

__all__ = [
    "REASONS",
    "RECORD_KIND",
    "ReviewSampler",
    "ReviewSettings",
    "encode_tensor",
    "suspect_reasons",
]

log = logging.getLogger("modelfleet.agent.review")

#: The telemetry record kind of one sample.
RECORD_KIND: Final = "review_sample"
#: Why a window is suspect, in the order they are checked.
REASONS: Final = ("anomaly", "disagreement", "drift")
#: The budget file in the agent's state folder (bytes spent today survive a restart).
BUDGET_FILE: Final = "review-budget.json"

Tensors = Mapping[str, npt.NDArray[Any]]
Key = tuple[str, str, str]
ProfileOf = Callable[[str, str], "PackageProfile | None"]


@dataclass(frozen=True)
class ReviewSettings:
    """What the sampler keeps and when it sends.

    Attributes:
        budget_bytes: most bytes of review samples per UTC day (0: off; at most 1 GiB).
        reservoir: samples kept per (model, version, role) and window (1 … 1000).
        anomaly_share: a window is suspect when at least this share of its scored rows is
            above the anomaly threshold (0 < share ≤ 1).
        min_scored: rows a window must have scored before the anomaly share counts.
        anomaly_weight: how much likelier an anomalous row is to be kept (≥ 1).
        disagreement_share: a window is suspect when a shadow candidate disagreed on at
            least this share of its comparisons (0 < share ≤ 1) …
        min_compared: … and made at least this many.
        drift: check each window's profile counts for drift on the device.
        max_sample_bytes: a single sample larger than this (a huge input) is dropped.
    """

    budget_bytes: int = 0
    reservoir: int = 8
    anomaly_share: float = 0.05
    min_scored: int = 20
    anomaly_weight: float = 10.0
    disagreement_share: float = 0.1
    min_compared: int = 20
    drift: bool = True
    max_sample_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if not 0 <= self.budget_bytes <= 1 << 30:
            raise ConfigError("the review budget must be between 0 and 1 GiB a day")
        if not 1 <= self.reservoir <= 1000:
            raise ConfigError("the review reservoir must hold 1 to 1000 samples")
        for name in ("anomaly_share", "disagreement_share"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in (0, 1]")
        if self.min_scored < 1 or self.min_compared < 1:
            raise ConfigError("min_scored and min_compared must be at least 1")
        if not (math.isfinite(self.anomaly_weight) and self.anomaly_weight >= 1):
            raise ConfigError("anomaly_weight must be at least 1")
        if not 256 <= self.max_sample_bytes <= 16 << 20:
            raise ConfigError("max_sample_bytes must be between 256 B and 16 MiB")

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0


def encode_tensor(array: npt.NDArray[Any]) -> dict[str, Any]:
    """``{"datatype", "shape", "data"}`` (OIP v2 JSON tensor, data flattened row-major)."""
    if array.dtype.kind in ("U", "S", "O"):
        data: list[Any] = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in array.ravel().tolist()
        ]
    else:
        data = array.ravel().tolist()
    return {"datatype": datatype_of(array), "shape": list(array.shape), "data": data}


def suspect_reasons(
    settings: ReviewSettings,
    *,
    scored: int,
    anomalous: int,
    compared: int,
    disagreed: int,
    drift: bool,
) -> list[str]:
    """Why a window is suspect (empty: it is not). Pure.

    Args:
        settings: the thresholds.
        scored: rows of the window the anomaly scorer scored.
        anomalous: of those, rows above the scorer's threshold.
        compared: shadow comparisons of the model in the window.
        disagreed: of those, comparisons where the candidate disagreed.
        drift: the window's profile counts drift from the reference.
    """
    out: list[str] = []
    if scored >= settings.min_scored and anomalous >= settings.anomaly_share * scored:
        out.append("anomaly")
    if compared >= settings.min_compared and disagreed >= settings.disagreement_share * compared:
        out.append("disagreement")
    if drift:
        out.append("drift")
    return out


@dataclass(slots=True)
class _Row:
    request_id: str | None
    row: int
    score: float | None
    inputs: dict[str, npt.NDArray[Any]]
    outputs: dict[str, npt.NDArray[Any]]


class _Reservoir:
    """Weighted reservoir (A-Res) of at most ``size`` rows: a min-heap of (key, n, row)."""

    __slots__ = ("anomalous", "heap", "n", "scored", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.heap: list[tuple[float, int, _Row]] = []
        self.n = 0
        self.scored = 0
        self.anomalous = 0

    def wants(self, key: float) -> bool:
        return len(self.heap) < self.size or key > self.heap[0][0]

    def push(self, key: float, row: _Row) -> None:
        self.n += 1
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, (key, self.n, row))
        else:
            heapq.heapreplace(self.heap, (key, self.n, row))


def _row_of(tensors: Tensors, i: int, rows: int) -> dict[str, npt.NDArray[Any]]:
    """Row ``i`` of every tensor whose first dimension is the batch (a copy: the request's
    arrays may be large, only one row is kept)."""
    out = {}
    for name, t in tensors.items():
        if t.ndim and t.shape[0] == rows:
            out[name] = np.array(t[i : i + 1])
        else:
            out[name] = np.array(t)
    return out


class _Budget:
    """Bytes spent per UTC day, persisted (atomically) when ``path`` is given."""

    def __init__(self, limit: int, path: Path | None) -> None:
        self.limit = limit
        self.path = path
        self.day = ""
        self.spent = 0
        if path is not None:
            try:
                doc = orjson.loads(path.read_bytes())
                self.day, self.spent = str(doc["day"]), int(doc["spent"])
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                pass

    def take(self, day: str, size: int) -> bool:
        if day != self.day:
            self.day, self.spent = day, 0
        if self.spent + size > self.limit:
            return False
        self.spent += size
        return True

    def save(self) -> None:
        if self.path is None:
            return
        try:
            atomic_write_bytes(self.path, orjson.dumps({"day": self.day, "spent": self.spent}))
        except StorageError as e:  # the budget then restarts at 0 after a restart: logged
            log.warning("review budget not saved: %s", e)


class ReviewSampler:
    """Samples answered rows per window; :meth:`after_close` emits the suspect ones.

    A batch observer (:meth:`watches`, :meth:`on_batch`: the event loop), a request observer
    for shadow comparisons (:meth:`on_comparison`), and the telemetry closer's follower
    (:meth:`after_close`, the closer thread). One lock guards the tables.

    Args:
        device_id: this device (every record names it).
        settings: budget and thresholds (``settings.enabled`` must be true).
        clock: device time (the budget's day).
        anomaly: the anomaly scorer whose per-row scores route the sampling, if any.
        profile_of: the reference profile of a (model, version) (drift signal), if any.
        budget_file: where the bytes spent today are kept across restarts (None: memory).
        rng: uniform [0, 1) source (tests inject one).
        sample_id: a new sample id (tests inject one; default a random UUID).

    Raises:
        ConfigError: the settings turn sampling off (budget 0).
    """

    #: The fan-out computes no top-class confidence for this observer.
    wants_confidence = False

    def __init__(
        self,
        device_id: str,
        settings: ReviewSettings,
        clock: Clock,
        *,
        anomaly: AnomalyScorer | None = None,
        profile_of: ProfileOf | None = None,
        budget_file: Path | None = None,
        rng: Callable[[], float] | None = None,
        sample_id: Callable[[], str] | None = None,
    ) -> None:
        if not settings.enabled:
            raise ConfigError("review sampling is off (budget 0): build no sampler")
        self.device_id = device_id
        self.settings = settings
        self.clock = clock
        self.anomaly = anomaly
        self._profile_of = profile_of
        self._rng = rng or random.Random().random
        self._sample_id = sample_id or (lambda: uuid.uuid4().hex)
        self._budget = _Budget(settings.budget_bytes, budget_file)
        self._lock = threading.Lock()
        self._table: dict[Key, _Reservoir] = {}
        self._shadow: dict[str, list[int]] = {}  # model -> [compared, disagreed]
        self._drift_warned = False
        #: Samples emitted, and dropped over the day's budget or for their size.
        self.emitted_total = 0
        self.over_budget_total = 0
        self.too_large_total = 0

    # -- the request path (event loop) ------------------------------------------------------

    def watches(self, model: str, version: str) -> bool:
        """Every served version is sampled (the outputs are kept with the inputs)."""
        return True

    def on_batch(
        self,
        model: str,
        version: str,
        role: str,
        inputs: Tensors,
        outputs: Tensors,
        request_id: str | None = None,
    ) -> None:
        """One answered request: its candidate row may enter the window's reservoir."""
        if role == "shadow":
            return
        first = next(iter(inputs.values()), None)
        rows = int(first.shape[0]) if first is not None and first.ndim else 1
        if rows < 1:
            return
        scores = None
        threshold = 0.0
        if self.anomaly is not None:
            scores = self.anomaly.score(model, version, role, inputs)
            threshold = self.anomaly.threshold(model, version)
        key = (model, version, role)
        with self._lock:
            res = self._table.get(key)
            if res is None:
                res = self._table[key] = _Reservoir(self.settings.reservoir)
            weight = 1.0
            score: float | None = None
            if scores is not None and len(scores) == rows:
                i = int(np.argmax(scores))
                score = float(scores[i])
                above = int(np.count_nonzero(scores > threshold))
                res.scored += rows
                res.anomalous += above
                if score > threshold:
                    weight = self.settings.anomaly_weight
            else:
                i = min(int(self._rng() * rows), rows - 1)
            u = self._rng()
            k = u ** (1.0 / weight) if u > 0 else 0.0
            if not res.wants(k):
                res.n += 1
                return
            res.push(
                k,
                _Row(request_id, i, score, _row_of(inputs, i, rows), _row_of(outputs, i, rows)),
            )

    def on_request(self, *args: Any) -> None:
        """Requests are told through :meth:`on_batch`; nothing to do here."""

    def on_comparison(self, model: str, candidate_version: str, comparison: Any) -> None:
        """Count one shadow comparison of ``model`` (its disagreement share routes)."""
        disagreed = bool(getattr(comparison, "disagreed", comparison))
        with self._lock:
            counts = self._shadow.setdefault(model, [0, 0])
            counts[0] += 1
            counts[1] += disagreed

    # -- the closer -------------------------------------------------------------------------

    def after_close(self, windows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The review samples of the windows just closed that are suspect (no ``seq`` yet).

        Args:
            windows: the closed window records (their ``"profile"`` field, when present,
                is the drift signal).

        Returns:
            ``review_sample`` records, within today's budget.
        """
        with self._lock:
            table, self._table = self._table, {}
            shadow, self._shadow = self._shadow, {}
        by_key = {
            (str(w.get("model")), str(w.get("version")), str(w.get("role"))): w
            for w in windows
            if w.get("kind") == "window"
        }
        day = self.clock.now().date().isoformat()
        out: list[dict[str, Any]] = []
        for key, res in sorted(table.items(), key=lambda kv: kv[0]):
            model, version, role = key
            window = by_key.get(key, {})
            compared, disagreed = shadow.get(model, (0, 0)) if role == "production" else (0, 0)
            reasons = suspect_reasons(
                self.settings,
                scored=res.scored,
                anomalous=res.anomalous,
                compared=compared,
                disagreed=disagreed,
                drift=self._drifts(model, version, window),
            )
            if not reasons:
                continue
            for _, _, row in sorted(res.heap, key=lambda t: (-t[0], t[1])):
                record = self._record(key, window, row, reasons)
                size = len(orjson.dumps(record)) + ROW_OVERHEAD
                if size > self.settings.max_sample_bytes:
                    self.too_large_total += 1
                elif self._budget.take(day, size):
                    out.append(record)
                else:
                    self.over_budget_total += 1
        if out:
            self.emitted_total += len(out)
            self._budget.save()
        return out

    def _drifts(self, model: str, version: str, window: Mapping[str, Any]) -> bool:
        if not self.settings.drift or self._profile_of is None or "profile" not in window:
            return False
        profile = self._profile_of(model, version)
        if profile is None:
            return False
        from modelfleet.monitoring.drift import Verdict, evaluate
        from modelfleet.monitoring.profile_counts import ProfileWindow

        try:
            counts = ProfileWindow.from_wire(window["profile"], profile.profile, profile.digest)
            return evaluate(profile.profile, counts).verdict is Verdict.DRIFT
        except ModuleNotFoundError as e:  # SciPy: an agent-only install has none
            if not self._drift_warned:
                log.warning("review sampling: no drift signal on this device (%s)", e)
                self._drift_warned = True
        except InvalidInputError as e:
            log.warning("review sampling: %s v%s window not evaluated: %s", model, version, e)
        return False

    def _record(
        self, key: Key, window: Mapping[str, Any], row: _Row, reasons: list[str]
    ) -> dict[str, Any]:
        model, version, role = key
        closed = window.get("closed_at")
        at = closed if isinstance(closed, str) else self.clock.now().isoformat()
        return {
            "kind": RECORD_KIND,
            "device_id": self.device_id,
            "sample_id": self._sample_id(),
            "model": model,
            "version": version,
            "role": role,
            "rollout_id": window.get("rollout_id"),
            "at": at,
            "opened_at": window.get("opened_at"),
            "reasons": reasons,
            "anomaly_score": row.score,
            "request_id": row.request_id,
            "row": row.row,
            "inputs": {n: encode_tensor(t) for n, t in row.inputs.items()},
            "outputs": {n: encode_tensor(t) for n, t in row.outputs.items()},
        }

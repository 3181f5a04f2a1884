"""The telemetry wire format, version 1: windows, events and the batches that carry them.

One definition for both ends (the agent writes it into its buffer and sends it; the hub
checks, stores and merges it) and for the media bundles of the air-gap issue. Documented
in ``docs/telemetry-format.md``. Pure: no I/O, no clock.

Records are plain JSON objects. Unknown fields are kept as they are, so a newer agent's
extra fields reach the hub's storage intact; an unknown ``kind`` is stored but never merged.
A record's identity is ``(device_id, buffer_id, seq)``: ``seq`` is assigned by the device's
buffer when the record is appended and never reused by that buffer; ``buffer_id`` names the
buffer (a new one after a wiped disk), so a restarted sequence is never mistaken for a replay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.histogram import LATENCY_EDGES_S, Histogram

__all__ = [
    "ANOMALY_EDGES",
    "CONFIDENCE_EDGES",
    "EDGE_SETS",
    "FORMAT_VERSION",
    "HISTOGRAM_FIELDS",
    "MAX_RECORDS_PER_BATCH",
    "OUTCOME_KEYS",
    "ROLES",
    "Batch",
    "WindowTotals",
    "decode_histogram",
    "encode_histogram",
    "merge_windows",
    "parse_batch",
    "parse_time",
]

#: The format version this code writes and reads.
FORMAT_VERSION: Final = 1

#: Most records one batch may carry.
MAX_RECORDS_PER_BATCH: Final = 5000

#: Upper edges of the output-confidence histogram (top-class probability, 0.05 apart).
CONFIDENCE_EDGES: Final = tuple(round(i * 0.05, 2) for i in range(1, 20))

#: Upper edges of the anomaly-score histogram (issue 9): the oriented score minus the
#: scorer's threshold, -1 … 1 in steps of 0.1; the buckets above 0 are the anomalous rows.
ANOMALY_EDGES: Final = tuple(round(i * 0.1, 1) for i in range(-10, 11))

#: Named edge sets: a histogram on the wire names its edges instead of listing them.
EDGE_SETS: Final[Mapping[str, tuple[float, ...]]] = {
    "latency_s.v1": LATENCY_EDGES_S,
    "confidence.v1": CONFIDENCE_EDGES,
    "anomaly.v1": ANOMALY_EDGES,
}

#: The histogram fields of a window and the edge set each must use.
HISTOGRAM_FIELDS: Final[Mapping[str, str]] = {
    "latency_s": "latency_s.v1",
    "compute_s": "latency_s.v1",
    "queue_s": "latency_s.v1",
    "confidence": "confidence.v1",
    "anomaly": "anomaly.v1",
}

#: Request outcomes a window counts (as the agent's request observers name them).
OUTCOME_KEYS: Final = ("ok", "client_error", "server_error", "timeout")

#: Roles a version serves a window under.
ROLES: Final = ("production", "candidate", "shadow")

#: Counter groups of a window: group -> its keys. All are non-negative integers.
COUNTER_GROUPS: Final[Mapping[str, tuple[str, ...]]] = {
    "requests": OUTCOME_KEYS,
    "guard": ("breaches", "rollbacks"),
    "shadow": ("compared", "disagreed", "dropped"),
    "cascade": ("local", "upstream", "failed"),
    # answers a human overrode or confirmed, as the application reported them (issue 9)
    "overrides": ("overridden", "confirmed"),
}
#: Plain counters of a window.
PLAIN_COUNTERS: Final = ("refusals", "updates")

_MAX_NAME = 256
_MAX_MESSAGE = 4096


def encode_histogram(hist: Histogram, edges: str) -> dict[str, Any]:
    """``{"edges": NAME, "counts": [[index, n], ...], "sum": s}`` with only non-zero buckets.

    Raises:
        ValueError: ``hist`` does not use the edge set ``edges``.
    """
    if tuple(hist.edges) != EDGE_SETS[edges]:
        raise ValueError(f"the histogram does not use the edge set {edges!r}")
    return {
        "edges": edges,
        "counts": [[i, n] for i, n in enumerate(hist.counts) if n],
        "sum": hist.total,
    }


def decode_histogram(obj: Any, expected_edges: str | None = None) -> Histogram:
    """The :class:`Histogram` a wire histogram describes.

    Raises:
        InvalidInputError: unknown edge set, an index out of range, a negative or
            non-integer count, a repeated index, or a sum that is not a finite number.
    """
    if not isinstance(obj, Mapping):
        raise InvalidInputError("a histogram must be an object with edges, counts and sum")
    name = obj.get("edges")
    if not isinstance(name, str) or name not in EDGE_SETS:
        raise InvalidInputError(f"unknown histogram edge set {name!r}")
    if expected_edges is not None and name != expected_edges:
        raise InvalidInputError(f"expected edge set {expected_edges!r}, got {name!r}")
    hist = Histogram(EDGE_SETS[name])
    counts = obj.get("counts")
    if not isinstance(counts, list):
        raise InvalidInputError("histogram counts must be a list of [index, count] pairs")
    seen: set[int] = set()
    buckets = hist.counts
    size = len(buckets)
    for pair in counts:  # the hub checks every bucket of every window: kept lean
        if type(pair) is not list or len(pair) != 2:
            raise InvalidInputError(f"bad histogram bucket {pair!r}")
        index, n = pair
        if type(index) is not int or type(n) is not int or not 0 <= index < size or n < 0:
            raise InvalidInputError(f"bad histogram bucket {pair!r}")
        if index in seen:
            raise InvalidInputError(f"bad histogram bucket {pair!r}")
        seen.add(index)
        buckets[index] = n
    total = obj.get("sum", 0.0)
    if isinstance(total, bool) or not isinstance(total, int | float) or not math.isfinite(total):
        raise InvalidInputError("a histogram's sum must be a finite number")
    hist.total = float(total)
    return hist


def parse_time(value: Any, what: str) -> datetime:
    """An aware datetime from an ISO 8601 string with an offset.

    Raises:
        InvalidInputError: not such a string.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be an ISO 8601 time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as e:
        raise InvalidInputError(f"{what} is not an ISO 8601 time: {value[:64]!r}") from e
    if parsed.tzinfo is None:
        raise InvalidInputError(f"{what} needs a UTC offset: {value[:64]!r}")
    return parsed


def _name(record: Mapping[str, Any], key: str, optional: bool = False) -> str | None:
    value = record.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME or "\x00" in value:
        raise InvalidInputError(f"record field {key!r} must be a non-empty string")
    return value


def _count(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise InvalidInputError(f"{what} must be a non-negative integer")
    return value


def _check_window(record: Mapping[str, Any]) -> None:
    _name(record, "model")
    _name(record, "version")
    if record.get("role") not in ROLES:
        raise InvalidInputError(f"a window's role must be one of {', '.join(ROLES)}")
    _name(record, "rollout_id", optional=True)
    opened = parse_time(record.get("opened_at"), "opened_at")
    closed = parse_time(record.get("closed_at"), "closed_at")
    if closed < opened:
        raise InvalidInputError("a window closes before it opens")
    for group, keys in COUNTER_GROUPS.items():
        counters = record.get(group, {})
        if not isinstance(counters, Mapping):
            raise InvalidInputError(f"window field {group!r} must be an object of counts")
        for key in keys:
            _count(counters.get(key, 0), f"{group}.{key}")
    for key in PLAIN_COUNTERS:
        _count(record.get(key, 0), key)
    for key, edges in HISTOGRAM_FIELDS.items():
        if key in record:
            decode_histogram(record[key], edges)


def _check_event(record: Mapping[str, Any]) -> None:
    parse_time(record.get("at"), "at")
    _name(record, "event")
    _name(record, "model", optional=True)
    _name(record, "version", optional=True)
    message = record.get("message", "")
    if not isinstance(message, str) or len(message) > _MAX_MESSAGE:
        raise InvalidInputError(f"an event's message must be a string of at most {_MAX_MESSAGE}")


@dataclass(frozen=True)
class Batch:
    """A checked batch of records from one device's buffer.

    Attributes:
        device_id: the device that sent it (equal to every record's ``device_id``).
        buffer_id: the sending buffer's id.
        sent_at: the device's clock when it sent the batch (for clock skew).
        records: the records, each a dict as sent (unknown fields kept), seq ascending.
        buffered: records still waiting on the device after this batch.
        evicted_total: records the device's buffer has evicted since it was created.
    """

    device_id: str
    buffer_id: str
    sent_at: datetime
    records: list[dict[str, Any]]
    buffered: int
    evicted_total: int


def parse_batch(doc: Any, device_id: str) -> Batch:
    """Check a batch sent by ``device_id``; nothing in it is trusted before this passes.

    Raises:
        InvalidInputError: a newer format, a record of another device, a repeated seq,
            or any malformed field (the whole batch is refused; nothing of it is stored).
    """
    if not isinstance(doc, Mapping):
        raise InvalidInputError("a telemetry batch must be a JSON object")
    version = doc.get("format")
    if type(version) is not int or version < 1:
        raise InvalidInputError("a telemetry batch needs an integer 'format'")
    if version > FORMAT_VERSION:
        raise InvalidInputError(
            f"telemetry format {version} is newer than this hub reads ({FORMAT_VERSION})"
        )
    if doc.get("device_id") != device_id:
        raise InvalidInputError("the batch names another device than the one sending it")
    buffer_id = _name(doc, "buffer_id")
    assert buffer_id is not None
    sent_at = parse_time(doc.get("sent_at"), "sent_at")
    records = doc.get("records")
    if not isinstance(records, list) or not records:
        raise InvalidInputError("a telemetry batch needs a non-empty list of records")
    if len(records) > MAX_RECORDS_PER_BATCH:
        raise InvalidInputError(f"a batch carries at most {MAX_RECORDS_PER_BATCH} records")
    seqs: set[int] = set()
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InvalidInputError(f"record {i} is not an object")
        seq = record.get("seq")
        if type(seq) is not int or seq < 1 or seq in seqs:
            raise InvalidInputError(f"record {i} needs a positive seq not repeated in the batch")
        seqs.add(seq)
        if record.get("device_id") != device_id:
            raise InvalidInputError(f"record {i} (seq {seq}) names another device")
        kind = record.get("kind")
        try:
            if kind == "window":
                _check_window(record)
            elif kind == "event":
                _check_event(record)
            else:
                _name(record, "kind")  # a newer kind: kept, never merged
        except InvalidInputError as e:
            raise InvalidInputError(f"record {i} (seq {seq}): {e}") from e
    return Batch(
        device_id=device_id,
        buffer_id=buffer_id,
        sent_at=sent_at,
        records=sorted(records, key=lambda r: int(r["seq"])),
        buffered=_count(doc.get("buffered", 0), "buffered"),
        evicted_total=_count(doc.get("evicted_total", 0), "evicted_total"),
    )


@dataclass
class WindowTotals:
    """Windows merged exactly: counters added, histograms added bucket by bucket.

    Attributes:
        windows: how many windows were merged.
        counters: ``"group.key"`` (``"requests.ok"``) or plain name (``"refusals"``) -> sum.
        histograms: histogram field -> merged histogram.
        devices: the distinct devices the windows came from.
    """

    windows: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)

    def add(self, record: Mapping[str, Any]) -> None:
        """Merge one window (already checked by :func:`parse_batch`, or a roll-up)."""
        self.windows += int(record.get("windows", 1))
        device = record.get("device_id")
        if isinstance(device, str):
            self.devices.add(device)
        for group, keys in COUNTER_GROUPS.items():
            counters = record.get(group) or {}
            for key in keys:
                n = counters.get(key, 0)
                if n:
                    name = f"{group}.{key}"
                    self.counters[name] = self.counters.get(name, 0) + n
        for key in PLAIN_COUNTERS:
            n = record.get(key, 0)
            if n:
                self.counters[key] = self.counters.get(key, 0) + n
        for key, edges in HISTOGRAM_FIELDS.items():
            if key in record:
                hist = decode_histogram(record[key], edges)
                mine = self.histograms.get(key)
                if mine is None:
                    self.histograms[key] = hist
                else:
                    mine.merge(hist)

    def to_record(self) -> dict[str, Any]:
        """The merged counts in the window shape (for roll-ups and the query API)."""
        out: dict[str, Any] = {"windows": self.windows}
        for group, keys in COUNTER_GROUPS.items():
            out[group] = {k: self.counters.get(f"{group}.{k}", 0) for k in keys}
        for key in PLAIN_COUNTERS:
            out[key] = self.counters.get(key, 0)
        for key, hist in self.histograms.items():
            out[key] = encode_histogram(hist, HISTOGRAM_FIELDS[key])
        return out


def merge_windows(records: Iterable[Mapping[str, Any]]) -> WindowTotals:
    """Merge windows (and roll-ups, which carry ``"windows": n``) exactly."""
    totals = WindowTotals()
    for record in records:
        totals.add(record)
    return totals

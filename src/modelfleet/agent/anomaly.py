"""Anomaly scores on the device (issue 9): a package's scorer run on answered requests.

A version whose signed manifest carries an ``anomaly_scorer``
(:mod:`modelfleet.packaging.anomaly`) is *watched* (:meth:`AnomalyScorer.watch`, from the
model loader, like the drift profile). Each answered request's first input is scored with
ONNX Runtime (:func:`modelfleet.catalog.onnx_session.create_session`, the serving runtime's
session factory, one intra-op thread); the oriented scores (higher = more anomalous) minus the
scorer's threshold are counted into the window's ``"anomaly"`` histogram (edge set
``anomaly.v1``: −1 … 1 in steps of 0.1, so the buckets above 0 are the anomalous rows; see
``docs/telemetry-format.md``) and handed to the review sampler as its routing signal.

Cost is bounded: at most ``max_rows`` rows per (model, version, role) and window are scored
(default 20,000), and at most ``max_request_rows`` rows of one request (the first ones, 256);
rows past either bound are not scored and counted in :attr:`AnomalyScorer.skipped_rows`. A
scorer that fails on a request is logged once per version and skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from modelfleet.catalog.onnx_session import create_session
from modelfleet.errors import InvalidInputError, ModelfleetError
from modelfleet.monitoring.histogram import Histogram
from modelfleet.packaging.anomaly import AnomalyScorerSpec
from modelfleet.serving.model import RuntimeSettings
from modelfleet.telemetry.wire import EDGE_SETS, encode_histogram

__all__ = ["ANOMALY_EDGES", "AnomalyScorer", "LoadedScorer"]

log = logging.getLogger("modelfleet.agent.anomaly")

#: Upper edges of the window's anomaly histogram (oriented score minus threshold).
ANOMALY_EDGES: Final = EDGE_SETS["anomaly.v1"]

Tensors = Mapping[str, npt.NDArray[Any]]
Key = tuple[str, str, str]


class LoadedScorer:
    """One version's scorer in an ONNX Runtime session (thread-safe, as sessions are).

    Raises:
        InvalidModelError: ONNX Runtime cannot load it.
        ConfigError: an execution provider is unavailable.
    """

    def __init__(self, spec: AnomalyScorerSpec, settings: RuntimeSettings | None = None) -> None:
        runtime = settings or RuntimeSettings()
        self.spec = spec
        self._session = create_session(spec.onnx, providers=runtime.providers, intra_op_threads=1)
        inp = self._session.get_inputs()[0]
        self._dtype: type[np.floating[Any]] = (
            np.float64 if "double" in str(inp.type) else np.float32
        )

    def scores(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Oriented scores minus the threshold, one per row (> 0: anomalous)."""
        out = self._session.run([self.spec.output], {self.spec.input: x.astype(self._dtype)})[0]
        raw = np.asarray(out, dtype=np.float64).reshape(x.shape[0], -1)[:, 0]
        return self.spec.sign * raw - self.spec.sign * self.spec.threshold


class AnomalyScorer:
    """Scores the answered requests of watched versions; :meth:`close` ends a window.

    Args:
        max_rows: rows scored per (model, version, role) and window (1 … 10,000,000).
        max_request_rows: rows scored of one request (1 … 65,536).
    """

    def __init__(self, max_rows: int = 20_000, max_request_rows: int = 256) -> None:
        if not 1 <= max_rows <= 10_000_000 or not 1 <= max_request_rows <= 65_536:
            raise InvalidInputError("anomaly scoring bounds out of range")
        self.max_rows = max_rows
        self.max_request_rows = max_request_rows
        self._scorers: dict[tuple[str, str], LoadedScorer] = {}
        self._hists: dict[Key, Histogram] = {}
        self._lock = threading.Lock()
        self._failed: set[tuple[str, str]] = set()
        #: Rows not scored (over a bound, or the scorer failed).
        self.skipped_rows = 0

    def watch(self, model: str, version: str, scorer: LoadedScorer | None) -> None:
        """Score ``version`` of ``model`` with ``scorer`` from now on (None: stop)."""
        with self._lock:
            if scorer is None:
                self._scorers.pop((model, version), None)
            else:
                self._scorers[(model, version)] = scorer
                self._failed.discard((model, version))

    def watches(self, model: str, version: str) -> bool:
        return (model, version) in self._scorers

    def threshold(self, model: str, version: str) -> float:
        """Scores given by :meth:`score` are relative to the threshold: always 0."""
        return 0.0

    def score(
        self, model: str, version: str, role: str, inputs: Tensors
    ) -> npt.NDArray[np.float64] | None:
        """Score one answered request's rows (counted in the window's histogram).

        Returns:
            One score per row of the request (oriented, minus the threshold: > 0 is
            anomalous), or None when the version has no scorer, a bound was reached, or
            the scorer failed.
        """
        scorer = self._scorers.get((model, version))
        if scorer is None or not inputs:
            return None
        x = next(iter(inputs.values()))
        rows = int(x.shape[0]) if x.ndim else 1
        key = (model, version, role)
        hist = self._hists.get(key)
        done = 0 if hist is None else sum(hist.counts)
        if rows > self.max_request_rows or done + rows > self.max_rows:
            self.skipped_rows += rows
            return None
        try:
            scores = scorer.scores(x if x.ndim > 1 else x.reshape(1, -1))
        except Exception as e:  # ORT's own errors: the request was answered all the same
            self.skipped_rows += rows
            if (model, version) not in self._failed:
                self._failed.add((model, version))
                log.warning("anomaly scorer of %s v%s failed: %s", model, version, e)
            return None
        with self._lock:
            hist = self._hists.get(key)
            if hist is None:
                hist = self._hists[key] = Histogram(ANOMALY_EDGES)
            for v in scores.tolist():
                hist.record(v)
        return scores

    def on_batch(
        self,
        model: str,
        version: str,
        role: str,
        inputs: Tensors,
        outputs: Tensors,
        request_id: str | None = None,
    ) -> None:
        """As a batch observer of its own (review sampling off): score and count."""
        if role != "shadow":
            self.score(model, version, role, inputs)

    def close(self, keys: Iterable[Key] = ()) -> dict[Key, dict[str, Any]]:
        """End the window: ``{key: {"anomaly": wire histogram}}`` for every key that
        scored rows (``keys`` is accepted for the telemetry ``attach`` signature)."""
        with self._lock:
            table, self._hists = self._hists, {}
        return {k: {"anomaly": encode_histogram(h, "anomaly.v1")} for k, h in table.items()}


def load_scorer(
    manifest_doc: Mapping[str, Any] | None, settings: RuntimeSettings | None = None
) -> LoadedScorer | None:
    """The loaded scorer of a verified manifest's ``anomaly_scorer``; None when it has none,
    or one this agent cannot load (logged: the model still serves, unscored)."""
    if manifest_doc is None:
        return None
    try:
        return LoadedScorer(AnomalyScorerSpec.from_dict(manifest_doc), settings)
    except ModelfleetError as e:
        log.warning("anomaly scorer not loaded: %s", e)
        return None

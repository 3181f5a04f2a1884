"""Python client of the hub's REST API (``/api/v1``), over httpx.

HTTP errors come back as modelfleet exceptions carrying the hub's message: 400/422 ->
:class:`InvalidInputError`, 401 -> :class:`UnauthenticatedError`, 403 ->
:class:`ForbiddenError`, 404 -> :class:`NotFoundError`, 409 -> :class:`ConflictError`,
413 -> :class:`PayloadTooLargeError`, anything else and an unreachable hub ->
:class:`TransportError`.

Example::

    client = HubClient("http://127.0.0.1:8700", token)
    version = register_model(client, "iris", fitted_pipeline, sample_input=X[:8])
    client.deploy("iris", version["version"], all_devices=True)
"""

from __future__ import annotations

import io
import re
import ssl
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from modelfleet import errors
from modelfleet.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    ModelfleetError,
    NotFoundError,
    PayloadTooLargeError,
    TransportError,
    UnauthenticatedError,
)
from modelfleet.hashing import CHUNK

__all__ = ["ROLLOUT_COMMANDS", "HubClient", "register_model"]

ROLLOUT_COMMANDS = ("pause", "resume", "promote", "rollback", "abort", "approve")
"""What an operator (``approve``: an approver) can tell a rollout to do."""

_ERRORS: dict[int, type[ModelfleetError]] = {
    400: InvalidInputError,
    401: UnauthenticatedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidInputError,
}


class HubClient:
    """One method per hub endpoint; answers are the hub's JSON (dicts and lists).

    Args:
        base_url: the hub, e.g. ``http://127.0.0.1:8700``.
        token: a bearer token (None for :meth:`health` only).
        timeout: seconds per request (connect, read, write).
        http: an httpx client to use instead of a new one (tests pass FastAPI's
            ``TestClient`` here); it is not closed by :meth:`close`.
        verify: TLS verification for ``https://`` (a context pinning the hub's CA:
            :func:`modelfleet.delivery.tls.client_verify`).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 30.0,
        *,
        http: httpx.Client | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._owns_http = http is None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout, verify=verify)
        self._headers = headers

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        url = f"{self.base_url}{path}"
        try:
            response = self._http.request(
                method,
                url,
                json=json,
                params=params,
                content=content,
                headers={**self._headers, **(headers or {})},
            )
        except httpx.TransportError as e:
            raise TransportError(f"cannot reach the hub at {self.base_url}: {e}") from e
        if response.is_success:
            return response
        message, type_name = _error_message(response)
        kind = _ERRORS.get(response.status_code, TransportError)
        # The hub names the precise error (e.g. InvalidModelError); keep it when it is a
        # modelfleet error of the kind the status code says.
        precise = getattr(errors, type_name or "", None)
        if isinstance(precise, type) and issubclass(precise, kind):
            kind = precise
        raise kind(f"{message} (HTTP {response.status_code})")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as e:
            raise TransportError(f"the hub answered {path} with invalid JSON") from e

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The answer, which must be a JSON object (a wrong route answers something else)."""
        body = self._json(method, path, **kwargs)
        if not isinstance(body, dict):
            raise TransportError(
                f"the hub answered {path} with {type(body).__name__}, not an object"
            )
        return body

    def _list(self, method: str, path: str, **kwargs: Any) -> list[dict[str, Any]]:
        """The answer, which must be a JSON array of objects."""
        body = self._json(method, path, **kwargs)
        if not isinstance(body, list) or not all(isinstance(x, dict) for x in body):
            raise TransportError(f"the hub answered {path} with something other than a list")
        return body

    # -- hub -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "version": ...}``; needs no token."""
        result: dict[str, Any] = self._json("GET", "/api/v1/health")
        return result

    def trust_root(self) -> bytes:
        """The trust-root bundle bytes (write them to the agent's ``trust-root.json``)."""
        return self._request("GET", "/api/v1/trust-root").content

    def create_token(self, role: str, subject: str) -> str:
        """Mint a token (admin); returns the token string."""
        body = self._json("POST", "/api/v1/tokens", json={"role": role, "subject": subject})
        return str(body["token"])

    # -- devices -------------------------------------------------------------------------

    def add_device(
        self,
        device_id: str,
        site: str | None = "",
        tags: Sequence[str] | None = None,
        ticket: str | None = None,
    ) -> dict[str, Any]:
        """Enrol a device. Returns the device dict plus ``"token"`` (shown only once)."""
        result: dict[str, Any] = self._json(
            "POST",
            "/api/v1/devices",
            json={"id": device_id, "site": site, "tags": list(tags or ()), "ticket": ticket},
        )
        return result

    def list_devices(self) -> list[dict[str, Any]]:
        """Every device: ``{"id", "site", "tags", "created_at", "last_seen", "report",
        "assignments", "desired_state", "telemetry", "director"}`` (``telemetry``:
        ``{"last_at", "lag_s", "buffered", "evicted_total", "clock_skew_s", "skew_flagged",
        "highest_seq", "buffer_id"}`` or None before the first batch; ``director``:
        ``{"targets"|"snapshot"|"timestamp": {"version", "expires"}}`` of the device's
        signed director metadata, or None before its first signing)."""
        result: list[dict[str, Any]] = self._json("GET", "/api/v1/devices")
        return result

    def media_access(self, site: str) -> dict[str, list[str]]:
        """Each device of ``site`` with the SHA-256 digests of its usable credentials
        (admin token; what ``bundle export`` gives an offline site mirror)."""
        body = self._object("GET", f"/api/v1/sites/{quote(site, safe='')}/media-access")
        devices = body.get("devices")
        if not isinstance(devices, dict):
            raise TransportError("the hub's media-access answer has no 'devices' object")
        return {str(k): [str(x) for x in v] for k, v in devices.items()}

    def get_device(self, device_id: str) -> dict[str, Any]:
        """One device (see :meth:`list_devices`)."""
        result: dict[str, Any] = self._json("GET", f"/api/v1/devices/{device_id}")
        return result

    def report(self, device_id: str, report: Mapping[str, Any]) -> None:
        """Post a device check-in: the agent's state dict (``applied_serial``,
        ``models``, ``last_refusal``, ``events``, ...), kept by the hub as sent."""
        self._request("POST", f"/api/v1/devices/{device_id}/report", json=dict(report))

    # -- telemetry -----------------------------------------------------------------------

    def send_telemetry(self, device_id: str, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Post a telemetry batch (wire format v1) for ``device_id`` (its token, or admin).

        Returns:
            ``{"stored", "duplicates", "acked_through", "status": "recorded"}``.
        """
        result: dict[str, Any] = self._json(
            "POST", f"/api/v1/devices/{device_id}/telemetry", json=dict(batch)
        )
        return result

    def device_windows(self, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """A device's most recent raw telemetry records, newest first, each as sent plus
        ``"buffer_id"`` and ``"received_at"``."""
        result: list[dict[str, Any]] = self._json(
            "GET", f"/api/v1/devices/{device_id}/windows", params={"limit": limit}
        )
        return result

    def telemetry_summary(self, **query: str | None) -> dict[str, Any]:
        """Merged window totals (viewer). Keyword filters: ``model``, ``version``, ``role``,
        ``site``, ``tag``, ``rollout_id``, ``device_id``, and ``since`` / ``until`` (ISO
        8601); None ones are left out. See ``HubService.telemetry_summary``."""
        params = {k: v for k, v in query.items() if v is not None}
        result: dict[str, Any] = self._json("GET", "/api/v1/telemetry/summary", params=params)
        return result

    def drift_report(self, model: str, **query: str | None) -> dict[str, Any]:
        """The explained drift of one model version (viewer). Keyword filters: ``version``,
        ``site``, ``since`` / ``until`` (ISO 8601); None ones are left out. See
        ``HubService.drift_report``."""
        params = {"model": model, **{k: v for k, v in query.items() if v is not None}}
        result: dict[str, Any] = self._json("GET", "/api/v1/drift", params=params)
        return result

    def drift_states(
        self, model: str | None = None, site: str | None = None
    ) -> list[dict[str, Any]]:
        """The drift state of each model at each site (viewer); see
        ``HubService.drift_states``."""
        params = {k: v for k, v in (("model", model), ("site", site)) if v is not None}
        result: list[dict[str, Any]] = self._json("GET", "/api/v1/drift/states", params=params)
        return result

    def override_states(
        self, model: str | None = None, site: str | None = None
    ) -> list[dict[str, Any]]:
        """The override-rate state of each model at each site (viewer, ADR 0040); see
        ``HubService.override_states``."""
        params = {k: v for k, v in (("model", model), ("site", site)) if v is not None}
        result: list[dict[str, Any]] = self._json("GET", "/api/v1/drift/overrides", params=params)
        return result

    # -- models --------------------------------------------------------------------------

    def upload_blob(self, data: Path | str | bytes) -> str:
        """Upload a file (streamed) or bytes; returns its sha256."""
        if isinstance(data, bytes):
            body = self._json(
                "POST",
                "/api/v1/blobs",
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            return str(body["sha256"])
        path = Path(data)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise InvalidInputError(f"cannot read {path}: {e.strerror or e}") from e
        body = self._json(
            "POST",
            "/api/v1/blobs",
            content=_file_chunks(path),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        return str(body["sha256"])

    def register_version(
        self,
        name: str,
        model: Path | str | bytes | Any,
        sample_input: np.ndarray | Path | str | None = None,
        lineage: Mapping[str, Any] | None = None,
        ticket: str | None = None,
        decisions: Mapping[str, Mapping[str, Any]] | None = None,
        reference: Path | str | None = None,
        categorical: Sequence[str] = (),
        drift_sketches: bool = True,
        anomaly_scorer: Path | str | bytes | None = None,
        anomaly_output: str | None = None,
        anomaly_threshold: float = 0.0,
        anomaly_higher_is_anomalous: bool = False,
    ) -> dict[str, Any]:
        """Upload a model and register it as the next version of ``name``.

        Args:
            name: model name.
            model: an ONNX file path, ONNX bytes, or a fitted scikit-learn estimator or
                pipeline (converted with skl2onnx; needs ``sample_input``).
            sample_input: rows to record smoke vectors from: an array, or a ``.npy`` /
                ``.csv`` file; generated from the schema if None.
            lineage: provenance fields stored with the version.
            ticket: change ticket.
            reference: reference rows for drift (issue 9): ``.npy``, ``.npz``, ``.csv``
                with a header, or ``.parquet`` (needs pyarrow). Profiled here: the
                inputs, and the model's outputs on them (run with ONNX Runtime); the
                profile is signed into the package manifest. None: drift will not be
                computed for this version.
            categorical: reference columns that are categorical (text columns always are).
            drift_sketches: keep KLL sketches of the reference columns in the profile (KS).
            anomaly_scorer: an ONNX model taking the model's input and giving one score per
                row (e.g. an IsolationForest via skl2onnx), signed into the manifest
                (issue 9); ``anomaly_output`` names its score output, ``anomaly_threshold``
                the raw score where rows turn anomalous, ``anomaly_higher_is_anomalous``
                its direction (False for IsolationForest's decision_function).

        Returns:
            The version dict (``model``, ``version``, ``sha256``, ``schema``, ...), with
            ``drift``: the profile's digest and columns, or a ``message`` that drift will
            not be computed.

        Raises:
            InvalidModelError: the estimator cannot be converted (the hub answers
                :class:`InvalidInputError` for a model it cannot load).
            InvalidInputError: a bad file, sample, reference, or model.
            ModuleNotFoundError: a Parquet reference without pyarrow installed.
        """
        sample = _load_sample(sample_input)
        if not isinstance(model, bytes | Path | str):
            if sample is None:
                raise InvalidInputError(
                    "a scikit-learn model needs sample_input to be converted to ONNX"
                )
            from modelfleet.packaging.sklearn import sklearn_to_onnx

            model = sklearn_to_onnx(model, sample)
        profile = None
        if reference is not None:
            profile = _reference_profile(model, reference, categorical, drift_sketches)
        elif categorical:
            raise InvalidInputError("categorical columns were named without a reference")
        scorer = None
        if anomaly_scorer is not None:
            scorer = _scorer_spec(
                model, anomaly_scorer, anomaly_output, anomaly_threshold,
                anomaly_higher_is_anomalous,
            )  # fmt: skip
        model_digest = self.upload_blob(model)
        sample_digest = None
        if sample is not None:
            buf = io.BytesIO()
            np.save(buf, sample, allow_pickle=False)
            sample_digest = self.upload_blob(buf.getvalue())
        result: dict[str, Any] = self._json(
            "POST",
            f"/api/v1/models/{name}/versions",
            json={
                "blob": model_digest,
                "sample_input_blob": sample_digest,
                "lineage": dict(lineage or {}),
                "ticket": ticket,
                "decisions": {k: dict(v) for k, v in decisions.items()} if decisions else None,
                **({"reference_profile": profile} if profile is not None else {}),
                **({"anomaly_scorer": scorer} if scorer is not None else {}),
            },
        )
        if profile is None:
            result.setdefault("drift", {"reference_profile": None, "message": NO_DRIFT})
        return result

    def list_models(self) -> list[dict[str, Any]]:
        """``[{"name", "description", "created_at", "latest_version", "versions"}]``."""
        result: list[dict[str, Any]] = self._json("GET", "/api/v1/models")
        return result

    def get_model(self, name: str) -> dict[str, Any]:
        """A model with all its versions."""
        result: dict[str, Any] = self._json("GET", f"/api/v1/models/{name}")
        return result

    def get_version(self, name: str, version: int) -> dict[str, Any]:
        """One version, with ``deployments`` (devices and roles)."""
        result: dict[str, Any] = self._json("GET", f"/api/v1/models/{name}/versions/{version}")
        return result

    def get_manifest(self, name: str, version: int) -> bytes:
        """The package manifest JSON bytes of a version."""
        return self._request("GET", f"/api/v1/models/{name}/versions/{version}/manifest").content

    def revoke_version(self, name: str, version: int, ticket: str | None = None) -> dict[str, Any]:
        """Remove a version from the signed catalog."""
        result: dict[str, Any] = self._json(
            "POST", f"/api/v1/models/{name}/versions/{version}/revoke", json={"ticket": ticket}
        )
        return result

    def set_model(self, name: str, *, safety_classified: bool) -> dict[str, Any]:
        """Change a model's settings (publisher or admin): ``safety_classified`` models'
        rollouts need a change ticket and a second person's approval.

        Returns:
            The model dict, as :meth:`get_model`.
        """
        return self._object(
            "PATCH",
            f"/api/v1/models/{_name(name, 'model name')}",
            json={"safety_classified": safety_classified},
        )

    # -- rollout -------------------------------------------------------------------------

    def deploy(
        self,
        model: str,
        version: int,
        devices: Sequence[str] | None = None,
        *,
        all_devices: bool = False,
        mode: str = "full",
        share: float = 0.0,
        slo: Mapping[str, float] | None = None,
        ticket: str | None = None,
    ) -> dict[str, Any]:
        """Assign a version to devices (a list, or ``all_devices=True``).

        Returns:
            ``{"model", "version", "mode", "share", "slo", "rollout_id", "devices":
            [{"device_id", "production", "candidate", "mode", "share", "serial",
            "desired_state_sha256",
            "desired_state_length"}]}``
        """
        result: dict[str, Any] = self._json(
            "POST",
            "/api/v1/deployments",
            json={
                "model": model,
                "version": version,
                "devices": list(devices) if devices is not None else None,
                "all": all_devices,
                "mode": mode,
                "share": share,
                "slo": dict(slo or {}),
                "ticket": ticket,
            },
        )
        return result

    def rollback(
        self,
        model: str,
        devices: Sequence[str] | None = None,
        *,
        all_devices: bool = False,
        ticket: str | None = None,
    ) -> dict[str, Any]:
        """Send devices back to their last good version of ``model``.

        Returns:
            ``{"model", "rollout_id", "devices": [...]}`` (as :meth:`deploy`).
        """
        result: dict[str, Any] = self._json(
            "POST",
            "/api/v1/rollbacks",
            json={
                "model": model,
                "devices": list(devices) if devices is not None else None,
                "all": all_devices,
                "ticket": ticket,
            },
        )
        return result

    # -- staged rollouts (issue 8) ---------------------------------------------------------

    def create_rollout(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        """Start a staged rollout (operator).

        Args:
            plan: the plan as written in a plan file (``yaml.safe_load`` of it) or as
                ``RolloutPlan.to_dict()``; the hub validates it.

        Returns:
            The rollout view (see :meth:`get_rollout`); ``state`` is ``running``, or
            ``awaiting_approval`` for a safety-classified model.

        Raises:
            InvalidInputError: the hub refused the plan (the message names the field).
            NotFoundError: the model or version does not exist.
        """
        return self._object("POST", "/api/v1/rollouts", json=dict(plan))

    def list_rollouts(
        self, *, state: str | None = None, model: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Rollout summaries, newest first: ``{"id", "model", "version", "state",
        "stage_name", "stage_index", "stages", "devices_total", "created_at",
        "updated_at"}``; filters left out when None."""
        params = {
            k: v for k, v in (("state", state), ("model", model), ("limit", limit)) if v is not None
        }
        return self._list("GET", "/api/v1/rollouts", params=params)

    def get_rollout(self, rollout_id: str) -> dict[str, Any]:
        """One rollout: the summary fields plus ``plan``, ``from_version``, ``reason``,
        ``ticket``, ``approved_by``, ``stage`` (``index``, ``name``, ``percent``, ``mode``,
        ``share``, ``started_at``, ``soak_s``, ``soak_left_s``), ``devices`` (``total``,
        ``waiting``, ``assigned``, ``running``, ``rolled_back``, ``offline``), ``gates``
        (the last evaluation: ``metric``, ``value``, ``control``, ``limit``, ``devices``,
        ``samples``, ``verdict``, ``streak``, ``reason``), ``evaluated_at`` and ``history``.

        Raises:
            InvalidInputError: ``rollout_id`` is not an id (letters, digits, ``.``, ``_``,
                ``-``): a ``/`` in it would reach another endpoint.
            NotFoundError: no such rollout.
        """
        return self._object("GET", f"/api/v1/rollouts/{_name(rollout_id, 'rollout id')}")

    def rollout_command(
        self,
        rollout_id: str,
        command: str,
        *,
        reason: str | None = None,
        ticket: str | None = None,
    ) -> dict[str, Any]:
        """Tell a rollout to ``pause``, ``resume``, ``promote`` (next stage now),
        ``rollback`` (every device back to its pinned previous version), ``abort`` (stop;
        devices keep what they have) or ``approve`` (an approver who did not create it).

        Returns:
            The rollout view after the command.

        Raises:
            InvalidInputError: ``command`` is none of :data:`ROLLOUT_COMMANDS`.
            ConflictError: the rollout's state does not allow it (e.g. resume a running one).
            ForbiddenError: the token's role may not (approve needs the approver role).
            NotFoundError: no such rollout.
        """
        if command not in ROLLOUT_COMMANDS:
            raise InvalidInputError(
                f"unknown rollout command {command!r}; one of {', '.join(ROLLOUT_COMMANDS)}"
            )
        return self._object(
            "POST",
            f"/api/v1/rollouts/{_name(rollout_id, 'rollout id')}/{command}",
            json={"reason": reason, "ticket": ticket},
        )

    def rollout_evaluations(
        self, rollout_id: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """A rollout's stored gate evaluations, newest first: ``{"stage", "evaluated_at",
        "verdict", "evidence"}`` (evidence: the evaluation and the group statistics it
        read)."""
        params = {"limit": limit} if limit is not None else None
        return self._list(
            "GET", f"/api/v1/rollouts/{_name(rollout_id, 'rollout id')}/evaluations", params=params
        )

    # -- audit ---------------------------------------------------------------------------

    def audit(self, after_seq: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Audit entries ``{"seq", "at", "actor", "action", "subject", "ticket",
        "details", "prev_hash", "hash"}`` after ``after_seq``, oldest first."""
        body = self._json("GET", "/api/v1/audit", params={"after_seq": after_seq, "limit": limit})
        entries: list[dict[str, Any]] = body["entries"]
        return entries

    # -- review queue (issue 9) -----------------------------------------------------------

    def review_list(self, **filters: Any) -> list[dict[str, Any]]:
        """Review samples (filters: model, version, site, status, since, until, limit)."""
        params = {k: v for k, v in filters.items() if v is not None}
        body = self._json("GET", "/api/v1/review", params=params)
        if not isinstance(body, list):
            raise TransportError("the hub answered /api/v1/review with something not a list")
        return body

    def review_export(self, fmt: str = "jsonl", **filters: Any) -> bytes:
        """The samples with their tensors: JSONL or Label Studio import JSON bytes."""
        params = {"format": fmt, **{k: v for k, v in filters.items() if v is not None}}
        return self._request("GET", "/api/v1/review/export", params=params).content

    def review_import_labels(self, body: bytes, fmt: str = "jsonl") -> dict[str, Any]:
        """Import labels (JSONL or Label Studio's JSON export)."""
        return self._object("POST", "/api/v1/review/labels", params={"format": fmt}, content=body)

    def review_metrics(self, model: str, by: str = "version", **filters: Any) -> dict[str, Any]:
        """Accuracy, macro precision and recall of labelled samples per version/site/day."""
        params = {"model": model, "by": by, **{k: v for k, v in filters.items() if v is not None}}
        return self._object("GET", "/api/v1/review/metrics", params=params)

    def audit_page(
        self,
        *,
        limit: int = 50,
        before_seq: int | None = None,
        since: str | None = None,
        subject: str | None = None,
        actor: str | None = None,
        action: str | None = None,
    ) -> dict[str, Any]:
        """One page of audit entries, newest first: ``{"entries", "next_before_seq"}``
        (pass ``next_before_seq`` back as ``before_seq`` for the next, older page; None on
        the last). ``since`` is RFC 3339; ``subject`` also matches subjects below it."""
        params: dict[str, Any] = {"limit": limit}
        for key, value in (
            ("before_seq", before_seq),
            ("since", since),
            ("subject", subject),
            ("actor", actor),
            ("action", action),
        ):
            if value is not None:
                params[key] = value
        result: dict[str, Any] = self._json("GET", "/api/v1/audit", params=params)
        return result

    def audit_verify(self) -> dict[str, Any]:
        """The hub's check of its audit chain: ``{"ok", "entries", "head": {"seq",
        "hash"}, "problem": {"seq", "kind", "detail"} | None, "keyid"}``."""
        result: dict[str, Any] = self._json("GET", "/api/v1/audit/verify")
        return result

    def verify_audit(self) -> int | None:
        """The ``seq`` of the first problem in the hub's audit chain, or None if intact."""
        problem = self.audit_verify().get("problem")
        return int(problem["seq"]) if problem else None

    def audit_anchor(self) -> dict[str, Any]:
        """The signed head checkpoint, the audit public key and the hub's witness
        checkpoint: ``{"checkpoint", "public_key", "witness"}``."""
        result: dict[str, Any] = self._json("GET", "/api/v1/audit/head")
        return result

    def iter_audit(self, upto_seq: int, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every entry with ``seq <= upto_seq``, oldest first, read in pages."""
        after = 0
        while after < upto_seq:
            page = self.audit(after_seq=after, limit=batch)
            for entry in page:
                if int(entry["seq"]) > upto_seq:
                    return
                yield entry
            if not page:
                return
            after = int(page[-1]["seq"])

    # -- webhooks (issue 9) --------------------------------------------------------------

    def add_webhook(
        self, url: str, kinds: Sequence[str] = (), description: str = ""
    ) -> dict[str, Any]:
        """Subscribe ``url`` to the hub's events (admin); the answer's ``secret`` is shown
        only here."""
        body = {"url": url, "kinds": list(kinds), "description": description}
        return self._object("POST", "/api/v1/webhooks", json=body)

    def list_webhooks(self) -> list[dict[str, Any]]:
        """Every webhook subscription (no secrets)."""
        return self._list("GET", "/api/v1/webhooks")

    def remove_webhook(self, webhook_id: int) -> dict[str, Any]:
        """Remove a subscription with its deliveries (admin)."""
        return self._object("DELETE", f"/api/v1/webhooks/{int(webhook_id)}")

    def set_webhook_enabled(self, webhook_id: int, enabled: bool) -> dict[str, Any]:
        """Pause (False) or resume (True) a subscription; returns it."""
        return self._object(
            "PATCH", f"/api/v1/webhooks/{int(webhook_id)}", json={"enabled": bool(enabled)}
        )

    def redrive_webhook(self, webhook_id: int, delivery_ids: Sequence[int] = ()) -> dict[str, Any]:
        """Send dead deliveries again (the named ones, or every dead one)."""
        return self._object(
            "POST",
            f"/api/v1/webhooks/{int(webhook_id)}/redrive",
            json={"delivery_ids": [int(i) for i in delivery_ids]},
        )

    def webhook_deliveries(
        self, webhook_id: int, state: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """A subscription's deliveries, newest first, each with its attempt log."""
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = state
        return self._list("GET", f"/api/v1/webhooks/{int(webhook_id)}/deliveries", params=params)

    def test_webhook(self, webhook_id: int) -> dict[str, Any]:
        """Send one signed test event now (admin): ``{"ok", "status_code", "error", ...}``."""
        return self._object("POST", f"/api/v1/webhooks/{int(webhook_id)}/test")

    # -- release approvals (issue 10) ----------------------------------------------------

    def add_release_key(self, public_pem: bytes, label: str = "") -> dict[str, Any]:
        """Register a public release key (admin); send the public half only."""
        body = {"public_key": public_pem.decode("ascii"), "label": label}
        return self._object("POST", "/api/v1/release-keys", json=body)

    def remove_release_key(self, keyid: str) -> dict[str, Any]:
        """Retire a release key (admin): ``{"keyid", "label", "removed_by", "keys_left",
        "recounted"}``."""
        return self._object("DELETE", f"/api/v1/release-keys/{quote(keyid, safe='')}")

    def list_release_keys(self) -> list[dict[str, Any]]:
        """The release keys the hub knows."""
        return self._list("GET", "/api/v1/release-keys")

    def release(self, name: str, version: int) -> dict[str, Any]:
        """A version's release request: the canonical bytes to sign (base64 ``signed``),
        its threshold and the signatures so far."""
        return self._object("GET", f"/api/v1/models/{name}/versions/{int(version)}/release")

    def post_release_signature(
        self, name: str, version: int, keyid: str, sig: str
    ) -> dict[str, Any]:
        """Post one release signature (approver)."""
        return self._object(
            "POST",
            f"/api/v1/models/{name}/versions/{int(version)}/release/signatures",
            json={"keyid": keyid, "sig": sig},
        )

    def revoke(
        self, name: str, version: int, reason: str, ticket: str | None = None
    ) -> dict[str, Any]:
        """Revoke a version with a reason; the answer's ``fallback`` lists the devices
        moved back to their previous version and those stranded."""
        return self._object(
            "POST",
            f"/api/v1/models/{name}/versions/{int(version)}/revoke",
            json={"ticket": ticket, "reason": reason},
        )

    # --- issue 10: credentials ---

    def create_bootstrap_token(
        self,
        device_id: str,
        *,
        site: str = "",
        tags: Sequence[str] = (),
        ttl_s: float | None = None,
    ) -> dict[str, Any]:
        """A one-time bootstrap token for ``device_id`` (operator); shown only here."""
        body = {"site": site, "tags": list(tags), "ttl_s": ttl_s}
        path = f"/api/v1/devices/{quote(device_id, safe='')}/bootstrap-tokens"
        return self._object("POST", path, json=body)

    def device_credentials(self, device_id: str | None = None) -> list[dict[str, Any]]:
        """Device credentials (never their secrets): one device's, or every device's."""
        if device_id is None:
            return self._list("GET", "/api/v1/credentials")
        return self._list("GET", f"/api/v1/devices/{quote(device_id, safe='')}/credentials")

    def revoke_credential(self, credential_id: str, reason: str = "") -> dict[str, Any]:
        """Revoke one device credential (operator)."""
        path = f"/api/v1/credentials/{quote(credential_id, safe='')}/revoke"
        return self._object("POST", path, json={"reason": reason})

    def revoke_device(self, device_id: str, reason: str = "") -> dict[str, Any]:
        """Revoke every credential and token of a device (operator)."""
        path = f"/api/v1/devices/{quote(device_id, safe='')}/revoke"
        return self._object("POST", path, json={"reason": reason})

    def decommission_device(self, device_id: str, reason: str = "") -> dict[str, Any]:
        """Take a device out of the fleet (operator)."""
        path = f"/api/v1/devices/{quote(device_id, safe='')}/decommission"
        return self._object("POST", path, json={"reason": reason})

    # --- end issue 10: credentials ---


def register_model(
    client: HubClient,
    name: str,
    model: Path | str | bytes | Any,
    sample_input: np.ndarray | Path | str | None = None,
    lineage: Mapping[str, Any] | None = None,
    *,
    reference: Path | str | None = None,
    categorical: Sequence[str] = (),
) -> dict[str, Any]:
    """Register ``model`` as the next version of ``name`` (see
    :meth:`HubClient.register_version`; ``reference``: rows for the drift profile)."""
    return client.register_version(
        name, model, sample_input, lineage, reference=reference, categorical=categorical
    )


#: What a registration without a reference says (the hub answers the same).
NO_DRIFT = "no reference profile: drift will not be computed for this version"


def _scorer_spec(
    model: Path | str | bytes,
    scorer: Path | str | bytes,
    output: str | None,
    threshold: float,
    higher_is_anomalous: bool,
) -> dict[str, Any]:
    """The manifest's ``anomaly_scorer`` for ``model`` from the scorer's ONNX."""
    from modelfleet.packaging.anomaly import build_scorer_spec
    from modelfleet.packaging.onnx_model import inspect_onnx

    def read(x: Path | str | bytes, what: str) -> bytes:
        if isinstance(x, bytes):
            return x
        try:
            return Path(x).read_bytes()
        except OSError as e:
            raise InvalidInputError(f"cannot read {what} {x}: {e.strerror or e}") from e

    schema = inspect_onnx(read(model, "model")).schema
    spec = build_scorer_spec(
        read(scorer, "anomaly scorer"),
        schema,
        output=output,
        threshold=threshold,
        higher_is_anomalous=higher_is_anomalous,
    )
    return spec.to_dict()


def _reference_profile(
    model: Path | str | bytes, reference: Path | str, categorical: Sequence[str], sketches: bool
) -> dict[str, Any]:
    """The manifest's ``reference_profile`` for ``model`` from the reference file."""
    from modelfleet.packaging.reference import build_package_profile, load_reference

    if isinstance(model, bytes):
        data = model
    else:
        try:
            data = Path(model).read_bytes()
        except OSError as e:
            raise InvalidInputError(f"cannot read {model}: {e.strerror or e}") from e
    table = load_reference(reference)
    return build_package_profile(data, table, categorical, sketches=sketches).to_dict()


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _name(value: str, what: str) -> str:
    """``value`` checked as a model name or rollout id (the hub's name rule), for a URL
    path. Quoting is not enough: ASGI servers decode ``%2F`` before routing, so
    ``ro-1%2Fpause`` would reach the ``pause`` endpoint.

    Raises:
        InvalidInputError: not a name.
    """
    if not _NAME.match(value):
        raise InvalidInputError(
            f"not a {what}: {value!r} (letters, digits, '.', '_' and '-', at most 128)"
        )
    return value


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _load_sample(sample: np.ndarray | Path | str | None) -> np.ndarray | None:
    if sample is None or isinstance(sample, np.ndarray):
        return sample
    path = Path(sample)
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix == ".csv":
            array = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
        else:
            raise InvalidInputError(f"sample input {path} must be a .npy or .csv file")
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"cannot read sample input {path}: {e}") from e
    if not isinstance(array, np.ndarray):
        raise InvalidInputError(f"sample input {path} must hold one array")
    return array


def _error_message(response: httpx.Response) -> tuple[str, str | None]:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase, None
    if isinstance(body, dict):
        type_name = str(body["type"]) if "type" in body else None
        if "error" in body:
            return str(body["error"]), type_name
        if "detail" in body:
            return str(body["detail"]), type_name
    return str(body)[:500], None

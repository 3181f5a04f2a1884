"""Request and response bodies of the hub API (what the OpenAPI document describes).

Response models describe the service's JSON-ready dicts (see
:mod:`modelfleet.hub.service`) and keep fields they do not name, so a field the service
adds reaches clients before it is described here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from modelfleet.hub.api._deps import INT32_MAX, no_nul
from modelfleet.hub.auth import Role
from modelfleet.rollout.desired_state import Mode
from modelfleet.rollout.stages import RolloutState

__all__ = [
    "AssignmentOut",
    "AuditAnchorOut",
    "AuditCheckpointOut",
    "AuditEntryOut",
    "AuditHeadOut",
    "AuditKeyOut",
    "AuditPageOut",
    "AuditProblemOut",
    "AuditVerifyOut",
    "BlobOut",
    "DeploymentIn",
    "DeploymentOut",
    "DesiredStateOut",
    "DeviceChangeOut",
    "DeviceIn",
    "DeviceOut",
    "DeviceTelemetryOut",
    "DeviceWithTokenOut",
    "GateEvaluationOut",
    "GateResultOut",
    "HealthOut",
    "ModelOut",
    "ModelSafetyIn",
    "ModelSummaryOut",
    "ReportOut",
    "RevokeIn",
    "RollbackIn",
    "RollbackOut",
    "RolloutActionIn",
    "RolloutDevicesOut",
    "RolloutOut",
    "RolloutStageOut",
    "RolloutSummaryOut",
    "RolloutTransitionOut",
    "SummaryOut",
    "TelemetryIngestOut",
    "TokenIn",
    "TokenOut",
    "TufRepoVersionsOut",
    "TufVersionsOut",
    "VersionDeploymentOut",
    "VersionIn",
    "VersionOut",
    "WhoAmIOut",
]

Version = Field(ge=1, le=INT32_MAX)
# Every string of a request body that reaches a text column.
Text = Annotated[str, AfterValidator(no_nul)]


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- requests ------------------------------------------------------------------------------


class TokenIn(BaseModel):
    role: Role = Field(description="what the token may do")
    subject: Text = Field(description="who holds the token (the device id for device tokens)")


class DeviceIn(BaseModel):
    id: Text = Field(description="device id: letters, digits, '.', '_' or '-'")
    site: Text | None = ""
    tags: list[Text] = Field(default_factory=list)
    ticket: Text | None = None


class DecisionIn(BaseModel):
    kind: Literal["label", "argmax", "regression", "ignore"]
    rtol: float = Field(default=0.0, ge=0.0, le=1e6, allow_inf_nan=False)
    atol: float = Field(default=0.0, ge=0.0, le=1e12, allow_inf_nan=False)


class VersionIn(BaseModel):
    blob: Text = Field(description="sha256 of the uploaded ONNX model blob")
    sample_input_blob: Text | None = Field(
        default=None, description="sha256 of an uploaded .npy array of sample rows"
    )
    lineage: dict[str, Any] = Field(default_factory=dict)
    ticket: Text | None = None
    decisions: dict[Text, DecisionIn] | None = Field(
        default=None,
        description="what each output decides (shadow disagreement), overriding the ones "
        "inferred from the schema",
    )
    reference_profile: dict[str, Any] | None = Field(
        default=None,
        description="drift reference profile built by the SDK from reference rows "
        "({profile, inputs, outputs}; issue 9), signed into the manifest; absent: drift "
        "will not be computed",
    )
    anomaly_scorer: dict[str, Any] | None = Field(
        default=None,
        description="optional anomaly scorer (an ONNX model scoring the model's input, "
        "base64, with its sha256, score output and threshold; issue 9), signed into the "
        "manifest",
    )
    target: dict[str, Any] | None = Field(
        default=None,
        description="what the package needs of a device (issue 10): hardware tags (all "
        "required) and execution providers (one required), signed into the manifest",
    )


class RevokeIn(BaseModel):
    ticket: Text | None = None
    reason: Text = Field(default="", max_length=1024, description="why (audited)")


class DeploymentIn(BaseModel):
    model: Text
    version: int = Version
    devices: list[Text] | None = Field(default=None, description="device ids (or all=true)")
    all: bool = Field(default=False, description="every enrolled device")
    mode: Mode = Mode.FULL
    share: float = Field(
        default=0.0, ge=0.0, le=1.0, description="candidate share, in (0, 1] for split/shadow"
    )
    slo: dict[str, float] = Field(
        default_factory=dict, description='the device guard\'s SLO, e.g. {"p99_ms": 50}'
    )
    ticket: Text | None = None


class RollbackIn(BaseModel):
    model: Text
    devices: list[Text] | None = None
    all: bool = False
    ticket: Text | None = None


class ModelSafetyIn(BaseModel):
    safety_classified: bool = Field(
        description="rollouts of a safety-classified model need a change ticket and a "
        "second person's approval (approver role)"
    )
    ticket: Text | None = Field(default=None, max_length=128)


class RolloutActionIn(BaseModel):
    reason: Text | None = Field(default=None, max_length=2000, description="why (audited)")
    ticket: Text | None = Field(default=None, max_length=128, description="change ticket")


# -- responses -----------------------------------------------------------------------------


class HealthOut(_Out):
    status: Literal["ok"]
    version: str


class WhoAmIOut(_Out):
    subject: str
    role: Role
    device_id: str | None = Field(description="set only for device tokens")


class TokenOut(_Out):
    token: str = Field(description="shown only in this answer")
    role: Role
    subject: str


class AssignmentOut(_Out):
    model: str
    production: int
    candidate: int | None
    previous: int | None
    mode: Mode
    share: float
    slo: dict[str, float]
    rollout_id: str | None


class DesiredStateOut(_Out):
    serial: int
    sha256: str
    length: int
    issued_at: str | None


class DeviceTelemetryOut(_Out):
    last_at: str | None = Field(description="hub time of the device's last telemetry batch")
    lag_s: float | None = Field(description="hub now minus the newest window closed_at received")
    buffered: int = Field(description="records the device reported still buffered")
    evicted_total: int = Field(description="records the device's buffer evicted in total")
    clock_skew_s: float = Field(description="hub time minus the last batch's sent_at")
    skew_flagged: bool = Field(description="|clock_skew_s| > 300")
    highest_seq: int


class DeviceOut(_Out):
    id: str
    site: str
    tags: list[str]
    created_at: str | None
    last_seen: str | None
    report: dict[str, Any] | None = Field(description="the device's last check-in, as sent")
    assignments: list[AssignmentOut]
    desired_state: DesiredStateOut | None
    telemetry: DeviceTelemetryOut | None = Field(
        default=None, description="the device's telemetry stream; null before its first batch"
    )


class DeviceWithTokenOut(DeviceOut):
    token: str = Field(description="the device's token, shown only in this answer")


class TufRepoVersionsOut(_Out):
    root: int
    timestamp: int


class TufVersionsOut(_Out):
    catalog: TufRepoVersionsOut
    director: TufRepoVersionsOut = Field(
        description="the director's shared root and this device's own timestamp"
    )


class ReportOut(_Out):
    status: Literal["recorded"]
    applied_rollbacks: list[str] = Field(
        default_factory=list, description="ids of the report's rollbacks the hub has applied"
    )
    tuf: TufVersionsOut | None = Field(
        default=None,
        description="current TUF versions: an agent holding exactly these (and not close to "
        "expiry) skips its TUF refresh (issue 8)",
    )


class BlobOut(_Out):
    sha256: str
    length: int


class VersionDeploymentOut(_Out):
    device_id: str
    role: Literal["production", "candidate"]
    mode: Mode
    share: float
    rollout_id: str | None


class VersionOut(_Out):
    model: str
    version: int
    sha256: str
    length: int
    manifest_sha256: str
    manifest_length: int
    opset: int
    ir_version: int
    schema_: dict[str, Any] = Field(alias="schema", description="input/output tensor schema")
    lineage: dict[str, Any]
    smoke_vectors: int
    created_at: str | None
    created_by: str
    published: bool
    revoked: bool
    model_path: str
    manifest_path: str
    deployments: list[VersionDeploymentOut]


class ModelSummaryOut(_Out):
    name: str
    description: str
    created_at: str | None
    latest_version: int | None
    versions: int = Field(description="how many versions")
    safety_classified: bool = False


class ModelOut(_Out):
    name: str
    description: str
    created_at: str | None
    created_by: str
    safety_classified: bool = False
    latest_version: int | None
    versions: list[VersionOut]


class DeviceChangeOut(_Out):
    device_id: str
    production: int
    candidate: int | None
    mode: Mode
    share: float
    serial: int
    desired_state_sha256: str
    desired_state_length: int


class DeploymentOut(_Out):
    model: str
    version: int
    mode: Mode
    share: float
    slo: dict[str, float]
    rollout_id: str
    devices: list[DeviceChangeOut]


class RollbackOut(_Out):
    model: str
    rollout_id: str
    devices: list[DeviceChangeOut]


class AuditEntryOut(_Out):
    seq: int
    at: str | None
    actor: str
    action: str
    subject: str
    ticket: str | None
    details: dict[str, Any] | None
    prev_hash: str
    hash: str


class AuditPageOut(_Out):
    entries: list[AuditEntryOut]
    next_before_seq: int | None = Field(
        None, description="pass as before_seq for the next (older) page; null on the last"
    )
    next_after_seq: int | None = Field(
        None, description="pass as after_seq for the next (newer) page; null on the last"
    )


class AuditHeadOut(_Out):
    seq: int
    hash: str


class AuditProblemOut(_Out):
    seq: int
    kind: Literal["edited", "inserted", "deleted", "truncated", "head", "rolled-back"]
    detail: str


class AuditVerifyOut(_Out):
    ok: bool
    entries: int = Field(description="entries checked")
    head: AuditHeadOut = Field(description="the recorded head (else the last entry checked)")
    problem: AuditProblemOut | None
    keyid: str | None = Field(description="the audit key the head must be signed with")


class AuditCheckpointOut(_Out):
    seq: int
    hash: str
    at: str
    keyid: str | None
    signature: str | None


class AuditKeyOut(_Out):
    keytype: Literal["ed25519"]
    keyid: str
    public: str = Field(description="the raw public key, hex")


class AuditAnchorOut(_Out):
    checkpoint: AuditCheckpointOut | None
    public_key: AuditKeyOut | None
    witness: AuditCheckpointOut | None = Field(
        description="the newest head the hub checked, kept outside the database"
    )


class TelemetryIngestOut(_Out):
    stored: int = Field(description="records stored now")
    duplicates: int = Field(description="records the hub already had (not stored again)")
    acked_through: int = Field(description="the batch's highest seq")
    status: Literal["recorded"]


class SummaryOut(_Out):
    windows: int = Field(description="windows merged (a roll-up counts its windows)")
    requests: dict[str, int]
    devices: int = Field(description="distinct devices the windows came from")
    error_rate: float | None = Field(description="(server_error + timeout) / requests")
    latency_p50_s: float | None
    latency_p99_s: float | None
    sources: dict[str, int] = Field(description="raw windows, roll-ups, roll-ups left out")
    partial: bool = Field(description="roll-ups in the range were left out (tag/device filter)")
    query: dict[str, Any]


class RolloutSummaryOut(_Out):
    id: str
    model: str
    version: int
    state: RolloutState
    stage_name: str | None = Field(description="the current stage; null before the first")
    stage_index: int = Field(description="index of the current stage, -1 before the first")
    stages: int = Field(description="how many stages (blast-radius overflow included)")
    devices_total: int
    created_at: str | None
    updated_at: str | None


class RolloutStageOut(_Out):
    index: int
    name: str
    percent: float
    mode: Mode
    share: float
    started_at: str | None
    soak_s: float
    soak_left_s: float | None = Field(
        description="seconds of soak left (0 once over; null when the rollout has ended)"
    )


class RolloutDevicesOut(_Out):
    total: int
    waiting: int = Field(description="their stage has not started")
    assigned: int = Field(description="the version is assigned to them")
    running: int = Field(description="their last report says they serve the version")
    rolled_back: int = Field(description="the rollout or their own guard took it back")
    offline: int = Field(description="not seen for 10 minutes")


class GateResultOut(_Out):
    metric: str
    value: float | None
    control: float | None
    limit: float | None
    devices: int
    samples: int
    verdict: str = Field(description="pass | hold | bad | fail")
    streak: int
    reason: str


class RolloutTransitionOut(_Out):
    at: str | None
    actor: str
    action: str
    state: RolloutState
    stage: int
    reason: str
    ticket: str | None


class RolloutOut(RolloutSummaryOut):
    plan: dict[str, Any] = Field(description="the plan, RolloutPlan.to_dict() shape")
    from_version: int | None = Field(description="the control group's production version")
    reason: str
    ticket: str | None
    created_by: str
    approved_by: str | None
    approved_at: str | None
    completed_at: str | None
    stage: RolloutStageOut | None
    devices: RolloutDevicesOut
    gates: list[GateResultOut] = Field(description="the current stage's last evaluation")
    verdict: str | None = Field(description="that evaluation's verdict")
    evaluated_at: str | None
    history: list[RolloutTransitionOut] = Field(description="the last 20 transitions, oldest first")


class GateEvaluationOut(_Out):
    id: int
    rollout_id: str
    stage: int
    stage_name: str | None
    evaluated_at: str | None
    verdict: str
    evidence: dict[str, Any] = Field(
        description="evaluation (verdict, results), stats (the stage's and the control's "
        "merged telemetry), streaks_in, since, until, from_version"
    )

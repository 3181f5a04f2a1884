"""The package manifest: the signed description of one model version.

JSON; covered by TUF as a target file of its own, next to the ONNX artefact. Unknown
fields are kept on a round trip so older agents can carry newer manifests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelfleet.catalog.schema import (
    ModelSchema,
    OutputDecision,
    decisions_from_dict,
    decisions_to_dict,
    infer_decisions,
)
from modelfleet.errors import InvalidInputError
from modelfleet.packaging.reference import PackageProfile
from modelfleet.packaging.smoke import SmokeVector

__all__ = ["MANIFEST_FORMAT", "PackageManifest"]

MANIFEST_FORMAT = "modelfleet.package/v1"
_KNOWN = {
    "format",
    "name",
    "version",
    "sha256",
    "length",
    "schema",
    "opset",
    "ir_version",
    "runtime",
    "smoke",
    "created_at",
    "lineage",
    "decisions",
    "reference_profile",
    "anomaly_scorer",
}


@dataclass(frozen=True)
class PackageManifest:
    """Everything a device needs to check a model before it serves it.

    Attributes:
        name: model name.
        version: immutable version number (1, 2, ...).
        sha256: hex digest of the canonical ONNX artefact.
        length: size of the artefact in bytes.
        schema: input/output tensors read from the graph.
        opset: default-domain ONNX opset the graph needs.
        smoke: smoke vectors recorded at registration.
        runtime: the runtime family the package targets.
        decisions: what each output decides (when two versions disagree), keyed by output
            name; written as ``"decisions"`` when not empty. Manifests from before issue 6
            have none: use :meth:`effective_decisions`.
        reference_profile: the drift reference profile as stored (issue 9), read with
            :meth:`package_profile`; None when the version was registered without one.
            Kept as the signed JSON so a manifest with a newer profile format still loads
            (the model serves; drift is not counted).
        anomaly_scorer: the optional anomaly scorer as stored (issue 9; its ONNX bytes,
            digest and threshold, :class:`~modelfleet.packaging.anomaly.AnomalyScorerSpec`),
            None when the version has none.
    """

    name: str
    version: int
    sha256: str
    length: int
    schema: ModelSchema
    opset: int
    smoke: tuple[SmokeVector, ...]
    ir_version: int = 0
    runtime: str = "onnxruntime"
    created_at: str = ""
    lineage: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    decisions: Mapping[str, OutputDecision] = field(default_factory=dict)
    reference_profile: Mapping[str, Any] | None = None
    anomaly_scorer: Mapping[str, Any] | None = None

    def package_profile(self) -> PackageProfile | None:
        """The reference profile and its tensor layout, checked against the schema; None
        when the manifest has none.

        Raises:
            InvalidInputError: the profile is malformed, of a newer format, or does not
                fit the model's tensors.
        """
        if self.reference_profile is None:
            return None
        out = PackageProfile.from_dict(self.reference_profile)
        out.check_schema(self.schema)
        return out

    def effective_decisions(self) -> dict[str, OutputDecision]:
        """Every output's decision: the declared ones, the rest inferred from the schema."""
        return infer_decisions(self.schema, self.decisions)

    def to_dict(self) -> dict[str, Any]:
        decisions: dict[str, Any] = {}
        if self.decisions:
            decisions["decisions"] = decisions_to_dict(self.decisions)
        if self.reference_profile is not None:
            decisions["reference_profile"] = dict(self.reference_profile)
        if self.anomaly_scorer is not None:
            decisions["anomaly_scorer"] = dict(self.anomaly_scorer)
        return {
            **self.extra,
            **decisions,
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "length": self.length,
            "schema": self.schema.to_dict(),
            "opset": self.opset,
            "ir_version": self.ir_version,
            "runtime": self.runtime,
            "created_at": self.created_at,
            "lineage": self.lineage,
            "smoke": [v.to_dict() for v in self.smoke],
        }

    def to_json(self) -> bytes:
        """Canonical bytes (sorted keys) for signing and storing."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PackageManifest:
        """Parse a manifest dict.

        Raises:
            InvalidInputError: a required field is missing or malformed.
        """
        fmt = data.get("format")
        if fmt != MANIFEST_FORMAT:
            raise InvalidInputError(f"unsupported manifest format {fmt!r}")
        try:
            return cls(
                name=str(data["name"]),
                version=int(data["version"]),
                sha256=str(data["sha256"]),
                length=int(data["length"]),
                schema=ModelSchema.from_dict(data["schema"]),
                opset=int(data["opset"]),
                smoke=tuple(SmokeVector.from_dict(v) for v in data.get("smoke", [])),
                ir_version=int(data.get("ir_version", 0)),
                runtime=str(data.get("runtime", "onnxruntime")),
                created_at=str(data.get("created_at", "")),
                lineage=dict(data.get("lineage") or {}),
                decisions=decisions_from_dict(data.get("decisions") or {}),
                reference_profile=_profile_field(data.get("reference_profile")),
                anomaly_scorer=_profile_field(data.get("anomaly_scorer"), "anomaly_scorer"),
                extra={k: v for k, v in data.items() if k not in _KNOWN},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidInputError(f"malformed package manifest: {e!r}") from e

    @classmethod
    def from_json(cls, raw: bytes) -> PackageManifest:
        """Parse manifest bytes (see :meth:`from_dict`)."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise InvalidInputError(f"package manifest is not JSON: {e}") from e
        if not isinstance(data, dict):
            raise InvalidInputError("package manifest is not a JSON object")
        return cls.from_dict(data)


def _profile_field(value: Any, what: str = "reference_profile") -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInputError(f"the manifest's {what} must be an object")
    return value

"""Build a package manifest from ONNX bytes: check, read schema, record smoke vectors."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from modelfleet.catalog.schema import OutputDecision, infer_decisions
from modelfleet.hashing import sha256_bytes
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.packaging.onnx_model import inspect_onnx, load_session
from modelfleet.packaging.reference import PackageProfile
from modelfleet.packaging.smoke import (
    check_smoke,
    generate_inputs,
    inputs_from_sample,
    record_smoke_vectors,
)

__all__ = ["build_manifest"]


def build_manifest(
    name: str,
    version: int,
    model: bytes,
    sample_input: np.ndarray | None = None,
    lineage: dict[str, Any] | None = None,
    created_at: datetime | None = None,
    decisions: Mapping[str, OutputDecision] | None = None,
    reference_profile: Mapping[str, Any] | None = None,
    anomaly_scorer: Mapping[str, Any] | None = None,
) -> PackageManifest:
    """Check ``model`` and describe it as version ``version`` of ``name``.

    Smoke vectors come from the rows of ``sample_input`` when given, otherwise from
    deterministic inputs generated from the schema; their outputs are recorded with
    ONNX Runtime, then replayed once to make sure the model is deterministic.

    Every output gets a decision (what a shadow comparison judges): ``decisions`` where it
    names the output, else inferred from the schema (integer/BYTES/BOOL: label; a
    ``[batch, k > 1]`` float named like prob/score/logit: argmax; other floats: regression
    with rtol 1e-3, atol 1e-6).

    ``reference_profile`` (a :meth:`PackageProfile.to_dict
    <modelfleet.packaging.reference.PackageProfile.to_dict>`, built by the SDK from the
    reference rows) is checked (format, tensors against the schema) and stored as the
    manifest's ``"reference_profile"``; None: drift will not be computed for the version.

    ``anomaly_scorer`` (an :meth:`AnomalyScorerSpec.to_dict
    <modelfleet.packaging.anomaly.AnomalyScorerSpec.to_dict>`) is checked (digest, and that
    it loads and fits the model's input) and stored as the manifest's ``"anomaly_scorer"``.

    Raises:
        InvalidModelError: the bytes are not a loadable ONNX model.
        InvalidInputError: the sample input does not fit the model, ``decisions`` names
            an output the model does not have, or the reference profile is malformed or
            names tensors the model does not have.
        SmokeTestError: the model does not reproduce its own outputs.
    """
    info = inspect_onnx(model)
    if anomaly_scorer is not None:
        from modelfleet.packaging.anomaly import AnomalyScorerSpec, build_scorer_spec

        given = AnomalyScorerSpec.from_dict(anomaly_scorer)
        build_scorer_spec(given.onnx, info.schema, output=given.output)
    if reference_profile is not None:
        PackageProfile.from_dict(reference_profile).check_schema(info.schema)
    all_decisions = infer_decisions(info.schema, decisions)
    session = load_session(model)
    if sample_input is not None:
        input_sets = inputs_from_sample(info.schema, sample_input)
    else:
        input_sets = generate_inputs(info.schema)
    vectors = record_smoke_vectors(session, info.schema, input_sets)
    check_smoke(session, vectors)
    return PackageManifest(
        name=name,
        version=version,
        sha256=sha256_bytes(model),
        length=len(model),
        schema=info.schema,
        opset=info.opset,
        ir_version=info.ir_version,
        smoke=tuple(vectors),
        created_at=(created_at or datetime.now(UTC)).replace(microsecond=0).isoformat(),
        lineage={"producer": info.producer, **(lineage or {})},
        decisions=all_decisions,
        reference_profile=None if reference_profile is None else dict(reference_profile),
        anomaly_scorer=None if anomaly_scorer is None else dict(anomaly_scorer),
    )

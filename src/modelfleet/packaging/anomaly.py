"""The optional anomaly scorer of a package (issue 9): an ONNX model beside the model.

The scorer takes the model's input and gives one score per row (for example a
scikit-learn ``IsolationForest`` exported with skl2onnx: its ``scores`` output is the
``decision_function``, *lower* is more anomalous). It travels **inside the signed
manifest**, as ``"anomaly_scorer"``::

    {"format": "modelfleet.anomaly/v1", "sha256": HEX, "length": N, "onnx_base64": "...",
     "input": "X", "output": "scores", "threshold": 0.0, "higher_is_anomalous": false}

so it is covered by the manifest's TUF signature and length, and arrives, installs and is
rolled back with the version it belongs to: no third target per version (ADR 0020). The
agent checks ``sha256`` and ``length`` against the decoded bytes before it loads them.
Scores are read as *oriented* scores, higher = more anomalous (``-score`` when
``higher_is_anomalous`` is false); a row is anomalous when its oriented score is above the
oriented ``threshold``.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from modelfleet.catalog.schema import ModelSchema
from modelfleet.errors import InvalidInputError
from modelfleet.hashing import sha256_bytes

__all__ = ["MAX_SCORER_BYTES", "SCORER_FORMAT", "AnomalyScorerSpec", "build_scorer_spec"]

SCORER_FORMAT: Final = "modelfleet.anomaly/v1"
#: Largest scorer accepted (it rides in the manifest every device downloads).
MAX_SCORER_BYTES: Final = 8 * 1024 * 1024


@dataclass(frozen=True)
class AnomalyScorerSpec:
    """A package's anomaly scorer as its manifest describes it.

    Attributes:
        onnx: the scorer's ONNX bytes (checked against ``sha256`` and ``length``).
        sha256: their digest.
        input: the scorer's input name (fed the model's first input).
        output: the output holding one score per row.
        threshold: the raw score at which a row turns anomalous.
        higher_is_anomalous: whether a larger raw score is more anomalous.
    """

    onnx: bytes
    sha256: str
    input: str
    output: str
    threshold: float
    higher_is_anomalous: bool

    @property
    def sign(self) -> float:
        """Multiplies raw scores into oriented ones (higher = more anomalous)."""
        return 1.0 if self.higher_is_anomalous else -1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SCORER_FORMAT,
            "sha256": self.sha256,
            "length": len(self.onnx),
            "onnx_base64": base64.b64encode(self.onnx).decode("ascii"),
            "input": self.input,
            "output": self.output,
            "threshold": self.threshold,
            "higher_is_anomalous": self.higher_is_anomalous,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> AnomalyScorerSpec:
        """Parse and check a manifest's ``anomaly_scorer``.

        Raises:
            InvalidInputError: another format, bad base64, or bytes that do not match
                the signed digest or length.
        """
        if not isinstance(doc, Mapping) or doc.get("format") != SCORER_FORMAT:
            raise InvalidInputError(f"the anomaly scorer is not of format {SCORER_FORMAT!r}")
        try:
            onnx = base64.b64decode(str(doc["onnx_base64"]), validate=True)
            spec = cls(
                onnx=onnx,
                sha256=str(doc["sha256"]),
                input=str(doc["input"]),
                output=str(doc["output"]),
                threshold=float(doc["threshold"]),
                higher_is_anomalous=bool(doc["higher_is_anomalous"]),
            )
            length = int(doc["length"])
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise InvalidInputError(f"malformed anomaly scorer: {e!r}") from e
        if len(onnx) != length or sha256_bytes(onnx) != spec.sha256:
            raise InvalidInputError("the anomaly scorer's bytes do not match its signed digest")
        if not math.isfinite(spec.threshold):
            raise InvalidInputError("the anomaly scorer's threshold must be finite")
        return spec


def build_scorer_spec(
    onnx: bytes,
    model_schema: ModelSchema,
    *,
    output: str | None = None,
    threshold: float = 0.0,
    higher_is_anomalous: bool = False,
) -> AnomalyScorerSpec:
    """Check a scorer against the model it scores and describe it.

    Args:
        onnx: the scorer's ONNX bytes.
        model_schema: the model's schema (the scorer is fed its first input).
        output: the scores output (default: ``"scores"`` when there is one, else the only
            floating-point output).
        threshold: raw score from which a row is anomalous (IsolationForest: 0).
        higher_is_anomalous: False for IsolationForest's ``decision_function``.

    Raises:
        InvalidModelError: the bytes are not a loadable ONNX model.
        InvalidInputError: too large, not one input, no such output, an input whose
            feature width differs from the model's, or a threshold that is not finite.
    """
    from modelfleet.packaging.onnx_model import inspect_onnx

    if len(onnx) > MAX_SCORER_BYTES:
        raise InvalidInputError(f"the anomaly scorer exceeds {MAX_SCORER_BYTES} bytes")
    if not math.isfinite(threshold):
        raise InvalidInputError("the anomaly threshold must be a finite number")
    schema = inspect_onnx(onnx).schema
    if len(schema.inputs) != 1:
        raise InvalidInputError("the anomaly scorer must have exactly one input")
    model_input = model_schema.inputs[0]
    scorer_input = schema.inputs[0]
    if scorer_input.shape[1:] != model_input.shape[1:] and all(
        isinstance(d, int) and d > 0 for d in (*scorer_input.shape[1:], *model_input.shape[1:])
    ):
        raise InvalidInputError(
            f"the anomaly scorer's input {list(scorer_input.shape)} does not fit the model's "
            f"{model_input.name!r} {list(model_input.shape)}"
        )
    floats = [t.name for t in schema.outputs if t.datatype in ("FP16", "FP32", "FP64")]
    if output is None:
        output = "scores" if "scores" in floats else (floats[0] if len(floats) == 1 else None)
        if output is None:
            raise InvalidInputError(
                f"name the anomaly scorer's score output (--anomaly-output): one of {floats}"
            )
    elif output not in floats:
        raise InvalidInputError(f"the anomaly scorer has no floating-point output {output!r}")
    return AnomalyScorerSpec(
        onnx=onnx,
        sha256=sha256_bytes(onnx),
        input=scorer_input.name,
        output=output,
        threshold=float(threshold),
        higher_is_anomalous=higher_is_anomalous,
    )

"""Input/output schema of a model: tensor names, OIP datatypes and shapes; and what each
output decides (:class:`OutputDecision`), which says when two versions disagree.

A dimension of ``-1`` is variable (a symbolic or unknown dimension in the ONNX graph).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from modelfleet.errors import InvalidInputError

__all__ = [
    "DecisionKind",
    "ModelSchema",
    "OutputDecision",
    "TensorSpec",
    "decisions_from_dict",
    "decisions_to_dict",
    "infer_decision",
    "infer_decisions",
]

DecisionKind = Literal["label", "argmax", "regression", "ignore"]
_KINDS: Final[frozenset[str]] = frozenset(get_args(DecisionKind))
_FLOAT_TYPES: Final = frozenset({"FP16", "FP32", "FP64"})
_SCORE_WORDS: Final = ("prob", "score", "logit")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor of a model's signature."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))

    def accepts_shape(self, shape: Iterable[int]) -> bool:
        """True if a concrete ``shape`` fits this spec (same rank, fixed dims equal)."""
        shape = tuple(shape)
        if len(shape) != len(self.shape):
            return False
        return all(want in (-1, got) for want, got in zip(self.shape, shape, strict=True))


@dataclass(frozen=True, slots=True)
class ModelSchema:
    """The inputs and outputs of a model, in graph order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSchema:
        return cls(
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )

    def input(self, name: str) -> TensorSpec | None:
        """Return the input spec called ``name``, or None."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def compatible_with(self, other: ModelSchema) -> list[str]:
        """List the differences that would break callers of ``self`` if ``other`` replaced it.

        Returns:
            Human-readable problems; empty when ``other`` serves the same inputs
            and outputs (names and datatypes equal, ranks equal).
        """
        problems: list[str] = []
        for kind, mine, theirs in (
            ("input", self.inputs, other.inputs),
            ("output", self.outputs, other.outputs),
        ):
            by_name = {t.name: t for t in theirs}
            for spec in mine:
                got = by_name.get(spec.name)
                if got is None:
                    problems.append(f"{kind} {spec.name!r} is missing")
                elif got.datatype != spec.datatype:
                    problems.append(
                        f"{kind} {spec.name!r} datatype {got.datatype} != {spec.datatype}"
                    )
                elif len(got.shape) != len(spec.shape):
                    problems.append(
                        f"{kind} {spec.name!r} rank {len(got.shape)} != {len(spec.shape)}"
                    )
        return problems


@dataclass(frozen=True, slots=True)
class OutputDecision:
    """What one output decides, and so when two versions' values of it disagree.

    Attributes:
        kind: ``label``: values must be equal (class ids, strings, flags). ``argmax``: a
            ``[batch, k]`` score output; the top-1 class of each row must be equal, the
            scores themselves may move. ``regression``: values must agree within
            ``numpy.isclose(rtol, atol)``. ``ignore``: never compared.
        rtol: relative tolerance of a regression output.
        atol: absolute tolerance of a regression output.

    Raises:
        InvalidInputError: an unknown kind, or a negative or non-finite tolerance.
    """

    kind: DecisionKind
    rtol: float = 0.0
    atol: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidInputError(
                f"unknown output decision kind {self.kind!r}; expected one of {sorted(_KINDS)}"
            )
        for name, value in (("rtol", self.rtol), ("atol", self.atol)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"output decision {name} must be >= 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rtol": self.rtol, "atol": self.atol}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutputDecision:
        """Parse ``{"kind": ..., "rtol": ..., "atol": ...}`` (tolerances default to 0).

        Raises:
            InvalidInputError: not an object, or see the class.
        """
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"an output decision must be an object, got {data!r}")
        try:
            rtol, atol = float(data.get("rtol", 0.0)), float(data.get("atol", 0.0))
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"output decision tolerance is not a number: {e}") from e
        return cls(data.get("kind"), rtol, atol)  # type: ignore[arg-type]  # checked above


#: The decision inferred for a regression output (contract 6 of issue 6).
REGRESSION_DEFAULT: Final = OutputDecision("regression", rtol=1e-3, atol=1e-6)


def infer_decision(spec: TensorSpec) -> OutputDecision:
    """The decision an output makes, guessed from its datatype, shape and name.

    Integer, boolean and BYTES outputs are labels; a ``[batch, k > 1]`` floating-point output
    named like ``prob``/``score``/``logit`` is argmax; any other float is regression
    (rtol 1e-3, atol 1e-6).
    """
    if spec.datatype not in _FLOAT_TYPES:
        return OutputDecision("label")
    lowered = spec.name.lower()
    if len(spec.shape) == 2 and spec.shape[1] > 1 and any(word in lowered for word in _SCORE_WORDS):
        return OutputDecision("argmax")
    return REGRESSION_DEFAULT


def infer_decisions(
    schema: ModelSchema, declared: Mapping[str, OutputDecision] | None = None
) -> dict[str, OutputDecision]:
    """Every output's decision: ``declared`` where given, else :func:`infer_decision`.

    Returns:
        Output name -> decision, in graph order.

    Raises:
        InvalidInputError: ``declared`` names an output the schema does not have.
    """
    declared = declared or {}
    names = [spec.name for spec in schema.outputs]
    unknown = sorted(set(declared) - set(names))
    if unknown:
        raise InvalidInputError(
            f"decisions name unknown output(s) {unknown}; the model has {names}"
        )
    return {spec.name: declared.get(spec.name) or infer_decision(spec) for spec in schema.outputs}


def decisions_to_dict(decisions: Mapping[str, OutputDecision]) -> dict[str, dict[str, Any]]:
    """The manifest form: ``{"<output>": {"kind": ..., "rtol": ..., "atol": ...}}``."""
    return {name: d.to_dict() for name, d in decisions.items()}


def decisions_from_dict(data: Any) -> dict[str, OutputDecision]:
    """Inverse of :func:`decisions_to_dict`.

    Raises:
        InvalidInputError: not an object of output name -> decision object.
    """
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"'decisions' must be an object, got {type(data).__name__}")
    return {str(name): OutputDecision.from_dict(d) for name, d in data.items()}

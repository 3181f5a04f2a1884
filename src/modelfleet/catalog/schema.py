"""Input/output schema of a model: tensor names, OIP datatypes and shapes.

A dimension of ``-1`` is variable (a symbolic or unknown dimension in the ONNX graph).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelSchema", "TensorSpec"]


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

"""The runtime-neutral face of one loaded model version, and the runtime's settings.

Router, host and shadow mirror depend on :class:`Servable` only; ONNX Runtime is one
implementation (:class:`modelfleet.serving.runtime.LoadedModel`), tests use an in-memory one
(``tests/fakes_model.py``). This module imports no runtime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import numpy as np

from modelfleet.catalog.schema import ModelSchema, OutputDecision
from modelfleet.errors import ConfigError

__all__ = ["MAX_THREADS", "RuntimeSettings", "Servable"]

#: Upper bound of either thread count: a typo must not spawn a thousand threads on an edge box.
MAX_THREADS: Final = 256


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """How the runtime runs a model on this device.

    Attributes:
        providers: execution providers in priority order (ONNX Runtime names, e.g.
            ``"CUDAExecutionProvider"``). CPU fallback is explicit: list
            ``"CPUExecutionProvider"`` last to allow it. Unavailable names are refused at load.
        intra_op_threads: threads inside one operator; 1 suits small models, 0 lets the
            runtime choose (all cores).
        inter_op_threads: threads across independent operators (above 1: parallel
            execution); 0 lets the runtime choose.

    Raises:
        ConfigError: no provider, a repeated one, or a thread count outside [0, 256].
    """

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 1
    inter_op_threads: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.providers, tuple) or not self.providers:
            raise ConfigError("providers must be a non-empty tuple, e.g. ('CPUExecutionProvider',)")
        if len(set(self.providers)) != len(self.providers):
            raise ConfigError(f"execution providers repeat: {list(self.providers)}")
        for name, value in (
            ("intra_op_threads", self.intra_op_threads),
            ("inter_op_threads", self.inter_op_threads),
        ):
            if type(value) is not int or not 0 <= value <= MAX_THREADS:
                raise ConfigError(f"{name} must be an integer in [0, {MAX_THREADS}], got {value!r}")


@runtime_checkable
class Servable(Protocol):
    """One loaded model version that serving can route requests to.

    Implementations are immutable once loaded and safe to call from several threads.
    """

    @property
    def name(self) -> str:
        """Model name as clients address it."""
        ...

    @property
    def version(self) -> str:
        """Version string reported in responses."""
        ...

    @property
    def digest(self) -> str:
        """sha256 of the artefact, for status reports."""
        ...

    @property
    def schema(self) -> ModelSchema:
        """Inputs and outputs, in graph order."""
        ...

    @property
    def confidence_output(self) -> str | None:
        """A ``[batch, classes]`` probability output whose row maxima are the confidence the
        SLO guard watches, or None."""
        ...

    @property
    def decisions(self) -> Mapping[str, OutputDecision]:
        """What each output decides (every output has one): how shadow comparisons judge it."""
        ...

    def validate(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check request tensors against the schema; return what the runtime can take.

        Raises:
            InvalidTensorError: a missing or unknown input, a wrong datatype or shape.
        """
        ...

    def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Validate ``inputs`` and run the model.

        Args:
            inputs: request tensors by input name.
            outputs: names of the outputs wanted, in response order; None for all.

        Returns:
            The outputs by name, in the order asked for (graph order when None).

        Raises:
            InvalidTensorError: invalid inputs, or an unknown output name.
        """
        ...

    def warm_up(self) -> None:
        """Run once on a zero batch so that the first real request is not slow."""
        ...

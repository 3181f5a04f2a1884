"""One loaded ONNX model version: checks request tensors against its schema and runs it.

:class:`LoadedModel` is the ONNX Runtime implementation of
:class:`~modelfleet.serving.model.Servable`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import EPFail, InvalidArgument

from modelfleet.catalog.dtypes import DATATYPE_TO_NUMPY, datatype_of
from modelfleet.catalog.onnx_session import create_session, schema_of_session
from modelfleet.catalog.schema import ModelSchema, OutputDecision, TensorSpec, infer_decisions
from modelfleet.errors import InvalidTensorError
from modelfleet.serving.model import RuntimeSettings

__all__ = ["LoadedModel"]

#: Largest integer magnitude up to which every integer is exact in each float type
#: (2 ** significand bits).
_EXACT_INT_LIMIT: Final[dict[str, int]] = {"FP16": 2**11, "FP32": 2**24, "FP64": 2**53}


@dataclass(frozen=True, slots=True)
class _InputCheck:
    spec: TensorSpec
    dtype: np.dtype[Any]
    rank: int
    fixed: tuple[tuple[int, int], ...]  # (axis, size) of every fixed dimension
    cast_always: bool  # BYTES: bytes elements must become str for ONNX Runtime

    @classmethod
    def of(cls, spec: TensorSpec) -> _InputCheck:
        fixed = tuple((axis, size) for axis, size in enumerate(spec.shape) if size >= 0)
        dtype = DATATYPE_TO_NUMPY[spec.datatype]
        return cls(spec, dtype, len(spec.shape), fixed, spec.datatype == "BYTES")


_DEFAULT_SETTINGS: Final = RuntimeSettings()


def _binding_of(session: Any) -> Any | None:
    """The C++ session under ONNX Runtime's Python ``InferenceSession``, when usable.

    ``InferenceSession.run`` checks, per call, what :meth:`LoadedModel.validate` has already
    checked (every required input present) or what never applies here (OrtValue inputs,
    WebGPU graph capture), then calls ``session._sess.run(names, feed, run_options)``;
    calling that binding directly saves ~0.6 µs a request (issue 6). It is private API
    (pyproject bounds the ONNX Runtime version): None, and so the public ``run``, when it
    is missing, is not callable, or graph capture is on.
    """
    binding = getattr(session, "_sess", None)
    if binding is None or not callable(getattr(binding, "run", None)):
        return None
    capture = getattr(binding, "is_webgpu_graph_capture_enabled", None)
    try:
        if capture is not None and capture():
            return None
    except Exception:  # an unexpected binding: take the public path
        return None
    return binding


def _convert(
    arr: np.ndarray, spec: TensorSpec, dtype: np.dtype[Any], allow_cast: bool
) -> np.ndarray:
    """Make ``arr`` what ONNX Runtime takes for ``spec``, or raise InvalidTensorError.

    BYTES become ``str`` object arrays. Any other datatype must match exactly, as Triton
    requires (issue 6, defect 6), unless the model allows casting (see :func:`_cast`).
    """
    got = datatype_of(arr)
    if spec.datatype == "BYTES":
        if got == "BYTES":
            return _as_str_array(arr, spec.name)
    elif allow_cast:
        return _cast(arr, spec, dtype)
    raise InvalidTensorError(
        f"input {spec.name!r}: expected datatype {spec.datatype}, got {got} "
        "(datatypes must match; this model does not cast)"
    )


def _cast(arr: np.ndarray, spec: TensorSpec, dtype: np.dtype[Any]) -> np.ndarray:
    """Cast ``arr`` to ``dtype`` when no value can change, else raise InvalidTensorError."""
    got = datatype_of(arr)
    why = ""
    if arr.dtype.kind in "iu" and dtype.kind in "iu":
        if np.can_cast(arr.dtype, dtype, casting="safe"):
            return arr.astype(dtype)
        info = np.iinfo(dtype)
        if arr.size == 0 or (arr.min() >= info.min and arr.max() <= info.max):
            return arr.astype(dtype)
        why = f" (a value is outside the {spec.datatype} range)"
    elif arr.dtype.kind in "iu" and dtype.kind == "f":
        limit = _EXACT_INT_LIMIT[spec.datatype]
        if arr.size == 0 or (arr.min() >= -limit and arr.max() <= limit):
            return arr.astype(dtype)
        why = f" (a value is beyond what {spec.datatype} holds exactly)"
    elif arr.dtype.kind == "f" and dtype.kind == "f" and np.can_cast(arr.dtype, dtype, "safe"):
        return arr.astype(dtype)
    raise InvalidTensorError(
        f"input {spec.name!r}: expected datatype {spec.datatype}, got {got}{why}"
    )


def _shape_error(spec: TensorSpec, shape: tuple[int, ...]) -> InvalidTensorError:
    return InvalidTensorError(
        f"input {spec.name!r}: expected shape {list(spec.shape)} (-1 = any), got {list(shape)}"
    )


def _as_str_array(arr: np.ndarray, name: str) -> np.ndarray:
    """ORT string tensors need Python ``str`` elements; ``bytes`` would be ``str()``-ed."""
    if arr.dtype.kind == "U":
        return arr
    out = np.empty(arr.shape, dtype=object)
    flat = out.reshape(-1)
    for i, v in enumerate(arr.reshape(-1).tolist()):
        if isinstance(v, bytes):
            try:
                flat[i] = v.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidTensorError(f"input {name!r}: element {i} is not UTF-8") from None
        else:
            flat[i] = str(v)
    return out


class LoadedModel:
    """An ONNX Runtime session for one model version, with its schema.

    Instances are immutable after :meth:`load` (but for dropping to the public ``run`` after
    an execution provider failure) and safe to share between threads (ONNX Runtime sessions
    allow concurrent ``run`` calls).
    """

    __slots__ = (
        "_allow_cast",
        "_binding",
        "_checks",
        "_decisions",
        "_output_names",
        "_output_set",
        "_session",
        "confidence_output",
        "digest",
        "name",
        "schema",
        "version",
    )

    def __init__(
        self,
        name: str,
        version: str,
        digest: str,
        session: Any,
        schema: ModelSchema,
        decisions: Mapping[str, OutputDecision] | None = None,
        *,
        allow_cast: bool = False,
    ) -> None:
        """Wrap a session (see :meth:`load` for the arguments).

        Raises:
            InvalidInputError: ``decisions`` names an output the schema does not have.
        """
        self.name = name
        self.version = version
        self.digest = digest
        self.schema = schema
        self._session = session
        self._binding = _binding_of(session)
        self._decisions = MappingProxyType(infer_decisions(schema, decisions))
        self._allow_cast = allow_cast
        self._checks = {spec.name: _InputCheck.of(spec) for spec in schema.inputs}
        self._output_names = [spec.name for spec in schema.outputs]
        self._output_set = frozenset(self._output_names)
        #: A [batch, classes] floating-point output named like probabilities, if any:
        #: its row maxima are the top-class confidence the SLO guard watches.
        self.confidence_output: str | None = next(
            (
                spec.name
                for spec in schema.outputs
                if spec.datatype in ("FP16", "FP32", "FP64")
                and len(spec.shape) == 2
                and "prob" in spec.name.lower()
            ),
            None,
        )

    @classmethod
    def load(
        cls,
        name: str,
        version: str,
        model_path: Path,
        digest: str,
        settings: RuntimeSettings = _DEFAULT_SETTINGS,
        decisions: Mapping[str, OutputDecision] | None = None,
        *,
        allow_cast: bool = False,
    ) -> LoadedModel:
        """Load an ONNX file into an ONNX Runtime session.

        Args:
            name: model name as clients address it.
            version: version string reported in responses.
            model_path: the ``.onnx`` file.
            digest: sha256 of the file, kept for status reports.
            settings: execution providers and thread counts.
            decisions: the manifest's output decisions; outputs it does not name (all of
                them when None) get the decision inferred from the schema.
            allow_cast: accept request tensors of another datatype when every value
                survives the cast exactly (integers into floats or wider integers); off by
                default, as in Triton.

        Raises:
            ConfigError: an execution provider is unavailable or fails to initialise (the
                message lists the available ones).
            InvalidModelError: ONNX Runtime cannot load the file, or an input or output is
                not a tensor of a supported type.
            InvalidInputError: ``decisions`` names an output the model does not have.
        """
        session = create_session(
            str(model_path),
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
        )
        schema = schema_of_session(session)
        return cls(name, version, digest, session, schema, decisions, allow_cast=allow_cast)

    @property
    def decisions(self) -> Mapping[str, OutputDecision]:
        """What each output decides (every output has an entry), read-only."""
        return self._decisions

    @property
    def allow_cast(self) -> bool:
        """Whether request tensors of another datatype are cast when no value changes."""
        return self._allow_cast

    def __repr__(self) -> str:
        return f"LoadedModel({self.name!r}, version={self.version!r})"

    def validate(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check request tensors against the schema and return what ONNX Runtime can take.

        Datatypes must match the schema exactly unless the model was loaded with
        ``allow_cast`` (then integer tensors are cast to a float or wider integer input when
        every value survives exactly); BYTES become ``str`` object arrays.

        Raises:
            InvalidTensorError: an input is missing or unknown, has the wrong datatype, or
                its shape does not fit the schema (rank or a fixed dimension).
        """
        checks = self._checks
        feed: dict[str, np.ndarray] = {}
        for name, arr in inputs.items():
            check = checks.get(name)
            if check is None:
                raise InvalidTensorError(
                    f"unknown input {name!r}; the model takes {sorted(checks)}"
                )
            dtype = arr.dtype
            # ``is`` first: builtin dtypes are singletons and ``!=`` costs a visible 0.2 µs
            if check.cast_always or (dtype is not check.dtype and dtype != check.dtype):
                arr = _convert(arr, check.spec, check.dtype, self._allow_cast)
            shape = arr.shape
            if len(shape) != check.rank:
                raise _shape_error(check.spec, shape)
            for axis, size in check.fixed:
                if shape[axis] != size:
                    raise _shape_error(check.spec, shape)
            feed[name] = arr
        if len(feed) != len(checks):
            missing = sorted(set(checks) - set(feed))
            raise InvalidTensorError(f"missing input {missing[0]!r}")
        return feed

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
            InvalidTensorError: invalid inputs (see :meth:`validate`), an unknown output
                name, or ONNX Runtime refusing the inputs.
        """
        feed = self.validate(inputs)
        if outputs is None:
            names = self._output_names
        else:
            names = list(outputs)
            for name in names:
                if name not in self._output_set:
                    raise InvalidTensorError(
                        f"unknown output {name!r}; the model has {self._output_names}"
                    )
        binding = self._binding
        try:
            if binding is None:
                results = self._session.run(names, feed)
            else:
                try:
                    # ``or``: the public run takes an empty list to mean every output
                    results = binding.run(names or self._output_names, feed, None)
                except EPFail:
                    # The provider failed: the public run owns the CPU fallback (it replaces
                    # the binding), so use it from now on.
                    self._binding = None
                    results = self._session.run(names, feed)
        except InvalidArgument as e:  # e.g. a dimension the graph fixes deeper inside
            message = str(e).replace("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ", "")
            raise InvalidTensorError(message.strip().splitlines()[0]) from e
        return dict(zip(names, results, strict=True))

    def warm_up(self) -> None:
        """Run the model once on a zero batch of one, so the first real request is not slow.

        Raises:
            Exception: whatever ONNX Runtime raises when the model cannot run on zeros.
        """
        feed: dict[str, np.ndarray] = {}
        for spec in self.schema.inputs:
            shape = tuple(d if d >= 0 else 1 for d in spec.shape)
            if spec.datatype == "BYTES":
                arr = np.full(shape, "", dtype=object)
            else:
                arr = np.zeros(shape, dtype=DATATYPE_TO_NUMPY[spec.datatype])
            feed[spec.name] = arr
        self._session.run(self._output_names, feed)

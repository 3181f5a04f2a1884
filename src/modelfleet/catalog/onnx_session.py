"""ONNX Runtime sessions and the schema read from them, in the one place both sides use.

Registration (``packaging``: smoke vectors) and serving (``serving.runtime``) both create
sessions; they must not import each other, so the session is made here. ``onnxruntime`` is
imported when a session is made, never the ``onnx`` package: the agent runs without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from modelfleet.catalog.dtypes import ONNX_TYPE_TO_DATATYPE
from modelfleet.catalog.schema import ModelSchema, TensorSpec
from modelfleet.errors import ConfigError, InvalidModelError

__all__ = [
    "CPU_PROVIDER",
    "available_providers",
    "check_providers",
    "create_session",
    "max_supported_opset",
    "schema_of_session",
]

CPU_PROVIDER: Final = "CPUExecutionProvider"


def available_providers() -> list[str]:
    """The execution providers this ONNX Runtime build offers, in its priority order."""
    import onnxruntime as ort

    providers: list[str] = ort.get_available_providers()
    return providers


def max_supported_opset() -> int:
    """Highest default-domain ONNX opset this ONNX Runtime implements, read from the operator
    schemas it bundles (every opset changes at least one operator), without the ``onnx``
    package."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    schemas = ort_state.get_all_operator_schema()
    return max(int(s.since_version) for s in schemas if s.domain in ("", "ai.onnx"))


def check_providers(providers: Sequence[str]) -> None:
    """Refuse an empty, repeated or unavailable provider list.

    Raises:
        ConfigError: naming the provider and the ones this ONNX Runtime offers.
    """
    if not providers:
        raise ConfigError("no execution provider given; e.g. ('CPUExecutionProvider',)")
    if len(set(providers)) != len(providers):
        raise ConfigError(f"execution providers repeat: {list(providers)}")
    available = available_providers()
    for provider in providers:
        if provider not in available:
            raise ConfigError(
                f"execution provider {provider!r} is not available in this ONNX Runtime; "
                f"available: {available}"
            )


def create_session(
    model: bytes | str,
    *,
    providers: Sequence[str] = (CPU_PROVIDER,),
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
) -> Any:
    """Create an ONNX Runtime session from model bytes or a file path.

    CPU fallback is explicit: when ``providers`` does not list ``CPUExecutionProvider``,
    ONNX Runtime is told not to place unsupported nodes on the CPU (the session then fails
    to load rather than run somewhere it was not asked to). ``inter_op_threads`` above 1
    switches the session to parallel execution, the only mode that uses them.

    Args:
        model: serialized ONNX bytes or the path of an ``.onnx`` file.
        providers: execution providers in priority order.
        intra_op_threads: threads inside one operator (0: ONNX Runtime's default).
        inter_op_threads: threads across independent operators (0: default).

    Raises:
        ConfigError: a provider is unknown, unavailable, or could not be initialised.
        InvalidModelError: ONNX Runtime cannot load the model.
    """
    import onnxruntime as ort

    check_providers(providers)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    if inter_op_threads != 1:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if CPU_PROVIDER not in providers:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model, options, providers=list(providers))
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
        text = str(e).strip()
        first_line = text.splitlines()[0] if text else type(e).__name__
        hint = (
            f" (CPU fallback is off: add {CPU_PROVIDER!r} to the providers to allow it)"
            if CPU_PROVIDER not in providers
            else ""
        )
        raise InvalidModelError(f"ONNX Runtime cannot load the model: {first_line}{hint}") from e
    # ORT drops a provider that fails to initialise (e.g. no GPU driver) with only a warning.
    missing = [p for p in providers if p not in session.get_providers()]
    if missing:
        raise ConfigError(
            f"execution provider(s) {missing} could not be initialised; the session got "
            f"{session.get_providers()}"
        )
    return session


def _spec(arg: Any, kind: str) -> TensorSpec:
    datatype = ONNX_TYPE_TO_DATATYPE.get(arg.type)
    if datatype is None:
        hint = " (convert scikit-learn classifiers with zipmap=False)" if "map" in arg.type else ""
        raise InvalidModelError(
            f"{kind} {arg.name!r} has type {arg.type}; modelfleet serves tensors only{hint}"
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


def schema_of_session(session: Any) -> ModelSchema:
    """Read the input/output schema of an ONNX Runtime session.

    Raises:
        InvalidModelError: an input or output is not a tensor of a supported type.
    """
    return ModelSchema(
        tuple(_spec(a, "input") for a in session.get_inputs()),
        tuple(_spec(a, "output") for a in session.get_outputs()),
    )

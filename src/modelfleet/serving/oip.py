"""Codec of the Open Inference Protocol v2 REST bodies, with Triton's binary tensor extension.

Pure functions: bytes in, numpy arrays out, and back. No model or HTTP knowledge beyond the
``Inference-Header-Content-Length`` header value, which the web adapter passes in.

Sources: KServe ``docs/predict-api/v2/required_api.md`` (bodies) and Triton
``docs/protocol/extension_binary_data.md`` (binary blobs follow the JSON header, in the order
of the tensors in the JSON; BYTES elements carry a 4-byte little-endian length prefix; BOOL is
one byte per element).
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

import numpy as np
import orjson

from modelfleet.catalog.schema import TensorSpec
from modelfleet.errors import InvalidTensorError
from modelfleet.serving.dtypes import DATATYPE_TO_NUMPY, NUMPY_TO_DATATYPE, datatype_of

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "RequestedOutput",
    "decode_infer_request",
    "encode_infer_body",
    "encode_infer_response",
]

#: Name of the header that gives the size of the JSON part of a binary body (lower case, as
#: ASGI servers deliver header names).
HEADER_LENGTH: Final = "inference-header-content-length"

_LE_DTYPE: Final[dict[str, np.dtype[Any]]] = {
    name: dt.newbyteorder("<") for name, dt in DATATYPE_TO_NUMPY.items() if name != "BYTES"
}
_UNSUPPORTED_PARAMETERS: Final = (
    "shared_memory_region",
    "shared_memory_byte_size",
    "shared_memory_offset",
)
_LENGTH_PREFIX: Final = struct.Struct("<I")
#: The binary part of a body that has none (shared: a memoryview of bytes is read-only).
_NO_BINARY: Final = memoryview(b"")
_NATIVE_IS_LE: Final = sys.byteorder == "little"
_JSON_KINDS: Final[dict[str, str]] = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}
#: numpy's limit on the number of dimensions (``numpy.ndarray``: 64 since numpy 2.0).
MAX_DIMS: Final = 64
#: What numpy raises when it cannot build an array of a shape (too many or too large
#: dimensions, no memory) and what a nested BYTES ``data`` list too deep to walk raises.
_CONSTRUCTION_ERRORS: Final = (ValueError, OverflowError, MemoryError, RecursionError, TypeError)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """One entry of the request's ``outputs`` array.

    ``binary_data`` is the per-output ``parameters.binary_data`` flag, or None when absent.
    """

    name: str
    binary_data: bool | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request (not frozen: built once per request, and a frozen
    dataclass's ``__init__`` costs a visible share of a small model's request).

    ``inputs`` keep the order of the JSON ``inputs`` array. ``outputs`` is empty when the
    caller asked for all outputs.
    """

    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] = ()
    id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    binary_data_output: bool = False

    @property
    def output_names(self) -> list[str] | None:
        """Names of the requested outputs, or None for all of them."""
        return [o.name for o in self.outputs] if self.outputs else None

    def binary_for(self, name: str) -> bool:
        """Whether the output ``name`` goes back as binary data.

        A per-output ``binary_data`` flag wins over the request's ``binary_data_output``.
        """
        for out in self.outputs:
            if out.name == name and out.binary_data is not None:
                return out.binary_data
        return self.binary_data_output


def _fail(message: str) -> InvalidTensorError:
    return InvalidTensorError(message)


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(f"{where}: 'parameters' must be a JSON object")
    for key in _UNSUPPORTED_PARAMETERS:
        if key in raw:
            raise _fail(f"{where}: the shared-memory extension is not supported ({key!r})")
    return raw


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if type(raw) is list:
        if len(raw) > MAX_DIMS:
            raise _fail(
                f"input {name!r}: 'shape' has {len(raw)} dimensions; at most {MAX_DIMS} are "
                "supported"
            )
        for dim in raw:
            if type(dim) is not int or dim < 0:
                break
        else:
            return tuple(raw)
    raise _fail(f"input {name!r}: 'shape' must be a list of non-negative integers, got {raw!r}")


def _unbuildable(name: str, shape: tuple[int, ...], error: BaseException) -> InvalidTensorError:
    # Issue 6, defect 11: numpy's refusal is the caller's mistake (400), not a server error.
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _fail(f"input {name!r}: no tensor of shape {list(shape)} can be built: {reason}")


@dataclass(frozen=True, slots=True)
class _JsonDatatype:
    """How JSON ``data`` becomes a tensor of one numeric (or BOOL) datatype.

    Attributes:
        dtype: the tensor's dtype.
        kinds: the numpy kinds ``np.array(data)`` may infer for it (floats take integers;
            integers take integral floats, checked apart; BOOL takes only booleans).
        bounds: (min, max) of an integer datatype, else None.
    """

    dtype: np.dtype[Any]
    kinds: str
    bounds: tuple[int, int] | None


def _json_datatype(dtype: np.dtype[Any]) -> _JsonDatatype:
    kind = dtype.kind
    bounds = None
    if kind in "iu":
        info = np.iinfo(cast(Any, dtype))
        bounds = (int(info.min), int(info.max))
    return _JsonDatatype(dtype, _JSON_KINDS[kind], bounds)


#: Per datatype, how JSON ``data`` is decoded (BYTES has its own path).
_JSON_DATATYPES: Final[dict[str, _JsonDatatype]] = {
    name: _json_datatype(dt) for name, dt in DATATYPE_TO_NUMPY.items() if name != "BYTES"
}


def _decode_json_data(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    count = math.prod(shape)
    if type(data) is not list:
        data = [data]
    spec = _JSON_DATATYPES.get(datatype)
    if spec is None:  # BYTES
        return _decode_json_bytes(data, shape, count, f"input {name!r}")
    try:
        # Let numpy infer first: casting straight to the declared dtype would silently
        # truncate 1.5 into an INT64 or parse the string "1" into an FP32.
        arr = np.array(data)
    except (ValueError, TypeError) as e:
        raise _fail(f"input {name!r}: 'data' is not a regular (non-ragged) array: {e}") from None
    if arr.size != count:
        raise _fail(
            f"input {name!r}: 'data' has {arr.size} elements but shape {list(shape)} needs {count}"
        )
    dtype = spec.dtype
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    found = arr.dtype
    if found is not dtype:
        if found.kind not in spec.kinds:
            if spec.bounds is not None and found.kind == "f" and np.all(np.mod(arr, 1) == 0):
                pass  # 3.0 for an INT64 input: integral, accepted
            else:
                raise _fail(
                    f"input {name!r}: 'data' holds {_json_kind_name(found)} values, "
                    f"which are not valid {datatype}"
                )
        bounds = spec.bounds
        # values numpy inferred as the declared dtype fit it by construction
        if bounds is not None and (arr.min() < bounds[0] or arr.max() > bounds[1]):
            raise _fail(f"input {name!r}: a value is out of the range of {datatype}")
        arr = arr.astype(dtype)
    return arr if arr.shape == shape else arr.reshape(shape)


def _json_kind_name(dtype: np.dtype[Any]) -> str:
    return {"b": "boolean", "i": "integer", "u": "integer", "f": "floating-point"}.get(
        dtype.kind, "string or mixed"
    )


def _decode_json_bytes(
    data: list[Any], shape: tuple[int, ...], count: int, where: str
) -> np.ndarray:
    flat: list[bytes] = []

    def walk(item: Any) -> None:
        if isinstance(item, list):
            for sub in item:
                walk(sub)
        elif isinstance(item, str):
            flat.append(item.encode("utf-8"))
        else:
            raise _fail(f"{where}: BYTES 'data' must hold strings, got {type(item).__name__}")

    walk(data)
    if len(flat) != count:
        raise _fail(
            f"{where}: 'data' has {len(flat)} elements but shape {list(shape)} needs {count}"
        )
    arr = np.empty(count, dtype=object)
    arr[:] = flat
    out: np.ndarray = arr.reshape(shape)
    return out


def _decode_binary(
    blob: memoryview, datatype: str, shape: tuple[int, ...], where: str
) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_binary_bytes(blob, shape, count, where)
    dtype = _LE_DTYPE[datatype]
    expected = count * dtype.itemsize
    if len(blob) != expected:
        raise _fail(
            f"{where}: binary_data_size is {len(blob)} bytes but {datatype} shape "
            f"{list(shape)} needs {expected}"
        )
    if datatype == "BOOL":
        raw = np.frombuffer(blob, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise _fail(f"{where}: BOOL binary data must be bytes 0 or 1")
        arr = raw.view(np.bool_)
    else:
        arr = np.frombuffer(blob, dtype=dtype)
        if not arr.dtype.isnative:
            arr = arr.astype(dtype.newbyteorder("="))
    if not arr.flags.aligned:
        arr = arr.copy()  # the JSON header has any length; blobs start at any offset
    return arr.reshape(shape)


def _decode_binary_bytes(
    blob: memoryview, shape: tuple[int, ...], count: int, where: str
) -> np.ndarray:
    items: list[bytes] = []
    pos, end = 0, len(blob)
    while pos < end:
        if pos + 4 > end:
            raise _fail(f"{where}: BYTES binary data ends inside a 4-byte length prefix")
        (length,) = _LENGTH_PREFIX.unpack_from(blob, pos)
        pos += 4
        if pos + length > end:
            raise _fail(
                f"{where}: BYTES element {len(items)} claims {length} bytes, "
                f"only {end - pos} remain"
            )
        items.append(bytes(blob[pos : pos + length]))
        pos += length
    if len(items) != count:
        raise _fail(
            f"{where}: BYTES binary data holds {len(items)} elements but shape "
            f"{list(shape)} needs {count}"
        )
    arr = np.empty(count, dtype=object)
    arr[:] = items
    return arr.reshape(shape)


def _decode_raw(body: bytes, spec: TensorSpec | None) -> InferRequest:
    """Decode a raw binary request (``Inference-Header-Content-Length: 0``)."""
    if spec is None:
        raise _fail(
            "a raw binary request (Inference-Header-Content-Length: 0) needs a model "
            "with exactly one input"
        )
    where = f"raw input {spec.name!r}"
    if spec.datatype == "BYTES":
        arr = np.empty(1, dtype=object)
        arr[0] = bytes(body)
        shape = tuple(1 for _ in spec.shape) or (1,)
        return InferRequest({spec.name: arr.reshape(shape)}, binary_data_output=True)
    dtype = _LE_DTYPE.get(spec.datatype)
    if dtype is None:
        raise _fail(f"{where}: unsupported datatype {spec.datatype}")
    variable = [i for i, d in enumerate(spec.shape) if d < 0]
    if len(variable) > 1:
        raise _fail(
            f"{where}: a raw binary request needs at most one variable dimension, "
            f"the input has shape {list(spec.shape)}"
        )
    fixed = math.prod(d for d in spec.shape if d >= 0) * dtype.itemsize
    if fixed == 0 or len(body) % fixed:
        raise _fail(f"{where}: {len(body)} bytes do not fit shape {list(spec.shape)}")
    dims = [d if d >= 0 else len(body) // fixed for d in spec.shape]
    blob = memoryview(body)
    return InferRequest(
        {spec.name: _decode_binary(blob, spec.datatype, tuple(dims), where)},
        binary_data_output=True,
    )


def decode_infer_request(
    body: bytes, header_length: int | None, *, raw_input: TensorSpec | None = None
) -> InferRequest:
    """Decode an OIP v2 inference request body.

    Args:
        body: the whole HTTP request body.
        header_length: the ``Inference-Header-Content-Length`` value, or None when the header
            is absent (then the whole body is JSON).
        raw_input: the model's single input, used only for raw binary requests
            (``header_length == 0``: the body is the bytes of that one tensor).

    Returns:
        The request with each input decoded into a numpy array of its declared datatype
        (BYTES: an object array of ``bytes``).

    Raises:
        InvalidTensorError: malformed JSON, bad binary framing, a size or shape that does not
            match the data, an unknown datatype, or an unsupported extension.
    """
    header: bytes | memoryview
    if header_length is None:
        header, binary = body, _NO_BINARY
    elif header_length == 0:
        return _decode_raw(body, raw_input)
    elif header_length < 0 or header_length > len(body):
        raise _fail(
            f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
        )
    else:
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as e:
        hint = (
            " (a body with binary tensor data needs the Inference-Header-Content-Length header)"
            if header_length is None
            else ""
        )
        raise _fail(f"the request is not valid JSON: {e}{hint}") from None
    if not isinstance(doc, dict):
        raise _fail("the request must be a JSON object")
    get = doc.get
    request_id = get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _fail("'id' must be a string")
    raw_parameters = get("parameters")
    parameters = {} if raw_parameters is None else _parameters(raw_parameters, "request")
    raw_inputs = get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _fail("'inputs' must be a non-empty list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in raw_inputs:  # no enumerate(): its index is only needed for an error
        if not isinstance(item, dict):
            raise _fail(f"inputs[{_index(raw_inputs, item)}] must be a JSON object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise _fail(f"inputs[{_index(raw_inputs, item)}]: 'name' must be a non-empty string")
        if name in inputs:
            raise _fail(f"input {name!r} appears more than once")
        datatype = item.get("datatype")
        if datatype not in DATATYPE_TO_NUMPY:
            raise _fail(f"input {name!r}: unsupported datatype {datatype!r}")
        shape = _shape(item.get("shape"), name)
        raw_params = item.get("parameters")
        if raw_params is None and "data" in item:  # the common JSON tensor
            try:
                inputs[name] = _decode_json_data(item["data"], datatype, shape, name)
            except _CONSTRUCTION_ERRORS as e:
                raise _unbuildable(name, shape, e) from None
            continue
        size = None
        if raw_params is not None:
            size = _parameters(raw_params, f"input {name!r}").get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise _fail(f"input {name!r}: binary_data_size must be a non-negative integer")
            if "data" in item:
                raise _fail(f"input {name!r}: has both 'data' and binary_data_size")
            if offset + size > len(binary):
                raise _fail(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} binary bytes left)"
                )
            blob = binary[offset : offset + size]
            offset += size
            try:
                inputs[name] = _decode_binary(blob, datatype, shape, f"input {name!r}")
            except _CONSTRUCTION_ERRORS as e:
                raise _unbuildable(name, shape, e) from None
        elif "data" in item:
            try:
                inputs[name] = _decode_json_data(item["data"], datatype, shape, name)
            except _CONSTRUCTION_ERRORS as e:
                raise _unbuildable(name, shape, e) from None
        else:
            raise _fail(f"input {name!r}: has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise _fail(
            f"the body has {len(binary) - offset} bytes of binary data that no input claims"
        )
    raw_outputs = get("outputs")
    outputs = () if raw_outputs is None else _requested_outputs(raw_outputs)
    binary_output = parameters.get("binary_data_output", False) if parameters else False
    if binary_output is not False and binary_output is not True:
        raise _fail("parameters.binary_data_output must be a boolean")
    return InferRequest(inputs, outputs, request_id, parameters, binary_output)


def _index(items: list[Any], item: Any) -> int:
    """The position of ``item`` (itself, not an equal one) in ``items``."""
    return next(i for i, x in enumerate(items) if x is item)


def _requested_outputs(raw: Any) -> tuple[RequestedOutput, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _fail(f"outputs[{index}] must be a JSON object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise _fail(f"outputs[{index}]: 'name' must be a non-empty string")
        if name in seen:
            raise _fail(f"output {name!r} is requested more than once")
        seen.add(name)
        params = _parameters(item.get("parameters"), f"output {name!r}")
        if params.get("classification"):
            raise _fail(f"output {name!r}: the classification extension is not supported")
        flag = params.get("binary_data")
        if flag is not None and not isinstance(flag, bool):
            raise _fail(f"output {name!r}: binary_data must be a boolean")
        outputs.append(RequestedOutput(name, flag, params))
    return tuple(outputs)


def _bytes_elements(arr: np.ndarray) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in arr.ravel().tolist()]


_DUMPS_NUMPY: Final = orjson.OPT_SERIALIZE_NUMPY


def _binary_blob(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return b"".join(_LENGTH_PREFIX.pack(len(v)) + v for v in _bytes_elements(arr))
    if _NATIVE_IS_LE and arr.dtype.byteorder != ">":
        return arr.tobytes()  # C order, whatever the strides
    return np.ascontiguousarray(arr, dtype=_LE_DTYPE[datatype]).tobytes()


def encode_infer_body(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    binary: Mapping[str, bool] | bool = False,
) -> tuple[bytes, int | None]:
    """Encode an OIP v2 inference response body.

    Same as :func:`encode_infer_response`, for adapters that build raw headers themselves.

    Returns:
        The body, and the length of its JSON part when binary data follows it (the value of
        ``Inference-Header-Content-Length``), else None.
    """
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    all_binary = binary if type(binary) is bool else None
    for name, arr in outputs.items():
        datatype = NUMPY_TO_DATATYPE.get(arr.dtype) or datatype_of(arr)
        as_binary = (
            all_binary
            if all_binary is not None
            else cast(Mapping[str, bool], binary).get(name, False)
        )
        # a shape tuple serialises as the same JSON array as a list
        if as_binary:
            blob = _binary_blob(arr, datatype)
            blobs.append(blob)
            entries.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": arr.shape,
                    "parameters": {"binary_data_size": len(blob)},
                }
            )
        elif datatype == "BYTES":
            data = [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                for v in arr.ravel().tolist()
            ]
            entries.append({"name": name, "datatype": datatype, "shape": arr.shape, "data": data})
        else:
            entries.append(
                {"name": name, "datatype": datatype, "shape": arr.shape, "data": arr.ravel()}
            )
    if request_id is None:
        doc: dict[str, Any] = {
            "model_name": model_name,
            "model_version": model_version,
            "outputs": entries,
        }
    else:
        doc = {
            "model_name": model_name,
            "model_version": model_version,
            "id": request_id,
            "outputs": entries,
        }
    header = orjson.dumps(doc, option=_DUMPS_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    binary: Mapping[str, bool] | bool = False,
) -> tuple[bytes, dict[str, str]]:
    """Encode an OIP v2 inference response.

    Args:
        model_name: echoed as ``model_name``.
        model_version: the version that computed the outputs; always present.
        request_id: the request's ``id``, echoed when not None.
        outputs: output arrays in the order they should appear.
        binary: True/False for all outputs, or a per-output decision (missing names: JSON).

    Returns:
        The body and the headers to send with it: ``content-type`` and, when any output is
        binary, ``inference-header-content-length``.
    """
    body, header_length = encode_infer_body(model_name, model_version, request_id, outputs, binary)
    if header_length is None:
        return body, {"content-type": "application/json"}
    return body, {"content-type": "application/octet-stream", HEADER_LENGTH: str(header_length)}

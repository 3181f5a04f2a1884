"""Datatype names of the Open Inference Protocol v2 and their numpy / ONNX equivalents.

Shared by packaging and serving, which must not import each other. Table from KServe
``required_api.md`` and Triton's model configuration docs.
"""

from __future__ import annotations

from typing import Final

import numpy as np

__all__ = [
    "DATATYPE_TO_NUMPY",
    "NUMPY_TO_DATATYPE",
    "ONNX_TYPE_TO_DATATYPE",
    "datatype_of",
    "numpy_dtype",
]

DATATYPE_TO_NUMPY: Final[dict[str, np.dtype[np.generic]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

NUMPY_TO_DATATYPE: Final[dict[np.dtype[np.generic], str]] = {
    v: k for k, v in DATATYPE_TO_NUMPY.items()
}

#: ONNX Runtime's ``NodeArg.type`` strings mapped to OIP datatypes.
ONNX_TYPE_TO_DATATYPE: Final[dict[str, str]] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def numpy_dtype(datatype: str) -> np.dtype[np.generic]:
    """Return the numpy dtype for an OIP datatype name.

    Raises:
        KeyError: the name is not an OIP datatype this server handles.
    """
    return DATATYPE_TO_NUMPY[datatype]


def datatype_of(array: np.ndarray) -> str:
    """Return the OIP datatype name of a numpy array (strings map to BYTES)."""
    dt = array.dtype
    if dt.kind in ("U", "S", "O"):
        return "BYTES"
    return NUMPY_TO_DATATYPE[dt]

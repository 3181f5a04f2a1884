"""OIP v2 datatype names and their numpy / ONNX equivalents (see :mod:`modelfleet.catalog.dtypes`).

The table lives in ``catalog`` so that packaging and serving share it without importing each
other; this module keeps the names where serving code has always found them.
"""

from __future__ import annotations

from modelfleet.catalog.dtypes import (
    DATATYPE_TO_NUMPY,
    NUMPY_TO_DATATYPE,
    ONNX_TYPE_TO_DATATYPE,
    datatype_of,
    numpy_dtype,
)

__all__ = [
    "DATATYPE_TO_NUMPY",
    "NUMPY_TO_DATATYPE",
    "ONNX_TYPE_TO_DATATYPE",
    "datatype_of",
    "numpy_dtype",
]

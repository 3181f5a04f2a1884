"""modelfleet.serving: ONNX Runtime behind the Open Inference Protocol v2.

* :mod:`~modelfleet.serving.runtime` - :class:`LoadedModel`, one model version.
* :mod:`~modelfleet.serving.oip` - the OIP v2 REST codec with the binary tensor extension.
* :mod:`~modelfleet.serving.router` - pure full / split / shadow routing decisions.
* :mod:`~modelfleet.serving.host` - :class:`ModelHost`, the atomically swapped route table.
* :mod:`~modelfleet.serving.shadow` - the bounded shadow mirror and output comparison.

Names are imported lazily: :mod:`modelfleet.packaging` imports ``serving.dtypes`` while
``serving.runtime`` imports ``packaging``, so this package must not import its modules eagerly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelfleet.serving.host import ModelHost
    from modelfleet.serving.oip import (
        InferRequest,
        RequestedOutput,
        decode_infer_request,
        encode_infer_response,
    )
    from modelfleet.serving.router import Decision, Route, bucket_of, choose
    from modelfleet.serving.runtime import LoadedModel
    from modelfleet.serving.shadow import ShadowMirror, outputs_disagree

__all__ = [
    "Decision",
    "InferRequest",
    "LoadedModel",
    "ModelHost",
    "RequestedOutput",
    "Route",
    "ShadowMirror",
    "bucket_of",
    "choose",
    "decode_infer_request",
    "encode_infer_response",
    "outputs_disagree",
]

_WHERE = {
    "ModelHost": "host",
    "InferRequest": "oip",
    "RequestedOutput": "oip",
    "decode_infer_request": "oip",
    "encode_infer_response": "oip",
    "Decision": "router",
    "Route": "router",
    "bucket_of": "router",
    "choose": "router",
    "LoadedModel": "runtime",
    "ShadowMirror": "shadow",
    "outputs_disagree": "shadow",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)

"""modelfleet.serving: models behind the Open Inference Protocol v2.

* :mod:`~modelfleet.serving.model` - :class:`Servable`, the runtime-neutral model face, and
  :class:`RuntimeSettings`.
* :mod:`~modelfleet.serving.runtime` - ``LoadedModel``, the ONNX Runtime implementation (not
  imported here: importing it loads ONNX Runtime).
* :mod:`~modelfleet.serving.oip` - the OIP v2 REST codec with the binary tensor extension.
* :mod:`~modelfleet.serving.router` - pure full / split / shadow routing decisions.
* :mod:`~modelfleet.serving.host` - :class:`ModelHost`, the atomically swapped route table.
* :mod:`~modelfleet.serving.shadow` - the bounded shadow mirror and output comparison.
* :mod:`~modelfleet.serving.cascade` - the edge-cloud cascade decision.

Serving imports ``catalog`` (schema, datatypes, sessions), never ``packaging``.
"""

from __future__ import annotations

from modelfleet.serving.host import ModelHost
from modelfleet.serving.model import RuntimeSettings, Servable
from modelfleet.serving.oip import (
    InferRequest,
    RequestedOutput,
    decode_infer_request,
    encode_infer_response,
)
from modelfleet.serving.router import Decision, Route, bucket_of, choose
from modelfleet.serving.shadow import Comparison, ShadowMirror, compare_outputs

__all__ = [
    "Comparison",
    "Decision",
    "InferRequest",
    "ModelHost",
    "RequestedOutput",
    "Route",
    "RuntimeSettings",
    "Servable",
    "ShadowMirror",
    "bucket_of",
    "choose",
    "compare_outputs",
    "decode_infer_request",
    "encode_infer_response",
]

"""A custom MLServer runtime that serves an ONNX file with ONNX Runtime.

This file runs inside MLServer's own virtual environment (``.bench/mlserver-venv``), never in
the project's: the benchmark copies it next to the model as ``onnx_runtime.py`` and names
``onnx_runtime.OnnxRuntimeModel`` as the model's implementation.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):  # type: ignore[misc]
    """Runs one ONNX session inline (``intra_op_num_threads=1``) and returns every output."""

    async def load(self) -> bool:
        """Open the session named by the model settings' ``uri``."""
        uri = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Decode the first input with MLServer's NumpyCodec, run, encode all outputs."""
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        results = self._session.run(self._outputs, {self._input: x})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, arr)
                for name, arr in zip(self._outputs, results, strict=True)
            ],
        )

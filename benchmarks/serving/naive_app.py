"""The "naive" baseline: a hand-written Starlette + orjson + ONNX Runtime OIP v2 endpoint.

No validation, routing or metrics: it decodes the JSON, runs the session inline on the event
loop (``intra_op_num_threads=1``) and encodes both outputs. It is what the agent's serving
path is compared with to see what the agent's own features cost over the HTTP stack.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
_OIP = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.float64): "FP64"}


def build_naive_app(model_path: str, model_name: str, *, fastapi: bool = False) -> Any:
    """A Starlette app serving ``POST /v2/models/{model_name}/infer`` and readiness.

    With ``fastapi=True`` the same handlers are mounted on a FastAPI app instead (the handler
    takes the raw ``Request``, so no pydantic model is involved), to see what FastAPI's
    routing and dependency machinery cost over plain Starlette.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]

    async def infer(request: Request) -> Response:
        doc = orjson.loads(await request.body())
        tensor = doc["inputs"][0]
        x = np.asarray(tensor["data"], dtype=_NUMPY[tensor["datatype"]]).reshape(tensor["shape"])
        results = session.run(output_names, {input_name: x})
        outputs: list[dict[str, Any]] = [
            {
                "name": name,
                "shape": list(arr.shape),
                "datatype": _OIP[arr.dtype],
                "data": arr.ravel().tolist(),
            }
            for name, arr in zip(output_names, results, strict=True)
        ]
        out = {"model_name": model_name, "id": doc.get("id"), "outputs": outputs}
        return Response(orjson.dumps(out), media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b"", 200)

    if fastapi:
        from fastapi import FastAPI

        api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        api.add_api_route(f"/v2/models/{model_name}/infer", infer, methods=["POST"])
        api.add_api_route("/v2/health/ready", ready, methods=["GET"])
        return api
    return Starlette(
        routes=[
            Route(f"/v2/models/{model_name}/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", ready, methods=["GET"]),
        ]
    )

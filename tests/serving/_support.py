"""Models and a real server for the serving tests; everything is built locally."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import uvicorn
from onnx import TensorProto, helper

from modelfleet.serving.runtime import LoadedModel

T = TypeVar("T")


@dataclass(frozen=True)
class Models:
    """ONNX files on disk and a feature matrix to call them with."""

    lr_a: Path  # LogisticRegression, 4 features, 3 classes
    lr_b: Path  # trained on shifted labels: disagrees with lr_a on (almost) every row
    echo: Path  # Identity on a STRING, a BOOL and an FP16 input
    X: np.ndarray  # float32 [200, 4]


def echo_model() -> bytes:
    nodes = [
        helper.make_node("Identity", ["text"], ["text_out"]),
        helper.make_node("Identity", ["flag"], ["flag_out"]),
        helper.make_node("Identity", ["half"], ["half_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "echo",
        [
            helper.make_tensor_value_info("text", TensorProto.STRING, [None]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, [None]),
            helper.make_tensor_value_info("half", TensorProto.FLOAT16, [None, 2]),
        ],
        [
            helper.make_tensor_value_info("text_out", TensorProto.STRING, [None]),
            helper.make_tensor_value_info("flag_out", TensorProto.BOOL, [None]),
            helper.make_tensor_value_info("half_out", TensorProto.FLOAT16, [None, 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


def load(path: Path, version: str, name: str = "iris") -> LoadedModel:
    model = LoadedModel.load(name, version, path, digest="sha256:" + version * 8)
    model.warm_up()
    return model


class ServerThread:
    """A real uvicorn server on 127.0.0.1 with a free port, in a background thread."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:  # readiness poll: uvicorn offers no start callback
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        port: int = self.server.servers[0].sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


class AppClient:
    """A synchronous face on ``httpx.AsyncClient`` over ``ASGITransport``, on one event loop
    that also runs the app's background work (the shadow worker) between requests."""

    def __init__(self, app: Any, root_path: str = "") -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, root_path=root_path), base_url="http://agent"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.client.request(method, path, **kwargs))

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        return self.loop.run_until_complete(make())

    def __enter__(self) -> AppClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self.app.state.shadow.close())
        self.loop.close()

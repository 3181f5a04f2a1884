"""Launch one benchmarked server on 127.0.0.1: the modelfleet agent app or the naive app.

``python -m benchmarks.serving.serve --app agent|naive --model PATH --port N
[--server uvicorn|granian] [--http httptools|h11] [--loop uvloop|asyncio]``

granian is not a project dependency: the benchmark installs it into ``.bench/granian-pkgs``
and puts that folder on ``PYTHONPATH`` for this process only.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import uvicorn

from benchmarks.serving.model import MODEL_NAME, MODEL_VERSION


def build_agent(model_path: Path) -> Any:
    """The agent app exactly as the agent builds it: ModelHost -> Route -> build_agent_app."""
    from modelfleet.agent.app import build_agent_app
    from modelfleet.hashing import sha256_file
    from modelfleet.serving.host import ModelHost
    from modelfleet.serving.router import Route
    from modelfleet.serving.runtime import LoadedModel

    digest, _ = sha256_file(model_path)
    model = LoadedModel.load(MODEL_NAME, MODEL_VERSION, model_path, digest)
    model.warm_up()
    host = ModelHost()
    host.set_route(MODEL_NAME, Route(model))
    return build_agent_app(host)


_MODEL_ENV = "MODELFLEET_BENCH_MODEL"


def agent_factory() -> Any:
    """The agent app for granian's ``--factory`` mode; the model path comes from the env."""
    return build_agent(Path(os.environ[_MODEL_ENV]))


def _serve_granian(app: str, model: Path, port: int, loop: str) -> None:
    from granian import Granian

    if app != "agent":
        raise SystemExit("granian is only wired for the agent app")
    os.environ[_MODEL_ENV] = str(model)
    Granian(
        f"{__name__}:agent_factory",
        address="127.0.0.1",
        port=port,
        interface="asgi",
        workers=1,
        loop=loop,
        http="1",
        log_level="warning",
        log_access=False,
        factory=True,
    ).serve()


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--app", choices=["agent", "naive"], required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    parser.add_argument("--http", choices=["httptools", "h11"], default="httptools")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)
    if args.server == "granian":
        _serve_granian(args.app, args.model, args.port, args.loop)
        return
    if args.app == "agent" and args.http == "httptools" and args.loop == "uvloop":
        from modelfleet.agent.daemon import bind_socket
        from modelfleet.agent.server import serve

        # the server exactly as the daemon starts it (agent/server.py)
        serve(build_agent(args.model), bind_socket("127.0.0.1", args.port))
        return
    if args.app == "agent":
        app = build_agent(args.model)
    else:
        from benchmarks.serving.naive_app import build_naive_app

        app = build_naive_app(str(args.model), MODEL_NAME)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop=args.loop,
        http=args.http,
        access_log=False,
        log_level="warning",
        lifespan="on" if args.app == "agent" else "auto",
    )


if __name__ == "__main__":
    main()

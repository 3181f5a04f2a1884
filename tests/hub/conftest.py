"""Fixtures for hub tests: an initialised hub home, its service, an API client, models."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from modelfleet.client import HubClient
from modelfleet.clock import ManualClock
from modelfleet.hub.app import build_hub_app
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService, init_home
from modelfleet.packaging.sklearn import sklearn_to_onnx


@pytest.fixture(scope="session")
def sample_rows() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(40, 4)).astype(np.float32)


@pytest.fixture(scope="session")
def fitted_model(sample_rows: np.ndarray) -> object:
    from sklearn.linear_model import LogisticRegression

    y = (sample_rows[:, 0] + sample_rows[:, 1] > 0).astype(np.int64)
    return LogisticRegression().fit(sample_rows, y)


@pytest.fixture(scope="session")
def onnx_bytes(fitted_model: object, sample_rows: np.ndarray) -> bytes:
    return sklearn_to_onnx(fitted_model, sample_rows)


@pytest.fixture(scope="session")
def onnx_bytes_v2(sample_rows: np.ndarray) -> bytes:
    from sklearn.linear_model import LogisticRegression

    y = (sample_rows[:, 2] > 0).astype(np.int64)
    return sklearn_to_onnx(LogisticRegression().fit(sample_rows, y), sample_rows)


@pytest.fixture(scope="session")
def ort_unloadable_onnx() -> bytes:
    """Well-formed ONNX whose only node is an operator ONNX Runtime does not know."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 4])
    node = helper.make_node("Frobnicate", ["X"], ["Y"], domain="com.example")
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="session")
def _hub_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[datetime, tuple[Path, str]]:
    """Initialised hub homes by the time they were made at, one each per test process."""
    return {}


@pytest.fixture
def hub_home(
    tmp_path: Path,
    clock: ManualClock,
    tmp_path_factory: pytest.TempPathFactory,
    _hub_templates: dict[datetime, tuple[Path, str]],
) -> tuple[Path, str]:
    """A hub home initialised at the clock's time, and its admin token.

    ``init_home`` (keys, schema migrations, TUF repositories) costs about 0.3 s; each test
    gets its own copy of one made once per test process for that time, so tests never share
    files, only the keys and the admin token's value.
    """
    now = clock.now()
    if now not in _hub_templates:
        template = tmp_path_factory.mktemp("hub-template") / "hub"
        _hub_templates[now] = (template, init_home(template, ManualClock(now)))
    template, token = _hub_templates[now]
    home = tmp_path / "hub"
    shutil.copytree(template, home)
    return home, token


@pytest.fixture
def service(hub_home: tuple[Path, str], clock: ManualClock) -> Iterator[HubService]:
    svc = HubService(load_hub_config(hub_home[0]), clock)
    yield svc
    svc.close()


@pytest.fixture
def admin_token(hub_home: tuple[Path, str]) -> str:
    return hub_home[1]


@pytest.fixture
def http(service: HubService) -> Iterator[TestClient]:
    with TestClient(build_hub_app(service, refresh_interval_s=0)) as client:
        yield client


@pytest.fixture
def tokens(service: HubService, admin_token: str) -> dict[str, str]:
    """A token per role (plus one device, ``dev-1``, and its token)."""
    _, device_token = service.add_device("dev-1", "site-a", [], actor="admin:admin")
    return {
        "admin": admin_token,
        "publisher": service.create_token("publisher", "pat", actor="admin:admin"),
        "operator": service.create_token("operator", "olga", actor="admin:admin"),
        "viewer": service.create_token("viewer", "vic", actor="admin:admin"),
        "device": device_token,
    }


@pytest.fixture
def client(http: TestClient, admin_token: str) -> HubClient:
    return HubClient(str(http.base_url), admin_token, http=http)

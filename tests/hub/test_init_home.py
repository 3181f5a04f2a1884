"""init_home: the files it writes, their modes, and the admin token it returns."""

from __future__ import annotations

import stat
from pathlib import Path

import orjson
import pytest

from modelfleet.clock import ManualClock
from modelfleet.errors import ConfigError, UnauthenticatedError
from modelfleet.hub.auth import Role
from modelfleet.hub.config import ENV_DATABASE_URL, HubHome, load_hub_config
from modelfleet.hub.service import HubService, init_home


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_home_writes_layout_with_private_modes(hub_home: tuple[Path, str]) -> None:
    home, token = hub_home
    paths = HubHome(home)
    for p in (paths.config_file, paths.database_file, paths.trust_root, paths.admin_token):
        assert p.is_file(), p
    assert paths.artefacts.is_dir()
    assert (paths.tuf / "catalog" / "1.root.json").is_file()
    assert (paths.tuf / "director" / "1.root.json").is_file()
    assert _mode(paths.admin_token) == 0o600
    assert _mode(paths.config_file) == 0o600
    pems = list(paths.keys.glob("*.pem"))
    assert {p.stem for p in pems} >= {"root", "targets", "snapshot", "timestamp", "director"}
    assert all(_mode(p) == 0o600 for p in pems)
    assert paths.admin_token.read_text().strip() == token
    bundle = orjson.loads(paths.trust_root.read_bytes())
    assert isinstance(bundle, dict)


def test_hub_home_and_database_are_not_world_readable(
    tmp_path: Path, clock: ManualClock, onnx_bytes: bytes
) -> None:
    """Defect 5: hub.db (token hashes) was created world-readable, and so were -wal/-shm."""
    home = tmp_path / "hub"
    home.mkdir(mode=0o755)  # an existing, empty folder is tightened too
    init_home(home, clock)
    paths = HubHome(home)
    assert _mode(home) == 0o700
    svc = HubService(load_hub_config(home), clock)
    try:
        svc.register_version("iris", onnx_bytes, actor="admin:admin")  # writes the WAL
        files = [paths.database_file, *home.glob("hub.db-*")]
        assert {p.name for p in files} >= {"hub.db", "hub.db-wal", "hub.db-shm"}
        assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        svc.close()


def test_init_home_writes_the_database_url_into_the_config(tmp_path: Path) -> None:
    """Defect 2: the URL given to init is the one `hub serve` uses, with no environment."""
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'fleet.db'}"
    init_home(tmp_path / "hub", ManualClock(), database_url=url)
    assert load_hub_config(tmp_path / "hub").database_url == url
    assert 'database_url = "' in (tmp_path / "hub" / "config.toml").read_text()
    assert _mode(tmp_path / "elsewhere" / "fleet.db") == 0o600


def test_admin_token_from_init_authenticates_as_admin(
    service: HubService, admin_token: str
) -> None:
    principal = service.authenticate(admin_token)
    assert principal.role is Role.ADMIN


def test_wrong_token_is_unauthenticated(service: HubService, admin_token: str) -> None:
    with pytest.raises(UnauthenticatedError):
        service.authenticate(admin_token + "x")
    with pytest.raises(UnauthenticatedError):
        service.authenticate(None)


def test_init_refuses_an_initialised_home(hub_home: tuple[Path, str]) -> None:
    home, token = hub_home
    with pytest.raises(ConfigError, match="already initialised"):
        init_home(home, ManualClock())
    assert (home / "admin.token").read_text().strip() == token


def test_service_refuses_a_home_that_was_never_initialised(tmp_path: Path) -> None:
    from modelfleet.hub.config import HubConfig

    with pytest.raises(ConfigError, match="not an initialised hub home"):
        HubService(HubConfig(tmp_path / "nothing"), ManualClock())


def test_config_env_override_applies_only_when_passed(hub_home: tuple[Path, str]) -> None:
    home, _ = hub_home
    assert load_hub_config(home).database_url == f"sqlite:///{home / 'hub.db'}"
    env = {ENV_DATABASE_URL: "postgresql+psycopg://u:p@db/hub"}
    assert load_hub_config(home, env).database_url == "postgresql+psycopg://u:p@db/hub"


def test_config_rejects_out_of_range_values(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[hub]\nport = 70000\n")
    with pytest.raises(ConfigError, match="port"):
        load_hub_config(tmp_path)
    (tmp_path / "config.toml").write_text("[hub\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_hub_config(tmp_path)

"""``modelfleet keys`` through the real CLI on a real hub home (issue 10, ADR 0025):
encrypted keys from ``init``, rotation, retirement, the offline root ceremony, and wrong
usage as one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelfleet.cli._errors import ExitCode
from modelfleet.errors import ConfigError
from modelfleet.hub.config import load_hub_config
from modelfleet.trust._key_files import ENCRYPTED_HEADER
from tests.cli_run import run_cli
from tests.test_cli_errors import assert_one_line_error

PW = {"MODELFLEET_KEY_PASSPHRASE": "s3cret passphrase"}


def _json(*args: str, env: dict[str, str] | None = None) -> object:
    result = run_cli(*args, "--json", env=env if env is not None else PW)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-keys")
    pw_file = root / "pw.txt"
    pw_file.write_text(PW["MODELFLEET_KEY_PASSPHRASE"] + "\n")
    result = run_cli("init", str(root / "hub"), "--passphrase-file", str(pw_file))
    assert result.returncode == 0, result.stderr
    assert "(encrypted)" in result.stdout
    return root / "hub"


def test_init_with_a_passphrase_writes_encrypted_keys_the_hub_opens_with_it(home: Path) -> None:
    files = [f"{r}.pem" for r in ("root", "targets", "snapshot", "timestamp", "director")]
    for name in [*files, "audit.pem", "model-signing.key"]:  # every private key (issue 10)
        assert (home / "keys" / name).read_bytes().startswith(ENCRYPTED_HEADER), name
    from modelfleet.clock import SystemClock
    from modelfleet.hub.service import HubService

    service = HubService(load_hub_config(home, PW), SystemClock(), migrate_db=False)
    service.close()
    with pytest.raises(ConfigError, match="is encrypted: give its passphrase"):
        HubService(load_hub_config(home, {}), SystemClock(), migrate_db=False)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "is encrypted: give its passphrase"),
        ({"MODELFLEET_KEY_PASSPHRASE": "nope"}, "wrong passphrase"),
    ],
)
def test_keys_without_or_with_a_wrong_passphrase_is_one_clear_line(
    home: Path, env: dict[str, str], message: str
) -> None:
    assert_one_line_error(run_cli("keys", "list", "--home", str(home), env=env), 1, message)


@pytest.mark.slow  # 25-60 s of real CLI processes
def test_list_rotate_retire_through_the_cli(home: Path, tmp_path: Path) -> None:
    keys = _json("keys", "list", "--home", str(home))
    assert isinstance(keys, list)
    assert sorted(k["role"] for k in keys if k["state"] == "active") == sorted(
        ["root", "targets", "snapshot", "timestamp", "director"]
    )
    (old_root,) = [k for k in keys if k["role"] == "root"]
    assert old_root["in_roots"] == ["catalog", "director"]
    change = _json("keys", "rotate", "root", "--home", str(home))
    assert isinstance(change, dict)
    assert change["retired"] == [old_root["keyid"]] and not change["pending"]
    assert {"catalog/root", "director/root"} <= set(change["written"])
    assert (home / "tuf" / "catalog" / "2.root.json").is_file()
    added = _json("keys", "create", "snapshot", "--home", str(home))
    assert isinstance(added, dict)
    retired = _json("keys", "retire", added["added"][0][:12], "--home", str(home))
    assert isinstance(retired, dict) and retired["retired"] == added["added"]
    table = run_cli("keys", "list", "--home", str(home), env=PW)
    assert table.returncode == 0 and "retired" in table.stdout


@pytest.mark.slow  # 25-60 s of real CLI processes
def test_offline_root_ceremony_through_the_cli(home: Path, tmp_path: Path) -> None:
    # The new root key goes to a file for the offline machine (it signs its first root
    # here, where it was made); from then on the hub holds no root key.
    new_key = tmp_path / "offline-root.pem"
    change = _json("keys", "rotate", "root", "--home", str(home), "--out", str(new_key))
    assert isinstance(change, dict) and not change["pending"]
    assert new_key.read_bytes().startswith(ENCRYPTED_HEADER)
    # A timestamp rotation now needs the offline root's signature.
    change = _json("keys", "rotate", "timestamp", "--home", str(home))
    assert isinstance(change, dict) and change["pending"]
    blocked = run_cli("keys", "rotate", "snapshot", "--home", str(home), env=PW)
    assert_one_line_error(blocked, ExitCode.ERROR, "waits for offline signatures")
    unsigned, signed = tmp_path / "unsigned.json", tmp_path / "signed.json"
    _json("keys", "export-root", "--home", str(home), "--out", str(unsigned))
    # On the offline machine: no hub home, only the bundle and the key file.
    out = _json(
        "keys", "sign-root", "--unsigned", str(unsigned), "--key", str(new_key),
        "--out", str(signed),
    )  # fmt: skip
    assert isinstance(out, dict) and all(s["ready"] for s in out["status"].values())
    applied = _json("keys", "apply-root", "--home", str(home), "--signed", str(signed))
    assert isinstance(applied, dict)
    assert applied["written"] == ["catalog/root", "catalog/timestamp"]
    keys = _json("keys", "list", "--home", str(home))
    assert isinstance(keys, list)
    active = {k["role"]: k for k in keys if k["state"] == "active"}
    assert active["root"]["location"] == "offline"
    assert active["timestamp"]["keyid"] == change["added"][0]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["keys", "rotate", "nobody"], ExitCode.USAGE, "unknown key role"),
        (["keys", "create", "root", "--out", "x", "--signer-uri", "hsm:2"], 2, "not both"),
        (["keys", "retire", "abc"], ExitCode.ERROR, "at least 8 hex digits"),
        (["keys", "retire", "0123456789abcdef"], ExitCode.NOT_FOUND, "no key"),
    ],
)  # fmt: skip
def test_wrong_key_commands_are_one_clear_line(
    home: Path, args: list[str], code: int, message: str
) -> None:
    assert_one_line_error(run_cli(*args, "--home", str(home), env=PW), code, message)


def test_sign_root_needs_a_key_or_a_signer_uri(tmp_path: Path) -> None:
    bundle = tmp_path / "b.json"
    bundle.write_text("{}")
    result = run_cli("keys", "sign-root", "--unsigned", str(bundle), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, ExitCode.USAGE, "either --key FILE or --signer-uri")
    result = run_cli(
        "keys", "sign-root", "--unsigned", str(bundle), "--key", str(bundle),
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert_one_line_error(result, ExitCode.ERROR, "not a root-signing bundle")

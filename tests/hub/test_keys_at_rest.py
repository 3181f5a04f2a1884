"""The audit key and the model-signing key are encrypted at rest like the TUF role keys
(issue 10): a home made with a passphrase writes them encrypted, a hub opened with it signs
audit heads and model bundles with them, a wrong passphrase is one clear error naming the
file, and ``modelfleet keys encrypt`` turns a legacy home's plain keys into encrypted ones.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from modelfleet.clock import ManualClock
from modelfleet.errors import ConfigError
from modelfleet.hub.audit_anchor import AUDIT_KEY_NAME, load_audit_signer
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.home import init_home
from modelfleet.hub.service import HubService
from modelfleet.packaging.openssf_signing import (
    SIGNING_KEY_NAME,
    SIGNING_PUBLIC_KEY_NAME,
    verify_model,
)
from modelfleet.trust._key_files import is_encrypted
from tests.cli_run import run_cli

PASSPHRASE = "hub key passphrase"
ENV = {"MODELFLEET_KEY_PASSPHRASE": PASSPHRASE}
KEY_FILES = (AUDIT_KEY_NAME, SIGNING_KEY_NAME)


def _encrypted(home: Path, name: str) -> bool:
    return is_encrypted((home / "keys" / name).read_bytes())


def _mode(home: Path, name: str) -> int:
    return (home / "keys" / name).stat().st_mode & 0o777


def _register_and_check(
    service: HubService, onnx_bytes: bytes, sample_rows: np.ndarray, tmp_path: Path
) -> None:
    """A version registers, its model-signing bundle verifies against the hub's public
    key, and the audit chain (signed head included) verifies."""
    pytest.importorskip("model_signing")
    from tests.hub.test_model_signing import _catalog_targets, _model_folder

    service.add_device("cam-1", "site-a", [], actor="admin:admin")
    service.register_version("iris", onnx_bytes, sample_rows[:3], actor="admin:admin")
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")  # publishes the target
    binding = _catalog_targets(service)["models/iris/1/model.onnx"].custom["model_signing"]
    url = f"models/iris/1/{binding['bundle_sha256']}.model.sig"
    bundle = service.tuf_target("catalog", url).read_bytes()
    folder, sig = _model_folder(tmp_path, onnx_bytes, bundle)
    verify_model(folder, sig, service.paths.keys / SIGNING_PUBLIC_KEY_NAME)
    report = service.audit_verify()
    assert report["ok"], report


def test_a_home_made_with_a_passphrase_has_encrypted_audit_and_model_signing_keys(
    tmp_path: Path,
    clock: ManualClock,
    onnx_bytes: bytes,
    sample_rows: np.ndarray,
    caplog: pytest.LogCaptureFixture,
) -> None:
    home = tmp_path / "hub"
    init_home(home, clock, key_passphrase=PASSPHRASE.encode())
    for name in KEY_FILES:
        assert _encrypted(home, name), name
        assert _mode(home, name) == 0o600
    caplog.set_level(logging.WARNING)
    service = HubService(load_hub_config(home, ENV), clock)
    try:
        _register_and_check(service, onnx_bytes, sample_rows, tmp_path)
    finally:
        service.close()
    assert not [r for r in caplog.records if "stored unencrypted" in r.getMessage()]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODELFLEET_KEY_PASSPHRASE": "not it"}, "wrong passphrase for audit key"),
        ({}, "audit key .* is encrypted: give its passphrase"),
    ],
)
def test_a_wrong_or_missing_passphrase_is_a_config_error_naming_the_audit_key(
    tmp_path: Path, clock: ManualClock, env: dict[str, str], message: str
) -> None:
    home = tmp_path / "hub"
    init_home(home, clock, key_passphrase=PASSPHRASE.encode())
    with pytest.raises(ConfigError, match=message) as info:
        HubService(load_hub_config(home, env), clock)
    assert AUDIT_KEY_NAME in str(info.value)


def test_a_wrong_passphrase_for_the_model_signing_key_names_it(
    tmp_path: Path, clock: ManualClock, onnx_bytes: bytes, sample_rows: np.ndarray
) -> None:
    from modelfleet.packaging.openssf_signing import ensure_signing_key

    keys = tmp_path / "keys"
    ensure_signing_key(keys, PASSPHRASE.encode())
    assert is_encrypted((keys / SIGNING_KEY_NAME).read_bytes())
    with pytest.raises(
        ConfigError, match=f"wrong passphrase for model-signing key .*{SIGNING_KEY_NAME}"
    ):
        ensure_signing_key(keys, b"not it")
    with pytest.raises(ConfigError, match=r"model-signing key .* is encrypted: give"):
        ensure_signing_key(keys)


def test_an_unencrypted_audit_key_still_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    load_audit_signer(tmp_path)  # a legacy hub: no passphrase
    assert not is_encrypted((tmp_path / AUDIT_KEY_NAME).read_bytes())
    caplog.set_level(logging.WARNING)
    first = load_audit_signer(tmp_path, PASSPHRASE.encode())
    assert first.keyid == load_audit_signer(tmp_path, PASSPHRASE.encode()).keyid
    warned = [r.getMessage() for r in caplog.records if "stored unencrypted" in r.getMessage()]
    assert len(warned) == 1 and AUDIT_KEY_NAME in warned[0]  # once per file and process


def test_keys_encrypt_on_a_legacy_home_encrypts_audit_and_model_signing_keys(
    tmp_path: Path, clock: ManualClock, onnx_bytes: bytes, sample_rows: np.ndarray
) -> None:
    home = tmp_path / "hub"
    init_home(home, clock)  # no passphrase: every key file plain, as before issue 10
    service = HubService(load_hub_config(home, {}), clock)
    head = service.audit_verify()["head"]
    service.close()
    assert not any(_encrypted(home, name) for name in KEY_FILES)

    result = run_cli("keys", "encrypt", "--home", str(home), "--json", env=ENV)
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)["encrypted"]
    assert set(KEY_FILES) <= set(done)
    for name in KEY_FILES:
        assert _encrypted(home, name), name
        assert _mode(home, name) == 0o600
    again = run_cli("keys", "encrypt", "--home", str(home), "--json", env=ENV)
    assert json.loads(again.stdout)["encrypted"] == []

    service = HubService(load_hub_config(home, ENV), clock)
    try:
        # the same audit key signs on: the old signed head still verifies
        assert service.audit_verify()["head"]["seq"] >= head["seq"]
        _register_and_check(service, onnx_bytes, sample_rows, tmp_path)
    finally:
        service.close()

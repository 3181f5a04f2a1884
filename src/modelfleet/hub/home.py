"""Creating a hub home: folders, config, database, keys, TUF repositories, admin token."""

from __future__ import annotations

import os
from pathlib import Path

from modelfleet._atomic import atomic_write_bytes, atomic_write_text
from modelfleet.clock import Clock, SystemClock
from modelfleet.errors import ConfigError
from modelfleet.hub import db
from modelfleet.hub.auth import Role
from modelfleet.hub.config import HubConfig, HubHome, render_config_toml
from modelfleet.hub.tuf_versions import DbRoleCounters
from modelfleet.packaging.openssf_signing import ensure_signing_key
from modelfleet.trust.hub_trust import HubTrust
from modelfleet.trust.keys import generate_keys

__all__ = ["init_home"]


def init_home(
    home: Path,
    clock: Clock | None = None,
    *,
    database_url: str | None = None,
    key_passphrase: bytes | None = None,
) -> str:
    """Create a hub home: folders, config, database, keys, TUF repositories, admin token.

    The home folder is made mode 0700; ``config.toml``, ``admin.token`` and the SQLite
    database (with its ``-wal``/``-shm`` files) are 0600.

    Args:
        home: the folder to initialise (created if missing; may exist empty).
        clock: time source for the initial metadata (the system clock if None).
        database_url: SQLAlchemy URL, e.g. ``postgresql+psycopg://user:pw@host/db``;
            written into ``config.toml`` (so ``hub serve`` uses it without the
            environment) and migrated here. SQLite ``home/hub.db`` if None or empty.
        key_passphrase: encrypts the key files at rest (issue 10): the TUF role keys,
            the audit key and the model-signing key; None writes them unencrypted
            (loading them warns).

    Returns:
        The admin token (also written to ``home/admin.token``, mode 0600).

    Raises:
        ConfigError: ``home`` is already (or partly) initialised, or not usable.
        StorageError: the database or a file could not be written.
    """
    clock = clock or SystemClock()
    paths = HubHome(Path(home))
    leftovers = [
        p.name
        for p in (paths.config_file, paths.keys, paths.tuf, paths.admin_token, paths.trust_root)
        if p.exists()
    ]
    if leftovers:
        raise ConfigError(
            f"{paths.root} is already initialised (found {', '.join(leftovers)}); "
            "use another folder or remove it first"
        )
    try:
        paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(paths.root, 0o700)
        paths.artefacts.mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {paths.root}: {e.strerror or e}") from e
    config = HubConfig(
        home=paths.root, database_url=database_url or "", key_passphrase=key_passphrase
    )
    engine = db.make_engine(config.database_url)
    try:
        db.migrate(engine)
        generate_keys(paths.keys, key_passphrase, now=clock.now())
        ensure_signing_key(paths.keys, key_passphrase)  # issue 10: encrypted like the rest
        counters = DbRoleCounters(db.make_sessionmaker(engine))
        trust = HubTrust.init(
            paths.tuf, paths.keys, clock, counters=counters, passphrase=key_passphrase
        )
    finally:
        engine.dispose()
    atomic_write_bytes(paths.trust_root, trust.trust_root_bundle(), mode=0o644)
    # The config file goes last: it marks the home as complete.
    atomic_write_text(paths.config_file, render_config_toml(config), mode=0o600)
    # Imported here: modelfleet.hub.service imports this module.
    from modelfleet.hub.service import HubService

    service = HubService(config, clock, migrate_db=False)
    try:
        token = service.create_token(Role.ADMIN, "admin", actor="system:init")
    finally:
        service.close()
    atomic_write_text(paths.admin_token, token + "\n", mode=0o600)
    return token

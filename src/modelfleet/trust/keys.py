"""The hub's signing keys: files (encrypted at rest), signer URIs, or offline (issue 10).

Key folder layout (``HOME/keys``)::

    registry.json                  which key serves which role (see key_registry)
    root.pem  targets.pem  ...     the keys made by ``init`` (PKCS#8 PEM, mode 0600)
    <role>-<keyid16>.pem           keys made later by ``modelfleet keys create|rotate``

``root`` signs the root metadata of both repositories; ``targets``, ``snapshot`` and
``timestamp`` sign the catalog's top-level roles; the online ``director`` key signs the
director's targets, snapshot and timestamp.

A key's private half may also live behind a securesystemslib signer URI (``hsm:`` for a
PKCS#11 token, ``gcpkms:``, ``awskms:``...), loaded with
:meth:`securesystemslib.signer.Signer.from_priv_key_uri`, so an HSM or cloud KMS plugs in
without code here; or nowhere on this machine (``offline``: the root key, kept on an
air-gapped machine; the hub then signs no root itself, see ``modelfleet keys sign-root``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.exceptions import UnsupportedLibraryError
from securesystemslib.signer import CryptoSigner, Key, Signature, Signer

from modelfleet.errors import ConfigError
from modelfleet.trust._key_files import read_private_key, write_private_key
from modelfleet.trust.key_registry import (
    OFFLINE,
    ROLES,
    KeyRecord,
    KeyRegistry,
    KeyState,
    public_dict,
)

__all__ = [
    "ROLES",
    "OfflineSigner",
    "SecretsHandler",
    "generate_keys",
    "import_uri_public_key",
    "key_file",
    "load_signers",
    "new_file_key",
    "new_uri_key",
    "online_key_path",
    "pin_handler",
    "signer_for",
    "uri_signer",
]

SecretsHandler = Callable[[str], str]
"""Answers a signer's request for a secret (an HSM's ``"pin"``)."""


class OfflineSigner(Signer):
    """Stands for a key whose private half is not on this machine: signing is refused.

    The hub keeps working with an offline root key; only a new root version needs the
    offline ceremony (``modelfleet keys export-root`` / ``sign-root`` / ``apply-root``).
    """

    def __init__(self, public_key: Key, role: str) -> None:
        self._public_key = public_key
        self.role = role

    @property
    def public_key(self) -> Key:
        return self._public_key

    @classmethod
    def from_priv_key_uri(
        cls, priv_key_uri: str, public_key: Key, secrets_handler: SecretsHandler | None = None
    ) -> OfflineSigner:
        raise ConfigError("an offline key has no private key URI")

    def sign(self, payload: bytes) -> Signature:
        """Raises:
        ConfigError: always (the key is offline)."""
        what = "targets" if self.role == "targets" else "root"
        raise ConfigError(
            f"the {self.role} key {self._public_key.keyid[:16]} is offline: sign on the "
            f"offline machine (`modelfleet keys export-{what}` / `sign-{what}` / "
            f"`apply-{what}`)"
        )


def pin_handler(pin: str) -> SecretsHandler | None:
    """A secrets handler answering an HSM's ``"pin"`` request with ``pin`` (None: none)."""
    if not pin:
        return None

    def answer(secret: str) -> str:
        if secret != "pin":
            raise ConfigError(f"a signer asks for {secret!r}, which modelfleet cannot give")
        return pin

    return answer


def key_file(key_dir: Path, role: str) -> Path:
    """Return the PEM file ``init`` writes for ``role`` in ``key_dir``."""
    return Path(key_dir) / f"{role}.pem"


def generate_keys(
    key_dir: Path, passphrase: bytes | None = None, now: datetime | None = None
) -> None:
    """Create a fresh ed25519 key for every role in :data:`ROLES` and the key registry.

    Args:
        key_dir: folder to hold the keys; created (mode 0700) if missing.
        passphrase: encrypts every key file when given (recommended); None writes the
            legacy unencrypted files (loading them warns).
        now: creation time recorded in the registry (the system time if None).

    Raises:
        ConfigError: a key file already exists there (keys are never overwritten:
            replacing them would orphan every device that trusts the old ones), or the
            passphrase is empty.
        StorageError: the folder is not writable.
    """
    key_dir = Path(key_dir)
    existing = [r for r in ROLES if key_file(key_dir, r).exists()]
    if existing:
        raise ConfigError(
            f"refusing to overwrite existing keys in {key_dir}: {', '.join(existing)}"
        )
    try:
        key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create key folder {key_dir}: {e.strerror or e}") from e
    registry = KeyRegistry(key_dir)
    for role in ROLES:
        private = Ed25519PrivateKey.generate()
        write_private_key(key_file(key_dir, role), private, passphrase)
        public = CryptoSigner(private).public_key
        created = now or datetime.now(UTC)
        registry.put(
            KeyRecord(
                keyid=public.keyid,
                role=role,
                state=KeyState.ACTIVE,
                created=created,
                public=public_dict(public),
                location=f"file:{key_file(key_dir, role).name}",
            )
        )
    registry.save()


def new_file_key(
    key_dir: Path,
    role: str,
    now: datetime,
    passphrase: bytes | None,
    out: Path | None = None,
) -> tuple[KeyRecord, Signer]:
    """Generate an ed25519 key for ``role``; the record is ``pending`` (not yet in a root).

    Args:
        key_dir: the hub's key folder (the file goes there unless ``out`` is given).
        role: one of :data:`ROLES`.
        now: creation time.
        passphrase: encrypts the file when given.
        out: write the private key here instead (an offline key: the record's location is
            ``offline``; carry the file to the offline machine).

    Returns:
        The new record (not yet in the registry) and a signer for it.

    Raises:
        ConfigError: ``out`` already exists, or an empty passphrase.
        StorageError: the file could not be written.
    """
    private = Ed25519PrivateKey.generate()
    signer = CryptoSigner(private)
    keyid = signer.public_key.keyid
    if out is not None:
        if Path(out).exists():
            raise ConfigError(f"refusing to overwrite {out}")
        write_private_key(Path(out), private, passphrase)
        location = OFFLINE
    else:
        name = f"{role}-{keyid[:16]}.pem"
        write_private_key(Path(key_dir) / name, private, passphrase)
        location = f"file:{name}"
    record = KeyRecord(
        keyid=keyid,
        role=role,
        state=KeyState.PENDING,
        created=now,
        public=public_dict(signer.public_key),
        location=location,
    )
    return record, signer


def new_uri_key(role: str, now: datetime, uri: str, public_key: Key) -> KeyRecord:
    """A ``pending`` record for a key behind a signer URI (an HSM or KMS key).

    Args:
        role: one of :data:`ROLES`.
        now: creation time.
        uri: the securesystemslib private key URI (e.g. from ``HSMSigner.import_()``).
        public_key: its public key.
    """
    return KeyRecord(
        keyid=public_key.keyid,
        role=role,
        state=KeyState.PENDING,
        created=now,
        public=public_dict(public_key),
        location=f"uri:{uri}",
    )


def signer_for(
    record: KeyRecord,
    key_dir: Path,
    passphrase: bytes | None = None,
    secrets: SecretsHandler | None = None,
) -> Signer:
    """The signer of one registry record.

    Args:
        record: the key.
        key_dir: the key folder its file lives in.
        passphrase: for an encrypted key file.
        secrets: answers a URI signer's secret requests (an HSM's PIN).

    Raises:
        ConfigError: the file is unusable (see :func:`read_private_key`), not the key the
            registry names, or the URI signer cannot be loaded (e.g. the ``hsm`` extra is
            not installed).
    """
    if record.file is not None:
        path = Path(key_dir) / record.file
        private = read_private_key(path, passphrase)
        if record.public["keytype"] == "ed25519" and not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"signing key {path} is not an ed25519 key")
        try:
            signer = CryptoSigner(private)
        except ValueError as e:
            raise ConfigError(f"signing key {path}: unsupported key type ({e})") from e
        if signer.public_key.keyid != record.keyid:
            raise ConfigError(
                f"signing key {path} is not key {record.keyid[:16]} named in the registry"
            )
        return signer
    if record.uri is not None:
        return uri_signer(record.uri, record.public_key, secrets)
    return OfflineSigner(record.public_key, record.role)


def uri_signer(uri: str, public_key: Key, secrets: SecretsHandler | None = None) -> Signer:
    """The securesystemslib signer behind ``uri`` (``hsm:``, ``gcpkms:``, ``file2:``...).

    Raises:
        ConfigError: the URI's scheme is unknown, its library is not installed (the
            ``hsm`` extra for ``hsm:``), or the signer refuses the public key.
    """
    try:
        return Signer.from_priv_key_uri(uri, public_key, secrets)
    except UnsupportedLibraryError as e:
        raise ConfigError(f"cannot load signer {uri}: {e} (modelfleet[hsm] for hsm:)") from e
    except (ValueError, KeyError) as e:
        raise ConfigError(f"cannot load signer {uri}: {e}") from e


def import_uri_public_key(uri: str, secrets: SecretsHandler | None = None) -> Key:
    """Read the public key of a PKCS#11 key named by an ``hsm:<keyid>[?label=...]`` URI.

    Raises:
        ConfigError: not an ``hsm:`` URI (give the public key then), the ``hsm`` extra is
            missing, ``PYKCS11LIB`` is unset, or no such token or key.
    """
    from urllib import parse

    parsed = parse.urlparse(uri)
    if parsed.scheme != "hsm":
        raise ConfigError(f"give the public key of {uri} (only hsm: keys are read from the signer)")
    try:
        from securesystemslib.signer import HSMSigner

        hsm_keyid = int(parsed.path) if parsed.path else None
        label = dict(parse.parse_qsl(parsed.query)).get("label")
        _, key = HSMSigner.import_(hsm_keyid, label, secrets)
    except UnsupportedLibraryError as e:
        raise ConfigError(f"{uri}: {e} (install modelfleet[hsm])") from e
    except (ValueError, KeyError) as e:
        raise ConfigError(f"{uri}: {e}") from e
    except Exception as e:  # python-pkcs11 raises its own tree (PKCS11Error)
        raise ConfigError(f"{uri}: the PKCS#11 token refused: {type(e).__name__} {e}") from e
    return key


def load_signers(
    key_dir: Path,
    passphrase: bytes | None = None,
    secrets: SecretsHandler | None = None,
) -> dict[str, Signer]:
    """Load every role's active key as a securesystemslib signer.

    With several active keys for a role, the newest loadable one signs. A role whose
    only keys are offline gets an :class:`OfflineSigner`. With no active ``snapshot``
    key the catalog's snapshot is signed with the timestamp key (issue 10, ADR 0043).

    Args:
        key_dir: the key folder (registry, or the legacy ``<role>.pem`` files).
        passphrase: for encrypted key files.
        secrets: answers URI signers' secret requests (an HSM's PIN).

    Returns:
        ``{role: signer}`` for every role in :data:`ROLES`.

    Raises:
        ConfigError: a role has no active key, or a key is unusable.
    """
    registry = KeyRegistry.load(key_dir)
    signers: dict[str, Signer] = {}
    for role in ROLES:
        records = registry.active(role)
        if not records and role == "snapshot" and registry.active("timestamp"):
            continue  # the catalog's snapshot is signed with the timestamp key (ADR 0043)
        if not records:
            raise ConfigError(
                f"signing key {key_file(key_dir, role)} is missing (run key generation)"
            )
        online = [r for r in records if r.location != OFFLINE]
        chosen = online[-1] if online else records[-1]
        signers[role] = signer_for(chosen, key_dir, passphrase, secrets)
    signers.setdefault("snapshot", signers["timestamp"])
    return signers


def online_key_path(key_dir: Path, role: str) -> Path | None:
    """The key file of ``role``'s newest active file key (what worker processes load), or
    None when that role's key is not a file here."""
    files = [r for r in KeyRegistry.load(key_dir).active(role) if r.file is not None]
    if not files:
        return None
    assert files[-1].file is not None
    path = Path(key_dir) / files[-1].file
    return path if os.path.exists(path) else None

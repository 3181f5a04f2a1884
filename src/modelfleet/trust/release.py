"""Release approvals (issue 10, ADR 0027): one delegated catalog role per package version,
signed by a threshold of release keys that never leave their approvers' machines.

The hub builds the role's *signed* part (a ``targets`` role listing the version's model and
manifest, with their compatibility fields) and hands out its canonical bytes; each approver
checks what they name (:func:`check_release_bytes`), signs them locally
(:func:`sign_release`) and posts only the signature. The hub verifies each signature
(:func:`verify_release_signature`); when a threshold of distinct release keys has signed,
the catalog's top-level targets delegates the version's paths to the role with those keys
and that threshold (:meth:`~modelfleet.trust.repository.TufRepository.delegate_release`),
and python-tuf's ngclient checks the threshold on every device.

Pure functions over bytes and keys: no files but the key file :func:`load_release_signer`
reads, no clock.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import CryptoSigner, Key, Signature, SSlibKey
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization import DeserializationError

from modelfleet._atomic import atomic_write_bytes
from modelfleet.errors import ConfigError, InvalidInputError
from modelfleet.rollout.desired_state import manifest_target_path, model_target_path

__all__ = [
    "RELEASE_ROLE_PREFIX",
    "build_release_bytes",
    "check_release_bytes",
    "load_release_signer",
    "new_release_key",
    "public_key_from_pem",
    "public_pem",
    "release_paths",
    "release_role_name",
    "sign_release",
    "verify_release_signature",
]

RELEASE_ROLE_PREFIX = "release."
"""Every release role's name starts with this: ``release.<model>.v<version>``."""

_HEX = re.compile(r"^[0-9a-f]{1,1024}$")


def release_role_name(name: str, version: int) -> str:
    """The delegated role of one package version: ``release.<name>.v<version>``.

    Unique per (name, version): the version is the digits after the last ``.v``. The name
    has no ``/`` (model names are checked at registration), so it is also a plain file
    name in consistent-snapshot form (``1.release.iris.v2.json``).
    """
    return f"{RELEASE_ROLE_PREFIX}{name}.v{int(version)}"


def release_paths(name: str, version: int) -> list[str]:
    """The target paths a release role may list (its delegation's ``paths``)."""
    return [model_target_path(name, version), manifest_target_path(name, version)]


def build_release_bytes(
    name: str,
    version: int,
    model: tuple[int, str, dict[str, Any] | None],
    manifest: tuple[int, str],
    expires: datetime,
) -> bytes:
    """The canonical bytes approvers sign: version 1 of the role, listing the package.

    Args:
        name, version: the package.
        model: ``(length, sha256, custom fields)`` of the model artefact.
        manifest: ``(length, sha256)`` of the manifest.
        expires: when the role stops verifying (devices refuse it after that; the
            version must then be approved again).
    """
    m_len, m_sha, custom = model
    f_len, f_sha = manifest
    mpath, fpath = release_paths(name, version)
    targets = {
        mpath: TargetFile(
            m_len, {"sha256": m_sha}, mpath, {"custom": dict(custom)} if custom else None
        ),
        fpath: TargetFile(f_len, {"sha256": f_sha}, fpath),
    }
    return Metadata(Targets(version=1, expires=expires, targets=targets)).signed_bytes


def check_release_bytes(signed: bytes, name: str, version: int) -> Targets:
    """Parse bytes handed out for signing and check they list exactly this package.

    An approver runs this before signing, so a hub cannot have another package signed.

    Returns:
        The parsed role (the caller shows its digests).

    Raises:
        InvalidInputError: not a targets role, or it lists other paths or delegates.
    """
    try:
        md = Metadata[Targets].from_bytes(b'{"signed": ' + signed + b', "signatures": []}')
    except DeserializationError as e:
        raise InvalidInputError(f"the release metadata is malformed: {e}") from e
    role = md.signed
    if not isinstance(role, Targets) or role.delegations is not None:
        raise InvalidInputError("the release metadata is not a plain targets role")
    if md.signed_bytes != signed:
        raise InvalidInputError("the release metadata is not in canonical form")
    if sorted(role.targets) != sorted(release_paths(name, version)):
        raise InvalidInputError(
            f"the release metadata lists {sorted(role.targets)}, not {name} version {version}"
        )
    return role


def public_key_from_pem(pem: bytes) -> Key:
    """The public release key in a PEM file (a public key, or a private key's public half).

    Raises:
        InvalidInputError: not a PEM ed25519 key, or an encrypted private key.
    """
    try:
        if b"PRIVATE KEY" in pem:
            private = load_pem_private_key(pem, password=None)
            if not isinstance(private, Ed25519PrivateKey):
                raise InvalidInputError("release keys must be ed25519 keys")
            public = private.public_key()
        else:
            loaded = load_pem_public_key(pem)
            if not isinstance(loaded, Ed25519PublicKey):
                raise InvalidInputError("release keys must be ed25519 keys")
            public = loaded
    except (ValueError, TypeError) as e:
        raise InvalidInputError(f"not a PEM ed25519 key: {e}") from e
    return SSlibKey.from_crypto(public)


def public_pem(pem: bytes) -> bytes:
    """The SubjectPublicKeyInfo PEM of a PEM ed25519 key (public or private): what is sent
    to the hub when a release key is registered; a private key never is.

    Raises:
        InvalidInputError: not a PEM ed25519 key.
    """
    key = public_key_from_pem(pem)
    raw = bytes.fromhex(str(key.keyval["public"]))
    return Ed25519PublicKey.from_public_bytes(raw).public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )


def new_release_key(path: Path) -> Key:
    """Write a fresh ed25519 release key to ``path`` (PKCS#8 PEM, mode 0600) and its
    public half to ``path`` + ``.pub``; the approver keeps the private file.

    Raises:
        ConfigError: ``path`` exists (a release key is never overwritten).
        StorageError: the folder is not writable.
    """
    path = Path(path)
    if path.exists():
        raise ConfigError(f"refusing to overwrite {path}")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    atomic_write_bytes(path, pem, mode=0o600)
    pub = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(path.with_name(path.name + ".pub"), pub)
    return SSlibKey.from_crypto(private.public_key())


def load_release_signer(path: Path) -> CryptoSigner:
    """The approver's signer from an unencrypted PEM ed25519 private key file.

    Raises:
        ConfigError: the file is missing, unreadable, not a private ed25519 key.
    """
    try:
        pem = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read release key {path}: {e.strerror or e}") from e
    try:
        private = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"release key {path} is not an unencrypted PEM private key") from e
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"release key {path} is not an ed25519 key")
    return CryptoSigner(private)


def sign_release(signer: CryptoSigner, signed: bytes) -> Signature:
    """Sign the canonical bytes (on the approver's machine)."""
    return signer.sign(signed)


def verify_release_signature(key: Key, signed: bytes, keyid: str, sig: str) -> None:
    """Check one posted signature over the canonical bytes.

    Raises:
        InvalidInputError: the key id is not ``key``'s, the signature is not hex, or it
            does not verify.
    """
    if keyid != key.keyid:
        raise InvalidInputError(f"signature key id {keyid!r} does not match the release key")
    if not isinstance(sig, str) or not _HEX.match(sig):
        raise InvalidInputError("the signature must be lower-case hex")
    try:
        key.verify_signature(Signature(keyid, sig), signed)
    except UnverifiedSignatureError as e:
        raise InvalidInputError(
            f"the signature by release key {keyid[:12]} does not verify over the release "
            "metadata (signed other bytes, or with another key)"
        ) from e

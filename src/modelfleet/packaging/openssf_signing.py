"""OpenSSF model signing of every package (issue 10), with the ``model-signing`` library.

Each registered version's model file is also signed as a model-signing *model folder*
holding one file, ``model.onnx``, with the hub's EC private key (``model-signing.key``
beside the hub's other keys; model-signing supports only EC P-256/384/521 keys, not
ed25519). The result is a Sigstore bundle (``model.sig``) that anyone can check outside
modelfleet with that project's own CLI::

    mkdir detector && cp model.onnx detector/
    model_signing verify key --signature model.sig --public_key model-signing.pub detector

The key is encrypted at rest with the hub's key passphrase like the TUF keys (issue 10,
:mod:`modelfleet.trust._key_files`); model-signing takes the key *file* and its password
(``use_elliptic_key_signer(private_key=..., password=...)``) and decrypts it in memory
itself, so no decrypted copy is ever written.

The bundle's subject digest (sha256 over the model folder's manifest) and the bundle's own
sha256 are bound into the TUF target's ``custom`` fields (:func:`custom_fields`), so the
two checks refer to each other. ``model-signing`` comes with the ``signing`` extra (the
hub extra pulls it in); without it :func:`sign_model` raises ``ModuleNotFoundError``
naming the extra.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from modelfleet._atomic import atomic_write_bytes
from modelfleet.errors import ArtefactVerificationError, ConfigError
from modelfleet.trust._key_files import create_private_key, is_encrypted, read_private_key

__all__ = [
    "MODEL_FILE",
    "SIGNATURE_FILE",
    "SIGNING_KEY_NAME",
    "SIGNING_PUBLIC_KEY_NAME",
    "ModelSignature",
    "custom_fields",
    "ensure_signing_key",
    "read_signature",
    "sign_model",
    "verify_model",
]

MODEL_FILE = "model.onnx"
SIGNATURE_FILE = "model.sig"
SIGNING_KEY_NAME = "model-signing.key"
SIGNING_PUBLIC_KEY_NAME = "model-signing.pub"
#: Key of the TUF target ``custom`` object that carries the binding.
CUSTOM_KEY = "model_signing"
_HINT = "pip install 'modelfleet[signing]'"
_WHAT = "model-signing key"


@dataclass(frozen=True)
class ModelSignature:
    """One model-signing bundle and what the TUF target binds of it.

    Attributes:
        bundle: the Sigstore bundle's bytes (the ``model.sig`` file).
        subject_sha256: the signed statement's subject digest (the whole model folder).
        bundle_sha256: sha256 of ``bundle``.
        key_sha256: sha256 of the signing public key's PEM (model-signing's key hint).
    """

    bundle: bytes
    subject_sha256: str
    bundle_sha256: str
    key_sha256: str

    def to_dict(self) -> dict[str, Any]:
        """The fields recorded in the package manifest and the TUF target (no bundle)."""
        return {
            "format": "model-signing/v1",
            "subject_sha256": self.subject_sha256,
            "bundle_sha256": self.bundle_sha256,
            "bundle_length": len(self.bundle),
            "key_sha256": self.key_sha256,
        }


def _library() -> Any:
    try:
        import model_signing
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"OpenSSF model signing needs the signing extra (no module {e.name!r}): {_HINT}",
            name="model_signing",
        ) from e
    return model_signing


def ensure_signing_key(key_dir: Path, passphrase: bytes | None = None) -> Path:
    """The hub's model-signing key ``key_dir/model-signing.key`` (EC P-256, PKCS#8 PEM,
    mode 0600), created with its public half ``model-signing.pub`` when missing. Two
    processes creating it at once agree on one key (linked into place only if absent).

    Args:
        key_dir: the hub's key folder.
        passphrase: the hub's key passphrase: a new key is written encrypted with it and
            an encrypted one read with it; None writes an unencrypted key (loading an
            unencrypted key warns once).

    Returns:
        The private key's path.

    Raises:
        ConfigError: the key cannot be created or read, is not an EC key, is encrypted
            without a passphrase given, or the passphrase is wrong.
    """
    path = Path(key_dir) / SIGNING_KEY_NAME
    if not path.exists():
        create_private_key(path, ec.generate_private_key(ec.SECP256R1()), passphrase, _WHAT)
    key = read_private_key(path, passphrase, what=_WHAT)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"model-signing key {path} is not an EC key (P-256/384/521)")
    public = path.with_name(SIGNING_PUBLIC_KEY_NAME)
    pem = _public_pem(key)
    if not public.exists() or public.read_bytes() != pem:
        atomic_write_bytes(public, pem)
    return path


def _public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _hashing_config(ms: Any) -> Any:
    # The bundle may sit inside the model folder (as model-signing's CLI puts it).
    return (
        ms.hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256")
        .set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=True)
    )


def sign_model(
    model: bytes,
    key_file: Path,
    folder_name: str = "model",
    passphrase: bytes | None = None,
) -> ModelSignature:
    """Sign ``model`` as a model folder holding only ``model.onnx``.

    Args:
        model: the ONNX bytes.
        key_file: EC private key PEM (see :func:`ensure_signing_key`).
        folder_name: the folder's name, recorded as the statement's subject name.
        passphrase: the key file's passphrase, if it is encrypted. model-signing reads
            the file and decrypts it in memory (its ``password``; the bytes go to
            ``cryptography``'s ``load_pem_private_key`` as they are).

    Raises:
        ModuleNotFoundError: the ``signing`` extra is not installed (the message says so).
        ConfigError: the key cannot be used.
    """
    ms = _library()
    with tempfile.TemporaryDirectory(prefix="modelfleet-sign-") as tmp:
        folder = Path(tmp) / folder_name
        folder.mkdir()
        (folder / MODEL_FILE).write_bytes(model)
        sig = Path(tmp) / SIGNATURE_FILE
        try:
            encrypted = is_encrypted(Path(key_file).read_bytes())
            (
                ms.signing.Config()
                .use_elliptic_key_signer(
                    private_key=key_file, password=passphrase if encrypted else None
                )
                .set_hashing_config(_hashing_config(ms))
                .sign(folder, sig)
            )
        except (ValueError, TypeError, OSError) as e:
            raise ConfigError(f"model signing with {key_file} failed: {e}") from e
        bundle = sig.read_bytes()
    return read_signature(bundle)


def read_signature(bundle: bytes) -> ModelSignature:
    """Parse a model-signing bundle (no verification): its subject digest and key hint.

    Raises:
        ArtefactVerificationError: not a model-signing bundle.
    """
    try:
        doc = orjson.loads(bundle)
        envelope = doc["dsseEnvelope"]
        statement = orjson.loads(base64.b64decode(envelope["payload"]))
        subject = statement["subject"][0]["digest"]["sha256"]
        hint = doc.get("verificationMaterial", {}).get("publicKey", {}).get("hint", "")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as e:
        raise ArtefactVerificationError(f"not a model-signing bundle: {e}") from e
    return ModelSignature(bundle, str(subject), hashlib.sha256(bundle).hexdigest(), str(hint))


def verify_model(model_dir: Path, signature: Path, public_key: Path) -> None:
    """Verify a model folder against its bundle and the hub's public key, offline.

    Raises:
        ArtefactVerificationError: a file differs, is missing or extra, or the signature
            is not the key's.
        ModuleNotFoundError: the ``signing`` extra is not installed.
    """
    ms = _library()
    try:
        ms.verifying.Config().use_elliptic_key_verifier(public_key=public_key).set_hashing_config(
            _hashing_config(ms)
        ).verify(model_dir, signature)
    except (ValueError, OSError) as e:
        raise ArtefactVerificationError(f"model signature of {model_dir}: {e}") from e


def custom_fields(signature: dict[str, Any], bundle_target: str) -> dict[str, Any]:
    """The TUF target ``custom`` entry that binds a model target to its bundle.

    Args:
        signature: :meth:`ModelSignature.to_dict` (as kept in the manifest).
        bundle_target: the bundle's TUF target path.
    """
    return {CUSTOM_KEY: {**signature, "bundle": bundle_target}}

"""``modelfleet keys``: the hub's signing keys (issue 10, ADR 0025).

Run on the hub's machine, on its home folder (``--home``), except ``sign-root``, which runs
on the offline machine holding a root key:

* ``list``: every key, its role, state, where it lives, and the roots listing it.
* ``create ROLE [--out FILE | --signer-uri URI [--public-key PEM]]``: add a key to a role.
* ``rotate ROLE [...]``: replace the role's keys by a new one (root: the next roots are
  signed by the old and the new root key, so devices follow the chain; director: every
  device's own director repository is re-signed with the new key too, ADR 0039).
* ``retire KEYID``: take a key out of the roots (or drop a pending one).
* ``encrypt``: encrypt the unencrypted key files (TUF role keys, audit key, model-signing
  key) with the passphrase.
* ``export-root --out FILE`` / ``sign-root`` / ``apply-root --signed FILE`` /
  ``discard-root``: the offline root ceremony.
* ``export-targets --out FILE`` / ``sign-targets`` / ``apply-targets --signed FILE``: the
  offline targets ceremony, when the catalog's targets key is offline (ADR 0043); ``rotate
  snapshot --timestamp-key`` signs the catalog's snapshot with the timestamp key, so only
  the director's and the timestamp's keys stay online.

Key files are encrypted with the passphrase from ``--passphrase-file`` or
``MODELFLEET_KEY_PASSPHRASE``; an HSM's PIN comes from ``MODELFLEET_HSM_PIN``, its PKCS#11
module from ``PYKCS11LIB`` (read by securesystemslib).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelfleet.cli._errors import UsageError, require_extra
from modelfleet.cli._hub_options import JsonOpt
from modelfleet.cli._output import console, print_json, table

if TYPE_CHECKING:
    from securesystemslib.signer import Key, Signer

    from modelfleet.trust.key_admin import KeyAdmin, KeyChange
    from modelfleet.trust.root_signing import RootBundle

__all__ = ["PassphraseFileOpt", "read_passphrase", "register"]

ENV_PASSPHRASE = "MODELFLEET_KEY_PASSPHRASE"
ENV_HSM_PIN = "MODELFLEET_HSM_PIN"

PassphraseFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help=f"File holding the key passphrase (default: ${ENV_PASSPHRASE}).",
        show_default=False,
    ),
]
HomeOpt = Annotated[Path, typer.Option("--home", help="Hub home made by `modelfleet init`.")]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Write the new private key here (an offline key), not in HOME."),
]
UriOpt = Annotated[
    str,
    typer.Option(
        "--signer-uri",
        help="The new key is behind this securesystemslib signer URI (hsm:2?label=..., a KMS).",
    ),
]
SignThroughOpt = Annotated[
    str, typer.Option("--signer-uri", help="Sign through this signer URI (hsm:...).")
]
PublicOpt = Annotated[
    Path | None,
    typer.Option("--public-key", help="PEM public key of --signer-uri (hsm: reads it itself)."),
]


def read_passphrase(file: Path | None, environ: Mapping[str, str]) -> bytes | None:
    """The key passphrase: the file's content (one trailing newline dropped), else
    ``MODELFLEET_KEY_PASSPHRASE``, else None.

    Raises:
        UsageError: the file cannot be read or is empty.
    """
    if file is not None:
        try:
            data = file.read_bytes().rstrip(b"\r\n")
        except OSError as e:
            raise UsageError(f"--passphrase-file: cannot read {file}: {e.strerror or e}") from e
        if not data:
            raise UsageError(f"--passphrase-file: {file} is empty")
        return data
    value = environ.get(ENV_PASSPHRASE, "")
    return value.encode("utf-8") if value else None


@contextlib.contextmanager
def _admin(home: Path, passphrase_file: Path | None) -> Iterator[KeyAdmin]:
    with _key_change(home, passphrase_file) as (admin, _):
        yield admin


@contextlib.contextmanager
def _key_change(
    home: Path, passphrase_file: Path | None
) -> Iterator[tuple[KeyAdmin, Callable[[KeyChange], KeyChange]]]:
    """The home's :class:`KeyAdmin`, and what finishes a change in the hub's database:
    when the director's online key changed, every device's own director repository is
    re-signed with the new key (issue 10, ADR 0039; a running hub, or the next start,
    finishes it if this is interrupted)."""
    require_extra("hub", "sqlalchemy", "alembic", what="`modelfleet keys`")
    from modelfleet.cli.agent_cmds import sim_clock
    from modelfleet.clock import SystemClock
    from modelfleet.errors import ConfigError
    from modelfleet.hub import db
    from modelfleet.hub.config import load_hub_config
    from modelfleet.hub.tuf_versions import DbRoleCounters
    from modelfleet.trust.hub_trust import HubTrust
    from modelfleet.trust.key_admin import KeyAdmin
    from modelfleet.trust.keys import pin_handler

    config = load_hub_config(home, os.environ)
    if not config.paths.is_initialised():
        raise ConfigError(f"{home} is not an initialised hub home; run `modelfleet init HOME`")
    passphrase = read_passphrase(passphrase_file, os.environ) or config.key_passphrase
    secrets = pin_handler(config.hsm_pin)
    clock = sim_clock(os.environ) or SystemClock()
    engine = db.make_engine(config.database_url)
    try:
        counters = DbRoleCounters(db.make_sessionmaker(engine))
        trust = HubTrust.open(
            config.paths.tuf,
            config.paths.keys,
            clock,
            counters=counters,
            passphrase=passphrase,
            secrets=secrets,
        )
        admin = KeyAdmin(
            config.paths.keys,
            trust,
            clock,
            passphrase,
            secrets,
            trust_root_file=config.paths.trust_root,
        )

        def resign_devices(change: KeyChange) -> KeyChange:
            director_roles = {f"director/{r}" for r in ("targets", "snapshot", "timestamp")}
            if change.pending or not director_roles & set(change.written):
                return change
            from modelfleet.catalog.artefacts import FileArtefactStore
            from modelfleet.hub.catalog import Catalog
            from modelfleet.hub.context import HubContext
            from modelfleet.hub.director import Director

            db.migrate(engine)  # as the hub does at its start
            ctx = HubContext(config, clock, engine, db.make_sessionmaker(engine))
            store = FileArtefactStore(config.paths.artefacts)
            director = Director(ctx, store, trust, Catalog(ctx, store))
            stale = director.mark_stale()
            director.publish()  # the catalog first, then every dirty device (as `repair`)
            return replace(change, written=[*change.written, f"director/devices: {stale}"])

        try:
            yield admin, resign_devices
        finally:
            trust.close()
    finally:
        engine.dispose()


def _public_key(uri: str, public_key: Path | None) -> Key:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.signer import SSlibKey

    from modelfleet.trust.keys import import_uri_public_key, pin_handler

    if public_key is not None:
        try:
            return SSlibKey.from_crypto(load_pem_public_key(public_key.read_bytes()))
        except (OSError, ValueError, TypeError) as e:
            raise UsageError(f"--public-key: {public_key} is not a PEM public key: {e}") from e
    return import_uri_public_key(uri, pin_handler(os.environ.get(ENV_HSM_PIN, "")))


def _print_change(change: KeyChange, json_out: bool) -> None:
    if json_out:
        print_json(change.to_dict())
        return
    verb = change.action
    if change.pending:
        console.print(
            f"[yellow]{verb} {change.role}: the next roots need offline signatures[/] "
            "(`modelfleet keys export-root --out FILE`, `keys sign-root` on the offline "
            "machine, then `keys apply-root --signed FILE`)"
        )
    else:
        console.print(f"[green]{verb} {change.role}[/]")
    for keyid in change.added:
        console.print(f"  added   {keyid}")
    for keyid in change.retired:
        console.print(f"  retired {keyid}")
    if change.written:
        console.print(f"  signed  {', '.join(change.written)}")
    _print_status(change.status)


def _print_staged(staged: Mapping[str, Any] | None) -> None:
    if staged is None:
        return
    console.print(
        f"[yellow]The catalog's targets version {staged['version']} waits for its offline "
        "signature[/] (`modelfleet keys export-targets --out FILE`, `keys sign-targets` on "
        "the offline machine, then `keys apply-targets --signed FILE`)"
    )
    for label, key in (
        ("adds", "added"),
        ("removes", "removed"),
        ("delegates", "delegated"),
        ("drops", "undelegated"),
    ):
        if staged[key]:
            console.print(f"  {label:9} {', '.join(staged[key])}")


def _print_status(status: Mapping[str, Mapping[str, Any]]) -> None:
    if not status:
        return
    table(
        "Next roots",
        ["repository", "version", "current keys", "new keys", "ready"],
        [
            (
                repo,
                s["version"],
                f"{s['current_signed']}/{s['current_threshold']}",
                f"{s['new_signed']}/{s['new_threshold']}",
                "yes" if s["ready"] else "no",
            )
            for repo, s in status.items()
        ],
    )


def register(app: typer.Typer) -> None:
    """Attach the ``keys`` group to ``app``."""
    keys_app = typer.Typer(
        help="Create, list, rotate and retire the hub's signing keys; sign roots offline.",
        no_args_is_help=True,
    )
    app.add_typer(keys_app, name="keys")

    @keys_app.command("list")
    def keys_list(
        home: HomeOpt, passphrase_file: PassphraseFileOpt = None, json_out: JsonOpt = False
    ) -> None:
        """List the hub's keys: role, state, where each lives, the roots listing it."""
        with _admin(home, passphrase_file) as admin:
            keys = admin.keys()
            staged = admin.staged_targets()
        if json_out:
            print_json(keys)
            return
        table(
            "Signing keys",
            ["key id", "role", "state", "location", "in roots", "created", "retired"],
            [
                (
                    k["keyid"][:16],
                    k["role"],
                    k["state"],
                    k["location"],
                    ", ".join(k["in_roots"]) or "-",
                    k["created"],
                    k["retired"] or "-",
                )
                for k in keys
            ],
        )
        _print_staged(staged)

    def _change(
        action: str,
        role: str,
        home: Path,
        out: Path | None,
        signer_uri: str,
        public_key: Path | None,
        passphrase_file: Path | None,
        timestamp_key: bool = False,
    ) -> KeyChange:
        from modelfleet.trust.key_registry import ROLES

        if role not in ROLES:
            raise UsageError(f"unknown key role {role!r}; one of {', '.join(ROLES)}")
        if timestamp_key:
            if role != "snapshot" or out is not None or signer_uri or public_key is not None:
                raise UsageError("--timestamp-key goes alone, with `rotate snapshot`")
            with _key_change(home, passphrase_file) as (admin, finish):
                return finish(admin.sign_snapshot_with_timestamp_key())
        if out is not None and signer_uri:
            raise UsageError("give either --out or --signer-uri, not both")
        if public_key is not None and not signer_uri:
            raise UsageError("--public-key goes with --signer-uri")
        key = _public_key(signer_uri, public_key) if signer_uri else None
        with _key_change(home, passphrase_file) as (admin, finish):
            method = admin.create if action == "create" else admin.rotate
            return finish(method(role, out=out, uri=signer_uri or None, public_key=key))

    @keys_app.command("create")
    def keys_create(
        role: Annotated[
            str, typer.Argument(help="root, targets, snapshot, timestamp or director.")
        ],
        home: HomeOpt,
        out: OutOpt = None,
        signer_uri: UriOpt = "",
        public_key: PublicOpt = None,
        passphrase_file: PassphraseFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Add a new key to ROLE (its other keys stay); the roots are re-signed."""
        change = _change("create", role, home, out, signer_uri, public_key, passphrase_file)
        _print_change(change, json_out)

    @keys_app.command("rotate")
    def keys_rotate(
        role: Annotated[
            str, typer.Argument(help="root, targets, snapshot, timestamp or director.")
        ],
        home: HomeOpt,
        out: OutOpt = None,
        signer_uri: UriOpt = "",
        public_key: PublicOpt = None,
        timestamp_key: Annotated[
            bool,
            typer.Option(
                "--timestamp-key",
                help="snapshot only: sign the catalog's snapshot with the timestamp key.",
            ),
        ] = False,
        passphrase_file: PassphraseFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Replace ROLE's keys by a new one; root: signed by the old and the new key;
        director: every device's own repository is re-signed with the new key."""
        change = _change(
            "rotate", role, home, out, signer_uri, public_key, passphrase_file, timestamp_key
        )
        _print_change(change, json_out)

    @keys_app.command("retire")
    def keys_retire(
        keyid: Annotated[str, typer.Argument(metavar="KEYID", help="Key id (8+ hex digits).")],
        home: HomeOpt,
        passphrase_file: PassphraseFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Retire a key: it leaves the roots (or, if pending, is dropped); its file goes."""
        with _key_change(home, passphrase_file) as (admin, finish):
            change = finish(admin.retire(keyid))
        _print_change(change, json_out)

    @keys_app.command("encrypt")
    def keys_encrypt(
        home: HomeOpt, passphrase_file: PassphraseFileOpt = None, json_out: JsonOpt = False
    ) -> None:
        """Encrypt the hub's unencrypted key files with the passphrase (the TUF role keys,
        the audit key and the model-signing key)."""
        if read_passphrase(passphrase_file, os.environ) is None:
            raise UsageError(f"give the passphrase: --passphrase-file or ${ENV_PASSPHRASE}")
        from modelfleet.hub.audit_anchor import AUDIT_KEY_NAME
        from modelfleet.packaging.openssf_signing import SIGNING_KEY_NAME

        with _admin(home, passphrase_file) as admin:
            done = admin.encrypt(also=(AUDIT_KEY_NAME, SIGNING_KEY_NAME))
        if json_out:
            print_json({"encrypted": done})
            return
        console.print(f"[green]Encrypted[/] {len(done)} key file(s): {', '.join(done) or '-'}")

    @keys_app.command("export-root")
    def keys_export_root(
        home: HomeOpt,
        out: Annotated[Path, typer.Option("--out", help="File to write the bundle to.")],
        passphrase_file: PassphraseFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Write the next roots that wait for offline signatures to a file."""
        from modelfleet._atomic import atomic_write_bytes
        from modelfleet.trust.root_signing import parse_bundle

        with _admin(home, passphrase_file) as admin:
            data = admin.export_root()
        atomic_write_bytes(out, data)
        status = parse_bundle(data).status()
        if json_out:
            print_json({"out": str(out), "status": status})
            return
        console.print(f"[green]Wrote[/] {out}")
        _print_status(status)

    @keys_app.command("sign-root")
    def keys_sign_root(
        unsigned: Annotated[
            Path, typer.Option("--unsigned", help="Bundle from `keys export-root`.")
        ],
        out: Annotated[Path, typer.Option("--out", help="Where the signed bundle goes.")],
        key: Annotated[
            Path | None, typer.Option("--key", help="Root key file (PKCS#8 PEM).")
        ] = None,
        signer_uri: SignThroughOpt = "",
        keyid: Annotated[
            str, typer.Option("--keyid", help="With --signer-uri: which root key it is.")
        ] = "",
        passphrase_file: PassphraseFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Sign the next roots on the offline machine, with a key file or a signer URI."""
        from modelfleet._atomic import atomic_write_bytes
        from modelfleet.trust.root_signing import parse_bundle, sign_bundle

        if (key is None) == (not signer_uri):
            raise UsageError("give either --key FILE or --signer-uri URI")
        data = _read_option_file(unsigned, "--unsigned")
        bundle = parse_bundle(data)
        signer = _offline_signer(bundle, key, signer_uri, keyid, passphrase_file)
        signed = sign_bundle(bundle, signer)
        atomic_write_bytes(out, bundle.to_bytes())
        status = bundle.status()
        if json_out:
            print_json({"out": str(out), "keyid": signer.public_key.keyid, "status": status})
            return
        console.print(f"[green]Signed[/] {', '.join(signed)} with {signer.public_key.keyid[:16]}")
        _print_status(status)

    @keys_app.command("apply-root")
    def keys_apply_root(
        home: HomeOpt,
        signed: Annotated[Path, typer.Option("--signed", help="Bundle from `keys sign-root`.")],
        passphrase_file: PassphraseFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Install next roots signed offline (each checked against the current root)."""
        data = _read_option_file(signed, "--signed")
        with _key_change(home, passphrase_file) as (admin, finish):
            change = finish(admin.apply_root(data))
        _print_change(change, json_out)

    @keys_app.command("export-targets")
    def keys_export_targets(
        home: HomeOpt,
        out: Annotated[Path, typer.Option("--out", help="File to write the targets to.")],
        passphrase_file: PassphraseFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Write the catalog's next targets, waiting for the offline targets key, to a file
        (TUF metadata without signatures; its expiry runs from now)."""
        from modelfleet._atomic import atomic_write_bytes

        with _admin(home, passphrase_file) as admin:
            data = admin.export_targets()
            staged = admin.staged_targets()
        atomic_write_bytes(out, data)
        if json_out:
            print_json({"out": str(out), "staged": staged})
            return
        console.print(f"[green]Wrote[/] {out}")
        _print_staged(staged)

    @keys_app.command("sign-targets")
    def keys_sign_targets(
        unsigned: Annotated[
            Path, typer.Option("--unsigned", help="File from `keys export-targets`.")
        ],
        out: Annotated[Path, typer.Option("--out", help="Where the signed targets go.")],
        key: Annotated[
            Path | None, typer.Option("--key", help="Targets key file (PKCS#8 PEM).")
        ] = None,
        signer_uri: SignThroughOpt = "",
        public_key: PublicOpt = None,
        passphrase_file: PassphraseFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Sign the catalog's next targets on the offline machine (no hub home needed)."""
        from modelfleet._atomic import atomic_write_bytes
        from modelfleet.trust.staged_targets import parse_targets, sign_targets

        if (key is None) == (not signer_uri):
            raise UsageError("give either --key FILE or --signer-uri URI")
        if public_key is not None and not signer_uri:
            raise UsageError("--public-key goes with --signer-uri")
        data = _read_option_file(unsigned, "--unsigned")
        md = parse_targets(data)
        signer = _targets_signer(key, signer_uri, public_key, passphrase_file)
        atomic_write_bytes(out, sign_targets(data, signer))
        delegations = md.signed.delegations
        roles = sorted(delegations.roles or {}) if delegations is not None else []
        summary: dict[str, Any] = {
            "out": str(out),
            "keyid": signer.public_key.keyid,
            "version": md.signed.version,
            "expires": md.signed.expires.isoformat(),
            "targets": len(md.signed.targets),
            "delegations": roles,
        }
        if json_out:
            print_json(summary)
            return
        console.print(
            f"[green]Signed[/] targets version {md.signed.version} (expires "
            f"{summary['expires']}; {summary['targets']} targets, "
            f"{len(roles)} release roles) with {signer.public_key.keyid[:16]}"
        )

    @keys_app.command("apply-targets")
    def keys_apply_targets(
        home: HomeOpt,
        signed: Annotated[Path, typer.Option("--signed", help="Targets from `keys sign-targets`.")],
        passphrase_file: PassphraseFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Publish the catalog's targets signed offline (checked against what waits and
        against the root's targets keys)."""
        data = _read_option_file(signed, "--signed")
        with _admin(home, passphrase_file) as admin:
            change = admin.apply_targets(data)
        _print_change(change, json_out)

    @keys_app.command("discard-root")
    def keys_discard_root(
        home: HomeOpt, passphrase_file: PassphraseFileOpt = None, json_out: JsonOpt = False
    ) -> None:
        """Drop the next roots waiting for offline signatures; their new keys retire."""
        with _admin(home, passphrase_file) as admin:
            change = admin.discard_root()
        _print_change(change, json_out)


def _read_option_file(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"{option}: cannot read {path}: {e.strerror or e}") from e


def _key_file_signer(key: Path, passphrase_file: Path | None) -> Signer:
    """A signer for a PKCS#8 key file on the offline machine (``--key``)."""
    from securesystemslib.signer import CryptoSigner

    from modelfleet.trust._key_files import read_private_key

    private = read_private_key(key, read_passphrase(passphrase_file, os.environ))
    try:
        return CryptoSigner(private)
    except ValueError as e:
        raise UsageError(f"--key: unsupported key type: {e}") from e


def _targets_signer(
    key: Path | None, uri: str, public_key: Path | None, passphrase_file: Path | None
) -> Signer:
    from modelfleet.trust.keys import pin_handler, uri_signer

    if key is not None:
        return _key_file_signer(key, passphrase_file)
    public = _public_key(uri, public_key)
    return uri_signer(uri, public, pin_handler(os.environ.get(ENV_HSM_PIN, "")))


def _offline_signer(
    bundle: RootBundle, key: Path | None, uri: str, keyid: str, passphrase_file: Path | None
) -> Signer:
    from modelfleet.errors import InvalidInputError
    from modelfleet.trust.keys import pin_handler, uri_signer

    if key is not None:
        return _key_file_signer(key, passphrase_file)
    matches = [k for k in bundle.signing_keys if keyid and k.startswith(keyid)]
    if len(matches) != 1:
        raise InvalidInputError(
            "--keyid: name one of the root keys of these roots: "
            + ", ".join(k[:16] for k in bundle.signing_keys)
        )
    public = bundle.signing_keys[matches[0]]
    return uri_signer(uri, public, pin_handler(os.environ.get(ENV_HSM_PIN, "")))

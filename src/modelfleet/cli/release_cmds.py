"""Release approvals and revocation (issue 10, ADR 0027).

* ``approve NAME VERSION --key FILE``: fetch the version's release bytes from the hub,
  check they name exactly that package, sign them here with the release key and post the
  signature only (the key never leaves this machine).
* ``release-key new FILE``: make a release key (``FILE`` private, ``FILE.pub`` public).
* ``release-key add FILE [--label L]``: register a release key's public half (admin).
* ``release-key list``: the release keys the hub knows.
* ``release-key remove KEYID``: retire a release key (admin): its signatures are refused
  from now on, pending versions recount without it, versions it approved stay approved.
* ``model revoke NAME VERSION --reason R [--ticket T]``: take a version out of the catalog;
  the devices using it fall back to their previous version.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from modelfleet.cli._hub_options import HubOpt, JsonOpt, TokenFileOpt, TokenOpt
from modelfleet.cli._output import console, print_json, table
from modelfleet.errors import ConfigError, InvalidInputError

__all__ = ["register"]

#: ``(hub, token, token_file) -> HubClient``: the main module's.
ClientFactory = Callable[[str, str, Path | None], Any]

KeyOpt = Annotated[
    Path,
    typer.Option("--key", help="Your release key (PEM ed25519 private key file).", dir_okay=False),
]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e


def register(app: typer.Typer, model_app: typer.Typer, client: ClientFactory) -> None:
    """Attach ``approve``, the ``release-key`` group and ``model revoke``."""
    key_app = typer.Typer(
        help="Release keys: approvers sign package versions before devices install them.",
        no_args_is_help=True,
    )
    app.add_typer(key_app, name="release-key")

    @app.command("approve")
    def approve(
        name: Annotated[str, typer.Argument(metavar="NAME", help="Model name.")],
        version: Annotated[int, typer.Argument(metavar="VERSION", min=1, help="Version.")],
        key: KeyOpt,
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Add your release signature to a version (approver); at the threshold devices
        may install it."""
        from modelfleet.trust.release import check_release_bytes, load_release_signer, sign_release

        signer = load_release_signer(key)
        c = client(hub, token, token_file)
        request = c.release(name, version)
        known = {k.get("keyid") for k in request.get("release_keys", [])}
        if signer.public_key.keyid not in known:
            raise InvalidInputError(
                f"the key in {key} is not a release key of this hub "
                "(an admin registers it with `modelfleet release-key add`)"
            )
        try:
            signed = base64.b64decode(str(request.get("signed", "")), validate=True)
        except binascii.Error as e:
            raise InvalidInputError(f"the hub sent malformed release bytes: {e}") from e
        role = check_release_bytes(signed, name, version)  # sign only what is named
        sig = sign_release(signer, signed)
        result = c.post_release_signature(name, version, sig.keyid, sig.signature)
        if json_out:
            print_json(result)
            return
        n, t = len(result.get("signatures", [])), result.get("threshold")
        console.print(
            f"[green]Signed[/] {name} version {version} ({n} of {t} release signatures): "
            f"{'installable' if result.get('installable') else result.get('state')}"
        )
        for path, tf in sorted(role.targets.items()):
            console.print(f"  {path}  sha256 {tf.hashes.get('sha256')}  {tf.length} bytes")

    @key_app.command("new")
    def key_new(
        path: Annotated[Path, typer.Argument(metavar="FILE", help="Private key file to write.")],
        json_out: JsonOpt = False,
    ) -> None:
        """Make a release key: FILE (private, mode 0600; keep it offline) and FILE.pub."""
        from modelfleet.trust.release import new_release_key

        k = new_release_key(path)
        out = {"keyid": k.keyid, "private": str(path), "public": f"{path}.pub"}
        if json_out:
            print_json(out)
            return
        console.print(f"[green]Release key[/] {k.keyid}: {path} (keep it), {path}.pub (send it)")

    @key_app.command("add")
    def key_add(
        path: Annotated[Path, typer.Argument(metavar="FILE", help="PEM ed25519 key file.")],
        label: Annotated[str, typer.Option("--label", help="Whose key it is.")] = "",
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Register a release key at the hub (admin); only its public half is sent."""
        from modelfleet.trust.release import public_pem

        result = client(hub, token, token_file).add_release_key(public_pem(_read(path)), label)
        if json_out:
            print_json(result)
            return
        console.print(f"[green]Added release key[/] {result['keyid']} {label}".rstrip())
        if result.get("gated"):
            console.print(f"Now needing release signatures: {', '.join(result['gated'])}")

    @key_app.command("list")
    def key_list(
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """The release keys the hub knows."""
        keys = client(hub, token, token_file).list_release_keys()
        if json_out:
            print_json(keys)
            return
        rows = [(k["keyid"], k["label"], k["added_by"], k["added_at"]) for k in keys]
        table("Release keys", ["key id", "label", "added by", "added at"], rows)

    @key_app.command("remove")
    def key_remove(
        keyid: Annotated[str, typer.Argument(metavar="KEYID", help="The key's id (see list).")],
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Retire a release key (admin): its signatures are refused from now on; pending
        versions lose its signature; versions it helped approve stay approved."""
        result = client(hub, token, token_file).remove_release_key(keyid)
        if json_out:
            print_json(result)
            return
        console.print(f"[yellow]Removed release key[/] {keyid} {result.get('label', '')}".rstrip())
        for r in result.get("recounted", []):
            console.print(
                f"  {r['version']}: now {r['signatures']} of {r['threshold']} release signatures"
            )
        if not result.get("keys_left"):
            console.print(
                "No release keys left: versions registered from now on need no release "
                "signatures (the hub's own key lists them)"
            )

    @model_app.command("revoke")
    def model_revoke(
        name: Annotated[str, typer.Argument(metavar="NAME", help="Model name.")],
        version: Annotated[int, typer.Argument(metavar="VERSION", min=1, help="Version.")],
        reason: Annotated[str, typer.Option("--reason", help="Why (audited).")],
        ticket: Annotated[str | None, typer.Option("--ticket", help="Change ticket.")] = None,
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Take a version out of the catalog; devices using it fall back to their
        previous version (publisher)."""
        if not reason.strip():
            raise InvalidInputError("--reason must say why the version is revoked")
        result = client(hub, token, token_file).revoke(name, version, reason, ticket)
        if json_out:
            print_json(result)
            return
        fb = result.get("fallback", {})
        console.print(f"[yellow]Revoked[/] {name} version {version}")
        rows = [
            (d, m["from"]["production"], m["to"]["production"], m["fallback"])
            for d, m in sorted(fb.get("moved", {}).items())
        ]
        if rows:
            table("Devices moved", ["device", "from", "to", "how"], rows)
        if fb.get("stranded"):
            console.print(
                f"No earlier version to fall back to: {', '.join(fb['stranded'])} "
                "(they keep serving what they run)"
            )
        if fb.get("aborted_rollouts"):
            console.print(
                f"Rollouts of version {version} aborted: {', '.join(fb['aborted_rollouts'])}"
            )

"""Device credentials on the command line (issue 10, ADR 0026), under ``modelfleet device``:

* ``enrol-token create ID [--site S] [--tags a,b] [--ttl 24h]``: a one-time bootstrap token
  (operator); printed once.
* ``enrol ID --hub URL --bootstrap-token-file F --state-dir DIR``: on the device: exchange
  the bootstrap token for the device's credential, written to ``DIR/credential.json``
  (mode 600), where ``agent run --state-dir DIR`` finds it; the credential is never printed.
* ``credentials [ID]``: credentials and their states (never their secrets).
* ``revoke ID [--credential CID] [--reason R]``: revoke one credential or all of a device's.
* ``decommission ID [--reason R]``: revoke, remove assignments and desired state.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from modelfleet.cli._hub_options import (
    HubCaOpt,
    HubOpt,
    JsonOpt,
    TokenFileOpt,
    TokenOpt,
    hub_tls,
)
from modelfleet.cli._output import console, print_json, table
from modelfleet.cli._plan_file import parse_duration

__all__ = ["register"]

#: ``(hub, token, token_file) -> HubClient``: the main module's.
ClientFactory = Callable[[str, str, Path | None], Any]

DeviceArg = Annotated[str, typer.Argument(metavar="ID", help="The device id.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).")]


def register(device_app: typer.Typer, client: ClientFactory) -> None:
    """Attach the credential commands to the ``device`` group."""
    enrol_token_app = typer.Typer(
        help="One-time bootstrap tokens that enrol a device.", no_args_is_help=True
    )
    device_app.add_typer(enrol_token_app, name="enrol-token")

    @enrol_token_app.command("create")
    def enrol_token_create(
        device_id: DeviceArg,
        site: Annotated[str, typer.Option(help="Site, if the device enrols as new.")] = "",
        tags: Annotated[str, typer.Option(help="Comma-separated tags, if new.")] = "",
        ttl: Annotated[
            str, typer.Option("--ttl", help="Validity: 30m, 24h, 7d (1 min - 30 d).")
        ] = "24h",
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Create a one-time bootstrap token for a device (operator); printed once."""
        tag_list = [t.strip() for t in tags.split(",") if t.strip()]
        result = client(hub, token, token_file).create_bootstrap_token(
            device_id, site=site, tags=tag_list, ttl_s=parse_duration(ttl, "--ttl")
        )
        if json_out:
            print_json(result)
            return
        console.print(f"[green]Bootstrap token[/] {result['id']} for {device_id}")
        console.print(f"valid until {result['expires_at']}, once (shown once):")
        console.print(f"  [bold]{result['token']}[/]", soft_wrap=True)

    @device_app.command("enrol")
    def device_enrol(
        device_id: DeviceArg,
        state_dir: Annotated[
            Path,
            typer.Option("--state-dir", help="The agent's state folder (gets credential.json)."),
        ],
        bootstrap_token_file: Annotated[
            Path | None,
            typer.Option("--bootstrap-token-file", help="File holding the bootstrap token."),
        ] = None,
        hub: HubOpt = "http://127.0.0.1:8700",
        hub_ca: HubCaOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """On the device: exchange a bootstrap token for the device's credential."""
        from modelfleet.agent.credentials import CredentialStore, StoredCredential
        from modelfleet.agent.hub_link import HttpHubLink
        from modelfleet.cli._errors import UsageError
        from modelfleet.cli.agent_cmds import read_token_file

        if bootstrap_token_file is None:
            raise UsageError("pass --bootstrap-token-file FILE (mode 600)")
        bootstrap = read_token_file(bootstrap_token_file)
        link = HttpHubLink(hub, "", timeout=10.0, verify=hub_tls(hub_ca))
        try:
            cred = StoredCredential.from_answer(link.enrol(bootstrap, device_id))
        finally:
            link.close()
        state_dir.mkdir(parents=True, exist_ok=True)
        store = CredentialStore(state_dir)
        store.save(cred)
        result = {
            "device_id": cred.device_id,
            "credential_id": cred.credential_id,
            "not_after": cred.not_after.isoformat() if cred.not_after else None,
            "path": str(store.path),
        }
        if json_out:
            print_json(result)
            return
        console.print(
            f"[green]Enrolled[/] {cred.device_id}: credential {cred.credential_id} until "
            f"{result['not_after']}, written to {store.path}"
        )

    @device_app.command("credentials")
    def device_credentials(
        device_id: Annotated[
            str | None, typer.Argument(metavar="[ID]", help="One device (default: all).")
        ] = None,
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """List device credentials and their states (never their secrets)."""
        rows = client(hub, token, token_file).device_credentials(device_id)
        if json_out:
            print_json(rows)
            return
        table(
            "Device credentials",
            ["device", "id", "state", "not after", "grace until", "revoked"],
            [
                (
                    r.get("device_id"),
                    r.get("id"),
                    r.get("state"),
                    r.get("not_after"),
                    r.get("grace_until") or "",
                    r.get("revoked_reason") or (r.get("revoked_at") or ""),
                )
                for r in rows
            ],
        )

    @device_app.command("revoke")
    def device_revoke(
        device_id: DeviceArg,
        credential: Annotated[
            str | None, typer.Option("--credential", help="Only this credential id.")
        ] = None,
        reason: ReasonOpt = "",
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Revoke a device's credentials (all, or one with --credential)."""
        hub_client = client(hub, token, token_file)
        if credential is not None:
            if credential not in {c.get("id") for c in hub_client.device_credentials(device_id)}:
                from modelfleet.cli._errors import UsageError

                raise UsageError(f"device {device_id} has no credential {credential}")
            result = hub_client.revoke_credential(credential, reason)
        else:
            result = hub_client.revoke_device(device_id, reason)
        if json_out:
            print_json(result)
            return
        ids = [result["id"]] if credential is not None else result.get("revoked", [])
        console.print(f"[green]Revoked[/] {device_id}: {', '.join(ids) or 'no credentials'}")

    @device_app.command("decommission")
    def device_decommission(
        device_id: DeviceArg,
        reason: ReasonOpt = "",
        hub: HubOpt = "http://127.0.0.1:8700",
        token: TokenOpt = "",
        token_file: TokenFileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Take a device out of the fleet: credentials revoked, no desired state."""
        result = client(hub, token, token_file).decommission_device(device_id, reason)
        if json_out:
            print_json(result)
            return
        console.print(
            f"[green]Decommissioned[/] {device_id}: {len(result.get('revoked', []))} "
            "credential(s) revoked, assignments and desired state removed"
        )

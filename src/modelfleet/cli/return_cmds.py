"""The return channel's commands (issue 11, ADR 0029).

* ``bundle report --agent-state DIR [--agent-state DIR ...] --out FILE [--site SITE]``, at
  the site: one signed envelope per device (its version report, every buffered telemetry
  record and review sample), into one ``modelfleet.return/v1`` file. Reads only: the
  records stay in each buffer until the agent forwards them online; sending them again in a
  later bundle is harmless (the hub stores each record once).
* ``bundle ingest FILE --home HOME``, on the hub's machine: verifies every envelope against
  its device's registered key, then stores the bundle exactly once (the same file again
  changes nothing and says ``already_ingested``).
* ``device key DEVICE --public-key FILE --home HOME [--replace]``: an admin registers a
  device's public key (a device enrolled offline); the agent sends its own online.
* ``agent key --state-dir DIR [--out FILE]``: the device's public key, made first if the
  agent never ran there.

Every command takes ``--json``; errors are one line and an exit code (``cli/_errors.py``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from modelfleet.cli._errors import UsageError, require_extra
from modelfleet.cli._hub_options import JsonOpt
from modelfleet.cli._output import console, key_values, print_json, table

__all__ = ["register", "register_agent_key", "register_device_key"]

HomeOpt = Annotated[Path, typer.Option("--home", help="Hub home made by `modelfleet init`.")]
_MIB = 1024 * 1024


def _now() -> datetime:
    from modelfleet.cli.agent_cmds import sim_clock

    clock = sim_clock(os.environ)
    return clock.now() if clock is not None else datetime.now(UTC)


@contextlib.contextmanager
def _service(home: Path) -> Iterator[Any]:
    """The hub's service over its home (on the hub's machine, as ``modelfleet keys``)."""
    require_extra("hub", "fastapi", "sqlalchemy", "alembic", what="this command")
    from modelfleet.cli.agent_cmds import sim_clock
    from modelfleet.clock import SystemClock
    from modelfleet.errors import ConfigError
    from modelfleet.hub.config import load_hub_config
    from modelfleet.hub.service import HubService

    config = load_hub_config(home, os.environ)
    if not config.paths.is_initialised():
        raise ConfigError(f"{home} is not an initialised hub home; run `modelfleet init HOME`")
    service = HubService(config, sim_clock(os.environ) or SystemClock())
    try:
        yield service
    finally:
        service.close()


def register(bundle_app: typer.Typer) -> None:
    """Add ``report`` and ``ingest`` to the ``bundle`` group."""

    @bundle_app.command("report")
    def bundle_report(
        agent_state: Annotated[
            list[Path],
            typer.Option(
                "--agent-state",
                help="An agent's state folder (agent run --state-dir); repeat for each device.",
            ),
        ],
        out: Annotated[Path, typer.Option("--out", help="The return bundle file to write.")],
        site: Annotated[
            str, typer.Option("--site", help="The site's name (checked at the hub).")
        ] = "",
        json_out: JsonOpt = False,
    ) -> None:
        """Collect the devices' signed version reports, telemetry and review samples into
        one return bundle (nothing is deleted on the devices)."""
        from modelfleet._atomic import atomic_write_bytes
        from modelfleet.agent.return_report import collect_device
        from modelfleet.delivery.return_bundle import pack_bundle

        if not agent_state:
            raise UsageError("give at least one --agent-state DIR")
        if len({p.resolve() for p in agent_state}) != len(agent_state):
            raise UsageError("an --agent-state folder is given twice")
        now = _now()
        devices = [collect_device(p, site, now) for p in agent_state]
        ids = [d.device_id for d in devices]
        if len(set(ids)) != len(ids):
            raise UsageError(f"two state folders are the same device: {sorted(ids)}")
        data = pack_bundle([d.envelope for d in devices], site, now)
        atomic_write_bytes(out, data)
        result = {
            "out": str(out),
            "format": "modelfleet.return/v1",
            "site": site,
            "created_at": now.isoformat(),
            "bytes": len(data),
            "devices": [d.summary() for d in devices],
        }
        if json_out:
            print_json(result)
            return
        console.print(f"[green]Wrote return bundle[/] {out} ({len(data) / _MIB:.2f} MiB)")
        table(
            "Devices",
            ["device", "records", "review samples", "seqs", "report"],
            [
                (d.device_id, d.records, d.review_samples, d.seq_range or "-", d.has_report)
                for d in devices
            ],
        )

    @bundle_app.command("ingest")
    def bundle_ingest(
        file: Annotated[Path, typer.Argument(help="A return bundle from `bundle report`.")],
        home: HomeOpt,
        max_mib: Annotated[
            int,
            typer.Option("--max-mib", min=1, max=65536, help="Largest bundle, decompressed."),
        ] = 1024,
        json_out: JsonOpt = False,
    ) -> None:
        """Verify a return bundle's envelopes and store it exactly once."""
        from modelfleet.hub.bundle_ingest import ReturnIngest

        try:
            data = file.read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read {file}: {e.strerror or e}") from e
        with _service(home) as service:
            result = ReturnIngest(service).ingest(
                data, "cli:bundle-ingest", max_bytes=max_mib * _MIB
            )
        if json_out:
            print_json(result)
            return
        if result["status"] == "already_ingested":
            console.print(
                f"[yellow]Already ingested[/] at {result['ingested_at']}: nothing changed "
                f"(bundle {result['digest'][:16]}…)"
            )
            return
        console.print(
            f"[green]Ingested[/] bundle {result['digest'][:16]}… from site "
            f"{result['site'] or '-'} made {result['created_at']}: {result['stored']} records "
            f"stored, {result['duplicates']} already here"
        )
        table(
            "Devices",
            ["device", "as of", "stored", "duplicates", "review samples", "report"],
            [
                (
                    d["device_id"],
                    d["as_of"],
                    d["stored"],
                    d["duplicates"],
                    d["review_samples"],
                    d["report"],
                )
                for d in result["devices"]
            ],
        )


def register_device_key(device_app: typer.Typer) -> None:
    """Add ``device key`` (an admin registers a device's public key)."""

    @device_app.command("key")
    def device_key(
        device_id: Annotated[str, typer.Argument(metavar="DEVICE")],
        public_key: Annotated[
            Path,
            typer.Option(
                "--public-key", help="The device's public key (`modelfleet agent key --out`)."
            ),
        ],
        home: HomeOpt,
        replace: Annotated[
            bool, typer.Option("--replace", help="Replace a different key already registered.")
        ] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Register a device's Ed25519 public key: return bundles are verified with it."""
        from modelfleet.agent.device_key import parse_public_key
        from modelfleet.hub.bundle_ingest import DeviceKeys

        try:
            text = public_key.read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read --public-key {public_key}: {e.strerror or e}") from e
        raw = parse_public_key(text)
        with _service(home) as service:
            result = DeviceKeys(service.context).register(
                device_id, raw, "cli:device-key", replace=replace
            )
        if json_out:
            print_json(result)
            return
        console.print(f"[green]Key {result['status']}[/] for {device_id}: {result['keyid']}")


def register_agent_key(agent_app: typer.Typer) -> None:
    """Add ``agent key`` (the device's public key, made first if needed)."""

    @agent_app.command("key")
    def agent_key(
        state_dir: Annotated[Path, typer.Option("--state-dir", help="The agent's state folder.")],
        out: Annotated[
            Path | None, typer.Option("--out", help="Write the public key (PEM) here too.")
        ] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Print this device's public key (the key is made once, kept in the state folder)."""
        from modelfleet._atomic import atomic_write_text
        from modelfleet.agent.device_key import load_or_create_device_key

        key, created = load_or_create_device_key(state_dir)
        if out is not None:
            atomic_write_text(out, key.public_pem)
        result = {
            "keyid": key.key_id,
            "public_key": key.public_hex,
            "created": created,
            "out": None if out is None else str(out),
        }
        if json_out:
            print_json(result)
            return
        key_values(
            "Device key",
            {"key id": key.key_id, "public key": key.public_hex, "new": created, "written": out},
        )

"""The ``bundle`` command group (issue 11, ADR 0034): removable media in.

* ``bundle export --site SITE --out FILE`` (an admin, online): one TUF cycle per device of
  the site against the hub, recorded into one ``modelfleet.media/v1`` file (zstd;
  ``--recipient age1...`` encrypts it to the site's key). Shows progress.
* ``bundle import FILE --site SITE (--mirror-cache DIR | --folder DIR)`` (at the site):
  checks the container, the site, every signature, hash and timestamp (no replay), then
  writes into a site mirror's cache (``site serve --offline``) or a device's update folder
  (``agent run --from-folder``). Refused bundles change nothing.
* ``bundle site-key --out FILE``: a new age identity for a site (0600); prints the public
  key exporters encrypt to.

:func:`modelfleet.cli.return_cmds.register` adds ``bundle report`` and ``bundle ingest``.
Every command takes ``--json``; errors are one line and an exit code (``cli/_errors.py``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from modelfleet.cli._errors import UsageError, require_extra
from modelfleet.cli._hub_options import (
    DEFAULT_HUB,
    HubOpt,
    JsonOpt,
    TokenFileOpt,
    TokenOpt,
    hub_client,
    hub_tls,
    resolve_token,
)
from modelfleet.cli._output import console, key_values, print_json, table

__all__ = ["bundle_app"]

bundle_app = typer.Typer(
    help="Removable-media bundles: updates in, reports and telemetry out.", no_args_is_help=True
)

_MIB = 1024 * 1024


@contextlib.contextmanager
def _bytes_progress(text: str, *, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on a terminal; a line per 10 % when piped; nothing with --json."""
    if quiet:
        yield lambda done, total: None
        return
    if not console.is_terminal:
        shown = [-1]

        def line(done: int, total: int) -> None:
            tenth = (10 * done // total) if total else 10
            if tenth != shown[0]:
                shown[0] = tenth
                console.print(f"{text}: {done / _MIB:.1f} of {total / _MIB:.1f} MiB")

        yield line
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(text, total=None)

        def bar(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield bar


def _recipients(values: list[str], files: list[Path]) -> list[str]:
    found = [v.strip() for v in values if v.strip()]
    for f in files:
        try:
            lines = f.read_text().splitlines()
        except OSError as e:
            raise UsageError(f"cannot read --recipient-file {f}: {e.strerror or e}") from e
        found += [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    return found


def _identities(files: list[Path]) -> list[str]:
    found: list[str] = []
    for f in files:
        try:
            lines = f.read_text().splitlines()
        except OSError as e:
            raise UsageError(f"cannot read --identity {f}: {e.strerror or e}") from e
        keys = [ln.strip() for ln in lines if ln.strip().startswith("AGE-SECRET-KEY-")]
        if not keys:
            raise UsageError(f"--identity {f} holds no age identity (AGE-SECRET-KEY-...)")
        found += keys
    return found


def _sha256_of(path: Path) -> str:
    from modelfleet.hashing import sha256_file

    return sha256_file(path)[0]


@bundle_app.command("export")
def bundle_export(
    site: Annotated[str, typer.Option("--site", help="The site whose devices the bundle feeds.")],
    out: Annotated[Path, typer.Option("--out", help="The bundle file to write.")],
    recipient: Annotated[
        list[str],
        typer.Option("--recipient", help="Encrypt to this age public key (age1...); repeatable."),
    ] = [],  # noqa: B006 - typer reads the default
    recipient_file: Annotated[
        list[Path],
        typer.Option("--recipient-file", help="A file of age public keys, one per line."),
    ] = [],  # noqa: B006
    level: Annotated[int, typer.Option("--level", min=1, max=19, help="zstd level.")] = 3,
    hub: HubOpt = DEFAULT_HUB,
    token: TokenOpt = "",
    token_file: TokenFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write what a site's devices need for their current desired state into one file
    (admin token: it reads every device's director metadata and credential digests)."""
    from modelfleet.delivery.bundle_export import fill_site_tree, write_trust_root
    from modelfleet.delivery.http_fetcher import HttpFetcher
    from modelfleet.delivery.media_bundle import MediaManifest, write_bundle
    from modelfleet.trust import DeviceTrustClient

    keys = _recipients(recipient, recipient_file)
    if keys:
        require_extra("media", "pyrage", what="encrypted bundles")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no folder {out.parent}")
    bearer = resolve_token(token, token_file)
    with hub_client(hub, bearer) as client:
        access = client.media_access(site)
        if not access:
            raise UsageError(f"the hub has no devices at site {site!r} (device list --json)")
        trust_root = client.trust_root()
    devices = sorted(access)
    tls = hub_tls(None)
    created = datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as scratch:
        tree = Path(scratch) / "tree"

        def client_for(cache: Path, fetcher: Any) -> DeviceTrustClient:
            return DeviceTrustClient(cache, hub, bearer, trust_root, fetcher, verify=tls)

        quiet = json_out
        if not quiet:
            console.print(f"exporting site {site}: {len(devices)} devices from {hub}")
        exported = fill_site_tree(
            devices,
            tree,
            Path(scratch) / "work",
            hub,
            HttpFetcher(bearer, verify=tls),
            client_for,
            progress=None if quiet else _device_line,
        )
        write_trust_root(tree, trust_root)
        manifest = MediaManifest(
            site=site,
            hub_url=hub.rstrip("/"),
            created_at=created.isoformat().replace("+00:00", "Z"),
            devices=tuple(devices),
            access=access,
        )
        with _bytes_progress("writing", quiet=quiet) as progress:
            index = write_bundle(
                tree, manifest, out, recipients=keys, level=level, progress=progress
            )
    raw = sum(n for n, _ in index.values())
    rows: list[dict[str, Any]] = [
        {
            "device": d.device_id,
            "serial": d.serial,
            "models": [f"{r.model} v{r.version}" for r in d.artefacts],
        }
        for d in exported
    ]
    size = out.stat().st_size
    result: dict[str, Any] = {
        "out": str(out),
        "format": "modelfleet.media/v1",
        "site": site,
        "created_at": manifest.created_at,
        "encrypted": bool(keys),
        "files": len(index),
        "tree_bytes": raw,
        "bytes": size,
        "sha256": _sha256_of(out),
        "devices": rows,
    }
    if json_out:
        print_json(result)
        return
    console.print(
        f"[green]Wrote bundle[/] {out} ({size / _MIB:.2f} MiB, {len(index)} files"
        f"{', encrypted' if keys else ''}); sha256 {result['sha256']}"
    )
    table(
        "Devices",
        ["device", "serial", "models"],
        [(d["device"], d["serial"] or "-", ", ".join(d["models"]) or "-") for d in rows],
    )


def _device_line(done: int, total: int, device: str) -> None:
    console.print(f"  {done}/{total} {device}")


@bundle_app.command("import")
def bundle_import(
    file: Annotated[Path, typer.Argument(help="A bundle from `bundle export`.")],
    site: Annotated[str, typer.Option("--site", help="This site's name (must match).")],
    mirror_cache: Annotated[
        Path | None,
        typer.Option("--mirror-cache", help="A site mirror's --cache folder (site serve)."),
    ] = None,
    folder: Annotated[
        Path | None,
        typer.Option("--folder", help="A device's update folder (agent run --from-folder)."),
    ] = None,
    trust_root: Annotated[
        Path | None,
        typer.Option(
            "--trust-root",
            help="The hub's trust-root.json, obtained out of band (needed the first time).",
        ),
    ] = None,
    identity: Annotated[
        list[Path],
        typer.Option("--identity", help="The site's age identity file (encrypted bundles)."),
    ] = [],  # noqa: B006
    max_mib: Annotated[
        int, typer.Option("--max-mib", min=1, max=1 << 20, help="Largest bundle, unpacked.")
    ] = 65536,
    json_out: JsonOpt = False,
) -> None:
    """Check a bundle completely, then load it into a site mirror or a device folder."""
    from modelfleet.delivery.bundle_import import import_bundle
    from modelfleet.delivery.mirror_cache import MirrorCache, TokenMemo
    from modelfleet.trust import DeviceTrustClient

    if (mirror_cache is None) == (folder is None):
        raise UsageError("give exactly one of --mirror-cache DIR or --folder DIR")
    dest = mirror_cache if mirror_cache is not None else folder
    assert dest is not None
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} is not a folder")
    if not file.is_file():
        raise UsageError(f"no bundle file {file}")
    anchor = None
    if trust_root is not None:
        try:
            anchor = trust_root.read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read --trust-root {trust_root}: {e.strerror or e}") from e
    identities = _identities(identity)
    if identities:
        require_extra("media", "pyrage", what="encrypted bundles")

    def verifier(cache: Path, hub_url: str, root: bytes, fetcher: Any) -> DeviceTrustClient:
        return DeviceTrustClient(cache, hub_url, "offline-import", root, fetcher)

    with _bytes_progress("checking", quiet=json_out) as progress:
        result = import_bundle(
            file,
            dest,
            site=site,
            verifier=verifier,
            trust_root=anchor,
            identities=identities,
            max_bytes=max_mib * _MIB,
            progress=progress,
        )
    if mirror_cache is not None:
        cache = MirrorCache(mirror_cache)
        TokenMemo(cache.state_dir / "tokens.json").replace_devices(result.access)
    summary = {
        "file": str(file),
        "into": str(dest),
        "kind": "mirror" if mirror_cache is not None else "folder",
        "site": result.site,
        "created_at": result.created_at,
        "unchanged": result.unchanged,
        "files_written": len(result.written),
        "bytes_written": result.bytes_written,
        "devices": dict(result.devices),
    }
    if json_out:
        print_json(summary)
        return
    verb = "already held everything in" if result.unchanged else "imported into"
    console.print(
        f"[green]Verified and {verb}[/] {dest}: bundle of {result.site} made "
        f"{result.created_at}, {len(result.written)} files "
        f"({result.bytes_written / _MIB:.2f} MiB) written"
    )
    table("Devices", ["device", "serial"], [(d, s or "-") for d, s in result.devices.items()])


@bundle_app.command("site-key")
def bundle_site_key(
    out: Annotated[Path, typer.Option("--out", help="Write the site's age identity here (0600).")],
    json_out: JsonOpt = False,
) -> None:
    """Make a site's age key pair: the identity stays at the site (bundle import
    --identity), the public key goes to whoever exports (bundle export --recipient)."""
    require_extra("media", "pyrage", what="site keys")
    from pyrage import x25519

    if out.exists():
        raise UsageError(f"{out} exists; not overwritten")
    identity = x25519.Identity.generate()
    public = str(identity.to_public())
    stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
    body = f"# created: {stamp}\n# public key: {public}\n{identity}\n"
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(body)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from e
    result = {"identity_file": str(out), "public_key": public}
    if json_out:
        print_json(result)
        return
    key_values("Site key", result)

"""The options every hub client command shares (``--hub``, ``--token``, ``--token-file``,
``--json``) and the client they make; one place, so that each command module reads them
the same way."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modelfleet.cli._errors import UsageError
from modelfleet.errors import UnauthenticatedError

if TYPE_CHECKING:
    from modelfleet.client import HubClient

__all__ = [
    "DEFAULT_HUB",
    "HubCaOpt",
    "HubOpt",
    "JsonOpt",
    "TokenFileOpt",
    "TokenOpt",
    "hub_client",
    "hub_tls",
    "resolve_token",
]

DEFAULT_HUB = "http://127.0.0.1:8700"

HubOpt = Annotated[
    str, typer.Option("--hub", envvar="MODELFLEET_HUB", help="Hub URL, e.g. http://127.0.0.1:8700")
]
TokenOpt = Annotated[
    str, typer.Option("--token", envvar="MODELFLEET_TOKEN", help="API token", show_default=False)
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        envvar="MODELFLEET_TOKEN_FILE",
        help="Read the API token from this file (keeps it out of `ps`); used when no --token.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
HubCaOpt = Annotated[
    Path | None,
    typer.Option(
        "--hub-ca",
        envvar="MODELFLEET_HUB_CA",
        help="The hub's CA certificate (PEM): https to the hub trusts it and no other CA.",
        show_default=False,
    ),
]


def hub_client(hub: str, token: str, token_file: Path | None = None) -> HubClient:
    """A client of ``hub`` with ``token``, or the token read from ``token_file``.

    Raises:
        UsageError: ``token_file`` cannot be read, or the token holds spaces or control
            characters (surrounding whitespace, e.g. a file's newline, is stripped).
        UnauthenticatedError: no token at all, or an empty token file.
    """
    from modelfleet.client import HubClient

    return HubClient(hub, resolve_token(token, token_file), verify=hub_tls(None))


def resolve_token(token: str, token_file: Path | None = None) -> str:
    """``token``, or the one read from ``token_file`` (errors as :func:`hub_client`)."""
    if not token and token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise UsageError(f"cannot read --token-file {token_file}: {e.strerror or e}") from e
        if not token:
            raise UnauthenticatedError(f"--token-file {token_file} is empty")
    token = token.strip()  # `MODELFLEET_TOKEN="$(cat admin.token)"` or a pasted newline
    if not token:
        raise UnauthenticatedError(
            "no token: pass --token-file, set MODELFLEET_TOKEN_FILE or MODELFLEET_TOKEN, "
            "or pass --token"
        )
    if any(not c.isprintable() or c.isspace() for c in token):
        raise UsageError("the token holds spaces or control characters: pass it as issued")
    return token


def hub_tls(ca_file: Path | None) -> ssl.SSLContext | bool:
    """TLS verification towards the hub: ``ca_file``, else ``$MODELFLEET_HUB_CA``, pinned;
    else the system's CAs (every client command reads the variable; ``agent run`` and
    ``credential enrol`` take ``--hub-ca`` too).

    Raises:
        UsageError: the CA file cannot be read or holds no certificate.
    """
    from modelfleet.delivery.tls import ENV_HUB_CA, client_verify
    from modelfleet.errors import ConfigError

    if ca_file is None and os.environ.get(ENV_HUB_CA):
        ca_file = Path(os.environ[ENV_HUB_CA])
    try:
        return client_verify(ca_file)
    except ConfigError as e:
        raise UsageError(str(e)) from e

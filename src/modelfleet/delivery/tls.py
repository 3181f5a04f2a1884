"""TLS towards the hub (issue 10): the agent, the CLI and the site mirror pin the hub's CA.

A device that is given the hub's CA certificate (``--hub-ca FILE``, or
``MODELFLEET_HUB_CA``) trusts that CA and nothing else: the system's public CAs are not
loaded, so a certificate any public CA issued for the hub's name is refused. Without a CA
file, ``https://`` URLs are checked against the system's CAs and ``http://`` stays plain
(loopback and lab set-ups). TUF still verifies every byte that arrives; TLS keeps tokens
and telemetry private and stops a man in the middle from holding updates back unnoticed.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from modelfleet.errors import ConfigError

__all__ = ["ENV_HUB_CA", "client_verify", "pinned_context"]

ENV_HUB_CA = "MODELFLEET_HUB_CA"


def pinned_context(ca_file: Path) -> ssl.SSLContext:
    """A client context that trusts only the CA certificate(s) in ``ca_file`` (PEM),
    checks the host name, and speaks TLS 1.2 or newer.

    Raises:
        ConfigError: the file cannot be read or holds no usable certificate.
    """
    try:
        # With cafile given, the default context loads that file and not the system CAs.
        ctx = ssl.create_default_context(cafile=str(ca_file))
    except FileNotFoundError as e:
        raise ConfigError(f"hub CA file {ca_file} does not exist") from e
    except ssl.SSLError as e:  # an OSError too: first
        raise ConfigError(
            f"hub CA file {ca_file} holds no usable PEM certificate ({e.reason or e})"
        ) from e
    except OSError as e:
        raise ConfigError(f"cannot read hub CA file {ca_file}: {e.strerror or e}") from e
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not ctx.cert_store_stats().get("x509"):
        raise ConfigError(f"hub CA file {ca_file} holds no certificate")
    return ctx


def client_verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    """What to pass as httpx's ``verify=``: the pinned context for ``ca_file``, or True
    (the system's CAs) when there is none.

    Raises:
        ConfigError: as for :func:`pinned_context`.
    """
    return True if ca_file is None else pinned_context(ca_file)

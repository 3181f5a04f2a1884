"""modelfleet.trust: TUF repositories on the hub, verified updates on the device (Uptane shape).

Hub side: :class:`HubTrust` signs the catalog and director repositories with keys from
:func:`generate_keys` / :func:`load_signers`. Device side: :class:`DeviceTrustClient`
verifies the director's desired state and the catalog's artefacts with python-tuf ngclient.
"""

from modelfleet.trust.bundle import (
    REPOSITORIES,
    TRUST_ROOT_FORMAT,
    make_trust_root_bundle,
    parse_trust_root_bundle,
)
from modelfleet.trust.client import DeviceTrustClient
from modelfleet.trust.hub_trust import HubTrust
from modelfleet.trust.keys import ROLES, generate_keys, load_signers
from modelfleet.trust.repository import (
    ExpiryPolicy,
    MemoryRoleCounters,
    RoleCounters,
    TargetSpec,
    TufRepository,
)

__all__ = [
    "REPOSITORIES",
    "ROLES",
    "TRUST_ROOT_FORMAT",
    "DeviceTrustClient",
    "ExpiryPolicy",
    "HubTrust",
    "MemoryRoleCounters",
    "RoleCounters",
    "TargetSpec",
    "TufRepository",
    "generate_keys",
    "load_signers",
    "make_trust_root_bundle",
    "parse_trust_root_bundle",
]

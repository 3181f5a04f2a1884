"""modelfleet.trust: TUF repositories on the hub, verified updates on the device (Uptane shape).

Hub side: :class:`HubTrust` signs the catalog and director repositories with keys from
:func:`generate_keys` / :func:`load_signers`. Device side: :class:`DeviceTrustClient`
verifies the director's desired state and the catalog's artefacts with python-tuf ngclient.
Per-device director repositories (issue 8): :class:`DeviceRepoSigner` signs them (the hub
stores them), :data:`DEVICE_FIELD` binds each to its device, :func:`stale_repositories` is
the check-in fast path's rule.
"""

from modelfleet.trust.bundle import (
    REPOSITORIES,
    TRUST_ROOT_FORMAT,
    make_trust_root_bundle,
    parse_trust_root_bundle,
)
from modelfleet.trust.client import DeviceTrustClient
from modelfleet.trust.device_repo import DEVICE_FIELD, DeviceRepoSigner, DeviceRoles
from modelfleet.trust.freshness import HeldVersions, stale_repositories
from modelfleet.trust.hub_trust import HubTrust
from modelfleet.trust.keys import ROLES, generate_keys, load_signers
from modelfleet.trust.repository import (
    ExpiryPolicy,
    MemoryRoleCounters,
    RoleCounters,
    SiteExpiry,
    TargetSpec,
    TufRepository,
)

__all__ = [
    "DEVICE_FIELD",
    "REPOSITORIES",
    "ROLES",
    "TRUST_ROOT_FORMAT",
    "DeviceRepoSigner",
    "DeviceRoles",
    "DeviceTrustClient",
    "ExpiryPolicy",
    "HeldVersions",
    "HubTrust",
    "MemoryRoleCounters",
    "RoleCounters",
    "SiteExpiry",
    "TargetSpec",
    "TufRepository",
    "generate_keys",
    "load_signers",
    "make_trust_root_bundle",
    "parse_trust_root_bundle",
    "stale_repositories",
]

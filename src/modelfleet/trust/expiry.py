"""How long each signed TUF role stays valid and when it is re-signed: the global
:class:`ExpiryPolicy` and per-site director lifetimes (:class:`SiteExpiry`, issue 11,
ADR 0037). Pure: used by the repositories and the per-device director signer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from tuf.api.metadata import Root, Snapshot, Targets, Timestamp

from modelfleet.errors import ConfigError

__all__ = ["ExpiryPolicy", "SiteExpiry"]

_DIRECTOR_ROLES = ("timestamp", "snapshot", "targets")


@dataclass(frozen=True, slots=True)
class SiteExpiry:
    """Director lifetimes for the devices of one site (issue 11, ADR 0037); None keeps
    the global value.

    A media-fed site (bundles carried in every few weeks) needs its devices' director
    metadata to outlive the gap between two deliveries; an online site keeps the short
    global timestamp that bounds a freeze attack.

    Attributes:
        timestamp, snapshot, targets: lifetime of each per-device director role.
    """

    timestamp: timedelta | None = None
    snapshot: timedelta | None = None
    targets: timedelta | None = None


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """How long each signed role stays valid, and when to re-sign it.

    Attributes:
        root: lifetime of root metadata (both repositories).
        catalog_targets: lifetime of the catalog's targets metadata.
        snapshot: lifetime of snapshot metadata (both repositories).
        timestamp: lifetime of timestamp metadata (both repositories); bounds how long
            an attacker can freeze a device on old metadata.
        director_targets: lifetime of the director's targets metadata.
        refresh_margin: a role is re-signed when less than this fraction of its lifetime
            is left; the hub must call ``refresh_expiring`` more often than
            ``timestamp * refresh_margin``.
        sites: per-site director lifetimes (issue 11); the shared catalog's roles then
            live as long as the longest of them (see :meth:`lifetimes`).
    """

    root: timedelta = timedelta(days=365)
    catalog_targets: timedelta = timedelta(days=365)
    snapshot: timedelta = timedelta(days=30)
    timestamp: timedelta = timedelta(days=1)
    director_targets: timedelta = timedelta(days=7)
    refresh_margin: float = 1 / 3
    sites: Mapping[str, SiteExpiry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("root", "catalog_targets", "snapshot", "timestamp", "director_targets"):
            if getattr(self, name) < timedelta(minutes=1):
                raise ConfigError(f"expiry.{name} must be at least one minute")
        if not 0.0 < self.refresh_margin < 1.0:
            raise ConfigError("expiry.refresh_margin must be between 0 and 1")
        object.__setattr__(self, "sites", dict(self.sites))
        for site, policy in self.sites.items():
            for role in _DIRECTOR_ROLES:
                value = getattr(policy, role)
                if value is not None and value < timedelta(minutes=1):
                    raise ConfigError(f"expiry.sites.{site}.{role} must be at least one minute")
            lives = self.device_lifetimes(site)
            for role in ("snapshot", "targets"):
                if lives[role] < lives["timestamp"]:
                    raise ConfigError(
                        f"expiry.sites.{site}.{role} ({lives[role]}) is shorter than its "
                        f"timestamp ({lives['timestamp']}): the device would hold a valid "
                        f"timestamp naming expired {role} metadata"
                    )

    def device_lifetimes(self, site: str | None) -> dict[str, timedelta]:
        """``{role: lifetime}`` of the per-device director roles of a device at ``site``.

        A site's value replaces the global one; a site that sets only a longer
        ``timestamp`` gets a snapshot and targets at least that long (a timestamp that
        outlives the snapshot it names buys nothing).
        """
        base = {
            Targets.type: self.director_targets,
            Snapshot.type: self.snapshot,
            Timestamp.type: self.timestamp,
        }
        policy = self.sites.get(site) if site is not None else None
        if policy is None:
            return base
        timestamp = policy.timestamp or base[Timestamp.type]
        return {
            Targets.type: policy.targets or max(base[Targets.type], timestamp),
            Snapshot.type: policy.snapshot or max(base[Snapshot.type], timestamp),
            Timestamp.type: timestamp,
        }

    def site_lifetimes(self) -> dict[str, dict[str, timedelta]]:
        """:meth:`device_lifetimes` of every site that has a policy."""
        return {site: self.device_lifetimes(site) for site in self.sites}

    def lifetimes(self, repo: str) -> dict[str, timedelta]:
        """Return ``{role: lifetime}`` for the ``catalog`` or ``director`` repository.

        The catalog is shared by every site, so each of its roles lives at least as long
        as the same role of the longest-lived site policy (ADR 0037): a media-fed site's
        catalog must not expire before its director metadata does. The shared director
        repository (root only, nowhere near a device's metadata) keeps the global values.
        """
        targets = self.director_targets if repo == "director" else self.catalog_targets
        out = {
            Root.type: self.root,
            Targets.type: targets,
            Snapshot.type: self.snapshot,
            Timestamp.type: self.timestamp,
        }
        if repo == "catalog":
            for lives in self.site_lifetimes().values():
                for role in _DIRECTOR_ROLES:
                    out[role] = max(out[role], lives[role])
        return out

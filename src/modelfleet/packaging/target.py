"""A package's compatibility fields and the device profile they must fit (issue 10).

The package says what it needs (the signed manifest's ``target`` field, also signed into
the catalog target's custom fields): ``hardware`` tags that must *all* be on the device
(``arm64``, ``jetson-orin``...) and ``execution_providers`` of which the device must offer
*at least one* (``CUDAExecutionProvider``...). Empty lists ask nothing. The runtime family
and the opset are checked from the manifest's own fields (``runtime``, ``opset``).

The device declares its profile in the agent config (hardware tags; its execution
providers are the ones ONNX Runtime is configured to use). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelfleet.errors import InvalidInputError

__all__ = ["TARGET_FIELD", "DeviceProfile", "PackageTarget", "target_mismatch"]

TARGET_FIELD = "target"
"""The manifest (and catalog custom) field holding :meth:`PackageTarget.to_dict`."""

_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$")
_MAX_TAGS = 32


def _tags(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or len(value) > _MAX_TAGS:
        raise InvalidInputError(f"target.{what} must be a list of at most {_MAX_TAGS} names")
    for v in value:
        if not isinstance(v, str) or not _TAG.match(v):
            raise InvalidInputError(
                f"target.{what}: {v!r} is not a name (letters, digits, '._:+-', max 64)"
            )
    return tuple(sorted(set(value)))


@dataclass(frozen=True, slots=True)
class PackageTarget:
    """What a package needs of the device it runs on."""

    hardware: tuple[str, ...] = ()
    execution_providers: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: object) -> PackageTarget:
        """Parse the ``target`` field (None: no constraint).

        Raises:
            InvalidInputError: not an object, unknown keys, or a bad name.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidInputError("target must be an object")
        unknown = set(data) - {"hardware", "execution_providers"}
        if unknown:
            raise InvalidInputError(f"target: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(
            _tags(data.get("hardware"), "hardware"),
            _tags(data.get("execution_providers"), "execution_providers"),
        )

    def to_dict(self) -> dict[str, Any]:
        """``{"hardware": [...], "execution_providers": [...]}``."""
        return {
            "hardware": list(self.hardware),
            "execution_providers": list(self.execution_providers),
        }

    def __bool__(self) -> bool:
        return bool(self.hardware or self.execution_providers)


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """What a device declares about itself: hardware tags and execution providers."""

    hardware: frozenset[str] = frozenset()
    execution_providers: frozenset[str] = frozenset({"CPUExecutionProvider"})

    @classmethod
    def of(cls, hardware: Iterable[str], providers: Iterable[str]) -> DeviceProfile:
        return cls(frozenset(hardware), frozenset(providers) or frozenset({"CPUExecutionProvider"}))


def target_mismatch(target: PackageTarget, profile: DeviceProfile) -> str | None:
    """Why ``target`` does not fit ``profile``, or None when it does."""
    missing = [t for t in target.hardware if t not in profile.hardware]
    if missing:
        return (
            f"package needs hardware {', '.join(missing)}; this device declares "
            f"{', '.join(sorted(profile.hardware)) or 'no hardware tags'}"
        )
    if target.execution_providers and not set(target.execution_providers) & set(
        profile.execution_providers
    ):
        return (
            f"package runs on {', '.join(target.execution_providers)}; this device offers "
            f"{', '.join(sorted(profile.execution_providers))}"
        )
    return None

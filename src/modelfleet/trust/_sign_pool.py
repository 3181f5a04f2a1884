"""Per-device signing spread over worker processes, for stages of thousands of devices.

Ed25519 and canonical JSON hold the GIL, so threads do not help; a small pool of worker
processes, started once through a fork server (never forked from the threaded hub itself),
each loads the director key from its PEM file (decrypting it with the passphrase it is
given) and signs a slice of the devices. The results
(bytes and versions) come back to the caller, which stores them as before. Any failure of
the pool falls back to signing in this process: slower, never wrong.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelfleet.trust.device_repo import DeviceRepoSigner, DeviceRoles, SignedDeviceRoles

__all__ = ["PARALLEL_MIN", "SignPool", "default_workers"]

PARALLEL_MIN = 2000
"""Fewer devices than this are signed in process (the pool's round trip costs more)."""

_log = logging.getLogger(__name__)
_worker: dict[str, Any] = {}

Item = tuple[str, "tuple[int, str] | None", "DeviceRoles"]


def default_workers() -> int:
    """Worker processes to use: the CPUs this process may run on, at most 4 (1: no pool)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


def _init(
    key_path: str, lifetimes: Mapping[str, timedelta], margin: float, passphrase: bytes | None
) -> None:
    from securesystemslib.signer import CryptoSigner

    from modelfleet.trust._key_files import read_private_key
    from modelfleet.trust.device_repo import DeviceRepoSigner

    private = read_private_key(Path(key_path), passphrase)
    _worker["signer"] = DeviceRepoSigner(CryptoSigner(private), lifetimes, margin)


def _sign_slice(items: Sequence[Item], now: datetime) -> list[SignedDeviceRoles]:
    signer: DeviceRepoSigner = _worker["signer"]
    return [signer.sign_change(d, target, previous, now) for d, target, previous in items]


class SignPool:
    """A lazily started pool of signing processes for one director key.

    Args:
        key_path: the director key's PEM file (read by each worker).
        lifetimes: role lifetimes (as the in-process signer's).
        margin: the refresh margin (as the in-process signer's).
        workers: processes to start; 1 or less never starts any.
        passphrase: the key file's passphrase (handed to each worker at its start, never
            written anywhere), None for an unencrypted file.
    """

    def __init__(
        self,
        key_path: Path,
        lifetimes: Mapping[str, timedelta],
        margin: float,
        workers: int,
        passphrase: bytes | None = None,
    ) -> None:
        self._args = (str(key_path), dict(lifetimes), margin, passphrase)
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def sign(
        self, local: DeviceRepoSigner, items: Sequence[Item], now: datetime
    ) -> list[SignedDeviceRoles]:
        """Sign ``items`` (``(device id, target, previous roles)``) with ``now``, over the
        pool when there are enough of them, else (or if the pool fails) with ``local``."""
        if self.workers < 2 or len(items) < PARALLEL_MIN:
            return [local.sign_change(d, t, p, now) for d, t, p in items]
        size = -(-len(items) // (self.workers * 2))
        slices = [items[i : i + size] for i in range(0, len(items), size)]
        try:
            pool = self._started()
            out: list[SignedDeviceRoles] = []
            for part in pool.map(_sign_slice, slices, [now] * len(slices)):
                out.extend(part)
            return out
        except (BrokenProcessPool, OSError, RuntimeError) as e:
            _log.warning("signing pool failed (%s); signing in process", e)
            self.close()
            return [local.sign_change(d, t, p, now) for d, t, p in items]

    def _started(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(["modelfleet.trust.device_repo"])
                self._pool = ProcessPoolExecutor(
                    self.workers, mp_context=ctx, initializer=_init, initargs=self._args
                )
            return self._pool

    def close(self) -> None:
        """Stop the worker processes (a later :meth:`sign` starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

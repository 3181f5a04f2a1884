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
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelfleet.trust.device_repo import DeviceRepoSigner, DeviceRoles, SignedDeviceRoles

__all__ = ["PARALLEL_MIN", "PendingSigning", "SignPool", "default_workers"]

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


def _sign_slice(
    items: Sequence[Item], now: datetime, lifetimes: Mapping[str, timedelta] | None = None
) -> list[SignedDeviceRoles]:
    """Sign ``items`` in a worker; ``lifetimes`` (a site's, issue 11) replace the ones the
    worker was started with, through a signer kept per distinct set."""
    signer: DeviceRepoSigner = _worker["signer"]
    if lifetimes is not None and dict(lifetimes) != signer.lifetimes:
        key = tuple(sorted(lifetimes.items()))
        by_lives: dict[Any, DeviceRepoSigner] = _worker.setdefault("by_lifetimes", {})
        if key not in by_lives:
            by_lives[key] = signer.with_lifetimes(lifetimes)
        signer = by_lives[key]
    return [signer.sign_change(d, target, previous, now) for d, target, previous in items]


class PendingSigning:
    """Signatures under way in the pool (or already made): :meth:`result` waits for them.

    Any failure of the pool is answered by signing the same items in this process (slower,
    never wrong), so :meth:`result` raises only what in-process signing raises.
    """

    def __init__(
        self,
        pool: SignPool | None,
        local: DeviceRepoSigner,
        items: Sequence[Item],
        now: datetime,
        parts: list[Future[list[SignedDeviceRoles]]] | None = None,
        done: list[SignedDeviceRoles] | None = None,
    ) -> None:
        self._pool, self._local, self._items, self._now = pool, local, items, now
        self._parts = parts
        self._done = done

    def result(self) -> list[SignedDeviceRoles]:
        """The signed roles, in the order of the items."""
        if self._done is None:
            try:
                out: list[SignedDeviceRoles] = []
                for part in self._parts or ():
                    out.extend(part.result())
                self._done = out
            except (BrokenProcessPool, OSError, RuntimeError) as e:
                _log.warning("signing pool failed (%s); signing in process", e)
                if self._pool is not None:
                    self._pool.close()
                self._done = _sign_here(self._local, self._items, self._now)
        return self._done


def _sign_here(
    local: DeviceRepoSigner, items: Sequence[Item], now: datetime
) -> list[SignedDeviceRoles]:
    return [local.sign_change(d, t, p, now) for d, t, p in items]


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
        return self.sign_async(local, items, now).result()

    def sign_async(
        self, local: DeviceRepoSigner, items: Sequence[Item], now: datetime, *, run_size: int = 0
    ) -> PendingSigning:
        """Start signing ``items`` and return at once (the caller writes the previous
        batch meanwhile: ``Director.sign_dirty``'s pipeline).

        Below :data:`PARALLEL_MIN` items (in this batch and in the caller's whole run,
        ``run_size``) or with fewer than two workers, the items are signed here, before
        this returns.
        """
        if self.workers < 2 or not items or max(len(items), run_size) < PARALLEL_MIN:
            return PendingSigning(self, local, items, now, done=_sign_here(local, items, now))
        size = -(-len(items) // self.workers)
        try:
            pool = self._started()
            parts = [
                pool.submit(_sign_slice, items[i : i + size], now, local.lifetimes)
                for i in range(0, len(items), size)
            ]
        except (BrokenProcessPool, OSError, RuntimeError) as e:
            _log.warning("signing pool failed (%s); signing in process", e)
            self.close()
            return PendingSigning(self, local, items, now, done=_sign_here(local, items, now))
        return PendingSigning(self, local, items, now, parts=parts)

    def _started(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(["modelfleet.trust.device_repo"])
                self._pool = ProcessPoolExecutor(
                    self.workers, mp_context=ctx, initializer=_init, initargs=self._args
                )
            return self._pool

    def close(self, *, finish: bool = False) -> None:
        """Stop the worker processes (a later :meth:`sign` starts new ones).

        Args:
            finish: let the signings under way finish, and return at once (the director
                key was replaced while a batch may still be signing with the old one;
                ADR 0039); otherwise they are cancelled and the workers waited for.
        """
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=not finish, cancel_futures=not finish)

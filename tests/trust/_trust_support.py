"""Test support for the trust layer: a signed hub, its artefact store, a loopback HTTP server.

The server is a tiny stand-in for the hub's TUF routes (test-only): it checks the bearer
token, serves ``HubTrust.metadata_path`` files and, for consistent-snapshot target URLs,
the blob ``HubTrust.target_digest`` names from a real :class:`FileArtefactStore`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from modelfleet.catalog.artefacts import FileArtefactStore
from modelfleet.clock import ManualClock
from modelfleet.hashing import sha256_bytes
from modelfleet.rollout.desired_state import ArtefactRef, Assignment, DesiredState
from modelfleet.trust import ExpiryPolicy, HubTrust, generate_keys
from modelfleet.trust.device_repo import DeviceRoles, SignedDeviceRoles

TOKEN = "device-token-for-tests"


@dataclass
class Faults:
    """What the loopback server does wrong, by a substring of the request path.

    Attributes:
        unavailable: answer HTTP 503 this many more times.
        drip: send the body one byte every this many seconds (a slow link).
    """

    unavailable: dict[str, int] = field(default_factory=dict)
    drip: dict[str, float] = field(default_factory=dict)
    served: list[str] = field(default_factory=list)


@dataclass
class Hub:
    """A signed hub as the trust tests see it."""

    home: Path
    clock: ManualClock
    trust: HubTrust
    store: FileArtefactStore
    serial: dict[str, int] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    #: Per-device director repositories (issue 8): device -> {filename: bytes}.
    devices: dict[str, dict[str, bytes]] = field(default_factory=dict)
    roles: dict[str, DeviceRoles] = field(default_factory=dict)
    listed: dict[str, str] = field(default_factory=dict)

    def publish(
        self,
        name: str,
        version: int,
        payload: bytes | None = None,
        manifest: bytes | None = None,
    ) -> ArtefactRef:
        """Store a package's bytes and list it in the catalog."""
        # The trust layer never parses the model; any bytes stand in for an ONNX file.
        model = payload if payload is not None else f"model {name} v{version}".encode() * 50
        if manifest is None:
            manifest = f'{{"model": "{name}", "version": {version}}}'.encode()
        self.store.put_bytes(model)
        self.store.put_bytes(manifest)
        ref = ArtefactRef(
            name, version, sha256_bytes(model), len(model), sha256_bytes(manifest), len(manifest)
        )
        self.trust.publish_package(
            name, version, ref.sha256, ref.length, ref.manifest_sha256, ref.manifest_length,
            {"model": name, "version": version, "opset": 17, "runtime": "onnxruntime"},
        )  # fmt: skip
        return ref

    def assign(self, device_id: str, *refs: ArtefactRef) -> bytes:
        """Sign a desired state naming ``refs`` for one device; return its bytes."""
        self.serial[device_id] = self.serial.get(device_id, 0) + 1
        state = DesiredState(
            device_id=device_id,
            serial=self.serial[device_id],
            assignments=tuple(Assignment(model=r.model, production=r) for r in refs),
        )
        blob = state.to_json()
        self.store.put_bytes(blob)
        self.sign_device(device_id, (len(blob), sha256_bytes(blob)))
        return blob

    def sign_device(self, device_id: str, target: tuple[int, str] | None) -> None:
        """Sign the device's own director repository listing ``target`` (or none)."""
        now = self.clock.now().replace(microsecond=0)
        out = self.trust.device_signer.sign_change(
            device_id, target, self.roles.get(device_id, DeviceRoles()), now
        )
        self.store_device(device_id, out)
        if target is None:
            self.listed.pop(device_id, None)
        else:
            self.listed[device_id] = target[1]

    def store_device(self, device_id: str, out: SignedDeviceRoles) -> None:
        files = self.devices.setdefault(device_id, {})
        roles = out.roles
        if out.targets is not None:
            files = {k: v for k, v in files.items() if not k.endswith(".targets.json")}
            files[f"{roles.targets}.targets.json"] = out.targets
        if out.snapshot is not None:
            files = {k: v for k, v in files.items() if not k.endswith(".snapshot.json")}
            files[f"{roles.snapshot}.snapshot.json"] = out.snapshot
        files["timestamp.json"] = out.timestamp
        self.devices[device_id] = files
        self.roles[device_id] = roles

    def device_file(self, device_id: str, filename: str) -> bytes | None:
        if filename.endswith(".root.json"):
            path = self.trust.metadata_path("director", filename)
            return path.read_bytes() if path is not None else None
        if device_id not in self.devices:
            self.sign_device(device_id, None)  # enrolled: the hub signs "nothing" for it
        return self.devices[device_id].get(filename)


def make_hub(home: Path, start: datetime | None = None, expiry: ExpiryPolicy | None = None) -> Hub:
    """Generate keys and initialise both repositories under ``home``."""
    clock = ManualClock(start or datetime.now(UTC))
    generate_keys(home / "keys")
    trust = HubTrust.init(home / "tuf", home / "keys", clock, expiry)
    return Hub(home, clock, trust, FileArtefactStore(home / "artefacts"))


class _Handler(BaseHTTPRequestHandler):
    server: _HubServer

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(401, b"unauthenticated")
            return
        hub = self.server.hub
        hub.faults.served.append(self.path)
        parts = urlsplit(self.path).path.split("/", 4)
        if len(parts) != 5 or parts[1] != "tuf":
            self._send(404)
            return
        _, _, repo, kind, rest = parts
        rest = unquote(rest)
        body: bytes | None = None
        path: Path | None = None
        if repo == "director" and kind == "devices":
            device_id, _, filename = rest.partition("/metadata/")
            body = hub.device_file(device_id, filename)
        elif repo == "director" and kind == "targets":
            dirname, _, filename = rest.rpartition("/")
            device_id = dirname.removeprefix("devices/")
            digest = filename.partition(".")[0]
            if hub.listed.get(device_id) == digest:
                path = hub.store.path(digest)
        elif kind == "metadata":
            path = hub.trust.metadata_path(repo, rest)
        elif kind == "targets":
            digest = hub.trust.target_digest(repo, rest)
            path = hub.store.path(digest) if digest else None
        else:
            path = None
        if path is None and body is None:
            self._send(404)
            return
        faults = hub.faults
        for key, left in list(faults.unavailable.items()):
            if key in self.path and left > 0:
                faults.unavailable[key] = left - 1
                self._send(503, b"busy")
                return
        if body is None:
            assert path is not None
            body = path.read_bytes()
        for key, interval in faults.drip.items():
            if key in self.path:
                self._drip(body, interval)
                return
        self._send(200, body)

    def _drip(self, body: bytes, interval: float) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for i in range(len(body)):
                if self.server.closing.wait(interval):
                    return
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
        except OSError:  # the client gave up: what a deadline does
            return


class _HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: Hub) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub
        self.closing = threading.Event()


@contextmanager
def serve(hub: Hub) -> Iterator[str]:
    """Serve ``hub`` on a free loopback port; yield its base URL."""
    server = _HubServer(hub)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

#!/usr/bin/env python3
"""Verify a modelfleet audit export (``modelfleet audit export --out FILE``) without modelfleet.

Standard library only; it never imports modelfleet, so an auditor can read all of it.
Checks, in order:

1. every entry's hash: SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of its
   fields but ``hash`` - an edited entry fails here;
2. the chain: seq runs 1, 2, 3, ... and each ``prev_hash`` is the previous entry's hash (64
   zeros for the first) - a deleted entry leaves a gap, an inserted one does not link;
3. the head checkpoint in the header: the export ends at its seq with its hash - a cut
   (truncated) or lengthened export fails here;
4. the checkpoint's ed25519 signature, when the ``cryptography`` package can be imported
   (else it says it skipped that). Pin the hub's key with ``--keyid`` (shown by
   ``modelfleet audit verify``): without it the key inside the file is only self-consistent;
5. earlier checkpoints - the hub's own (``witness`` in the header: the newest head it had
   checked, kept outside its database) and ``--checkpoint OLD`` (an earlier export, or the
   hub's ``audit-checkpoint.json``): the export still holds each one's entry with its hash -
   a log rolled back or rewritten since fails.

Exit status: 0 valid, 1 the export fails a check (the first bad entry is named), 2 the file
cannot be read or the command line is wrong.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from typing import Any

GENESIS = "0" * 64
FORMAT = "modelfleet-audit-export"
CHECKPOINT_TYPE = "modelfleet-audit-checkpoint"


class Bad(Exception):
    """The export fails a check."""


def _float(f: float) -> str:
    # The hub hashes with orjson: shortest round-trip digits like repr(), but decimal
    # notation down to 1e-5 and exponents without zero padding (1e-7, 1e+16).
    if math.isnan(f) or math.isinf(f):
        return "null"
    r = repr(f)
    if "e" not in r:
        return r
    mantissa, exp_text = r.split("e")
    exp = int(exp_text)
    if exp == -5:
        sign = "-" if mantissa.startswith("-") else ""
        return f"{sign}0.0000{mantissa.lstrip('-').replace('.', '')}"
    return f"{mantissa}e{'+' if exp > 0 else '-'}{abs(exp)}"


def canonical(value: Any) -> str:
    """Canonical JSON as the hub writes it: sorted keys, no spaces, UTF-8 unescaped."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(f"{canonical(str(k))}:{canonical(v)}" for k, v in items) + "}"
    raise Bad(f"unexpected JSON value {value!r}")


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


def checkpoint_bytes(cp: dict[str, Any]) -> bytes:
    body = {"_type": CHECKPOINT_TYPE, "at": cp["at"], "hash": cp["hash"], "seq": cp["seq"]}
    return canonical(body).encode("utf-8")


def check_signature(cp: dict[str, Any], key: dict[str, Any] | None, keyid: str | None) -> str:
    """Check the head's signature; returns a line for the report."""
    if key is None or not cp.get("signature"):
        raise Bad(f"entry {cp['seq']}: the head checkpoint is not signed")
    public = bytes.fromhex(key["public"])
    if hashlib.sha256(public).hexdigest() != key.get("keyid"):
        raise Bad("the export's public key does not match its keyid")
    if keyid and not key["keyid"].startswith(keyid.lower()):
        raise Bad(f"the head is signed by key {key['keyid'][:16]}, not the pinned {keyid}")
    if cp.get("keyid") != key["keyid"]:
        raise Bad(f"entry {cp['seq']}: the head checkpoint names another key")
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return "signature: NOT checked (the cryptography package is not installed)"
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            bytes.fromhex(cp["signature"]), checkpoint_bytes(cp)
        )
    except (InvalidSignature, ValueError):
        raise Bad(f"entry {cp['seq']}: the head checkpoint's signature does not verify") from None
    pinned = "pinned" if keyid else "not pinned: pass --keyid to pin it"
    return f"signature: valid, key {key['keyid'][:16]} ({pinned})"


def load_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint from an earlier export's header or an ``audit-checkpoint.json``."""
    with open(path, encoding="utf-8") as f:
        first = json.loads(f.readline())
    cp = first.get("checkpoint", first) if isinstance(first, dict) else None
    if not isinstance(cp, dict) or "seq" not in cp or "hash" not in cp:
        raise ValueError(f"{path} holds no checkpoint")
    return cp


def verify(path: str, keyid: str | None, old: dict[str, Any] | None) -> list[str]:
    """Check the export at ``path`` (and that it holds the checkpoint ``old``); returns
    report lines, raises :class:`Bad`."""
    with open(path, encoding="utf-8") as f:
        header_text = f.readline()
        try:
            header = json.loads(header_text)
        except ValueError:
            raise Bad("line 1 is not JSON: not an audit export") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise Bad("line 1 is not a modelfleet audit export header")
        cp = header.get("checkpoint")
        if not isinstance(cp, dict):
            raise Bad("the header has no head checkpoint")
        earlier = [(name, c) for name, c in (("--checkpoint", old), ("the hub's checkpoint",
                   header.get("witness"))) if isinstance(c, dict)]  # fmt: skip
        seen: dict[int, str] = {}
        expected, prev = 1, GENESIS
        for lineno, line in enumerate(f, start=2):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                raise Bad(f"line {lineno} is not JSON") from None
            seq = entry.get("seq")
            if not isinstance(seq, int):
                raise Bad(f"line {lineno}: no seq")
            if seq > expected:
                raise Bad(f"entry {expected}: deleted (entry {expected - 1} is followed by {seq})")
            if seq < expected:
                raise Bad(f"entry {seq}: inserted (it comes again after {expected - 1})")
            if entry.get("hash") != entry_hash(entry):
                raise Bad(f"entry {seq}: edited (its fields do not hash to its hash)")
            if entry.get("prev_hash") != prev:
                raise Bad(f"entry {seq}: inserted (it does not link to entry {expected - 1})")
            if any(seq == c["seq"] for _, c in earlier):
                seen[seq] = entry["hash"]
            expected, prev = seq + 1, entry["hash"]
    last = expected - 1
    if cp["seq"] > last:
        raise Bad(f"entry {last + 1}: truncated (the head names {cp['seq']}, the file has {last})")
    if cp["seq"] < last:
        raise Bad(f"entry {cp['seq'] + 1}: inserted (entries after the head {cp['seq']})")
    if cp["hash"] != prev:
        raise Bad(f"entry {last}: its hash is not the head checkpoint's")
    lines = [f"{last} entries, chain and head checkpoint consistent (head {prev[:16]})"]
    lines.append(check_signature(cp, header.get("public_key"), keyid))
    for name, c in earlier:
        if c["seq"] > last:
            raise Bad(f"entry {last + 1}: truncated ({name} names {c['seq']} entries)")
        if c["seq"] and seen.get(c["seq"]) != c["hash"]:
            raise Bad(f"entry {c['seq']}: rewritten since {name} of {c.get('at')}")
        lines.append(f"{name} at entry {c['seq']}: still in the chain")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="the export (JSON Lines)")
    parser.add_argument("--keyid", help="the hub's audit key id (or a prefix of it) to pin")
    parser.add_argument("--checkpoint", help="an earlier export or audit-checkpoint.json")
    args = parser.parse_args(argv)
    try:
        old = load_checkpoint(args.checkpoint) if args.checkpoint else None
        lines = verify(args.file, args.keyid, old)
    except Bad as e:
        print(f"{args.file}: FAILED: {e}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, AttributeError) as e:
        print(f"{args.file}: FAILED: malformed export (field {e})", file=sys.stderr)
        return 1
    except (OSError, ValueError, UnicodeDecodeError) as e:
        print(f"{args.file}: cannot read: {e}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    for line in lines:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

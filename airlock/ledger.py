"""A hash-chained, append-only log of everything the pipeline decides.

Every gate verdict, registry write, approval and promotion is one JSON line::

    {"seq": 7, "time": "...", "kind": "gate.verdict", "run_id": "...", "data": {...}, "prev": "<hash of 6>", "hash": "..."}

``hash`` is the sha256 of the canonical JSON of the entry without ``hash``; ``prev`` is the previous entry's hash
(64 zeros for the first). Rules checked by :func:`verify`:

* an entry whose content was edited no longer matches its own hash;
* a removed or reordered entry breaks the ``seq`` sequence and the ``prev`` link of the entry after it;
* truncating the tail leaves a valid chain: it is caught against an anchor kept elsewhere (the production record
  in the registry stores the ledger's head at promotion; ``airlock verify`` checks it is still in the log).

* a correctly chained entry that Airlock did not write: with a ledger key (``[ledger] key`` and ``public_key``),
  every entry carries an Ed25519 signature over its hash (``sig``), made by the process that appended it; a process
  that can write the file but cannot read the key (a backup job, another service, a stolen file-system credential)
  can append lines, never signed ones, and :func:`verify` names the first unsigned or mis-signed entry.

Appends from several processes (the flow, approvers) are serialised with an exclusive ``flock``.
"""

from __future__ import annotations

import base64
import collections
import datetime as _dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock import untrusted
from airlock.errors import AirlockError, LedgerError

GENESIS = "0" * 64


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _entry_hash(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k not in ("hash", "sig")}
    return hashlib.sha256(canonical(body)).hexdigest()


def generate_key(private_path: Path, public_path: Path) -> None:
    """A new Ed25519 ledger key: the private half 0600 (only processes that append may read it)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _load_public(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as e:
        raise LedgerError(
            f"cannot read the ledger public key {path}: {getattr(e, 'strerror', None) or 'not a PEM public key'}",
            "fix ledger.public_key in airlock.toml",
        ) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise LedgerError(f"the ledger public key {path} is not an Ed25519 key", "generate one: airlock init does")
    return key


def _load_private(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise LedgerError(
            f"cannot read the ledger key {path}: {getattr(e, 'strerror', None) or 'not an unencrypted PEM key'}",
            "fix ledger.key in airlock.toml (or $AIRLOCK_LEDGER_KEY)",
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise LedgerError(f"the ledger key {path} is not an Ed25519 key", "generate one: airlock init does")
    return key


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str


class Ledger:
    def __init__(self, path: str | Path, key: str | Path | None = None, public_key: str | Path | None = None) -> None:
        """``public_key``: the ledger is signed, and every entry must verify against it. ``key``: the private half,
        needed to append to a signed ledger (only the processes that append hold it)."""
        self.path = Path(path)
        self.key = Path(key) if key else None
        self.public_key = Path(public_key) if public_key else None
        self._verifier = None
        self._signer = None

    @classmethod
    def from_policy(cls, pol) -> Ledger:
        """The ledger a policy names, signed when it names a public key (``[ledger] public_key``); the private key
        from ``[ledger] key`` or $AIRLOCK_LEDGER_KEY, read only when something is appended."""
        lp = pol.ledger
        key = lp.key or (Path(os.environ["AIRLOCK_LEDGER_KEY"]) if os.environ.get("AIRLOCK_LEDGER_KEY") else None)
        return cls(lp.path, key, lp.public_key)

    @property
    def signed(self) -> bool:
        return self.public_key is not None

    def _verify_key(self):
        if self._verifier is None and self.public_key is not None:
            self._verifier = _load_public(self.public_key)
        return self._verifier

    def _sign_key(self):
        if self._signer is None:
            if self.key is None:
                raise LedgerError(
                    f"the ledger {self.path} is signed and this process has no ledger key to append with",
                    "set ledger.key in airlock.toml or $AIRLOCK_LEDGER_KEY for the processes that append",
                )
            signer = _load_private(self.key)
            from cryptography.hazmat.primitives import serialization

            pub = signer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            expected = self._verify_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            # A key that is not the trusted one would write entries that every later verification refuses.
            if pub != expected:
                raise LedgerError(
                    f"the ledger key {self.key} is not the one ledger.public_key trusts",
                    "use the key generated with that public key",
                )
            self._signer = signer
        return self._signer

    def append(self, kind: str, data: dict[str, Any], run_id: str | None = None) -> dict:
        signer = self._sign_key() if self.signed else None  # before the lock: a missing key changes nothing
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: a write that fails (a full disk) fails here, not again when the file is closed.
        with open(self.path, "a+b", buffering=0) as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                # A torn last line (a crash or a full disk mid-write) is moved aside under the lock and the
                # recovery recorded, instead of blocking every later operation.
                torn = _torn_tail(f)
                if torn:
                    saved = self._set_aside(f, torn)
                    self._write(f, "ledger.recovered", saved, None, signer)
                return self._write(f, kind, data, run_id, signer)
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _write(self, f, kind: str, data: dict[str, Any], run_id: str | None, signer) -> dict:
        last = _last_line(f)
        if last is None:
            seq, prev = 0, GENESIS
        else:
            try:
                prev_entry = untrusted.loads(last, "the last ledger entry")
                seq, prev = int(prev_entry["seq"]) + 1, str(prev_entry["hash"])
            except (AirlockError, ValueError, KeyError, TypeError):
                raise LedgerError(
                    f"the last entry of {self.path} is unreadable",
                    "run 'airlock ledger verify' and restore the log from a backup",
                ) from None
        entry: dict[str, Any] = {
            "seq": seq,
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
            "kind": kind,
            "run_id": run_id,
            "data": data,
            "prev": prev,
        }
        digest = _entry_hash(entry)
        entry["hash"] = digest
        if signer is not None:
            entry["sig"] = base64.b64encode(signer.sign(digest.encode())).decode()
        end = f.seek(0, os.SEEK_END)
        line = memoryview(canonical(entry) + b"\n")
        try:
            while line:
                line = line[os.write(f.fileno(), line) :]
            os.fsync(f.fileno())
        except OSError as e:
            # Disk full (or an I/O error) mid-line: cut the partial line off again, so the log stays whole.
            try:
                f.truncate(end)
                os.fsync(f.fileno())
            except OSError:
                pass  # the torn line is then set aside by the next append
            raise LedgerError(
                f"could not write to the ledger {self.path}: {e.strerror or e}",
                "free space on its file system and retry: nothing was recorded",
            ) from None
        return entry

    def _set_aside(self, f, torn: bytes) -> dict:
        size = f.seek(0, os.SEEK_END)
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.name}.torn-{stamp}")
        with open(aside, "xb") as out:
            out.write(torn)
            out.flush()
            os.fsync(out.fileno())
        f.truncate(size - len(torn))
        os.fsync(f.fileno())
        return {
            "torn_bytes": len(torn),
            "torn_sha256": hashlib.sha256(torn).hexdigest(),
            "moved_to": aside.name,
            "reason": "the last line was incomplete (a crash or a full disk while it was written)",
        }

    def entries(self) -> Iterator[dict]:
        """Entries in order, verifying the chain as it goes (raises LedgerError at the first break)."""
        if not self.path.exists():
            return
        prev, expected_seq = GENESIS, 0
        with open(self.path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.endswith(b"\n"):
                    return  # a torn last line is not part of the log: the next append sets it aside
                try:
                    entry = untrusted.loads(line, f"{self.path} line {lineno}")
                    seq, claimed, link = entry["seq"], entry["hash"], entry["prev"]
                    if type(seq) is not int or not isinstance(claimed, str) or not isinstance(link, str):
                        raise TypeError
                except (AirlockError, KeyError, TypeError):
                    raise LedgerError(
                        f"{self.path} line {lineno} is not a ledger entry",
                        "the log was edited by hand: restore it from a backup",
                    ) from None
                # Edited entry: its content no longer hashes to the hash it carries.
                if _entry_hash(entry) != claimed:
                    raise LedgerError(
                        f"{self.path} line {lineno} (seq {seq}) was edited: its hash does not match its content",
                        "treat the log as tampered; restore it from a backup and investigate",
                    )
                # Removed or reordered entry: the sequence and the link to the previous hash break.
                if seq != expected_seq or link != prev:
                    raise LedgerError(
                        f"{self.path} line {lineno} (seq {seq}) does not follow seq {expected_seq - 1}: "
                        "an entry was removed, inserted or reordered",
                        "treat the log as tampered; restore it from a backup and investigate",
                    )
                # A correctly chained entry that Airlock did not write: it carries no signature by the ledger key.
                if self.signed:
                    self._check_signature(entry, lineno)
                yield entry
                prev, expected_seq = claimed, seq + 1

    def sign(self, payload: bytes) -> bytes:
        """A signature by the ledger key (checkpoints: airlock/checkpoints.py)."""
        return self._sign_key().sign(payload)

    def verify_signature(self, payload: bytes, sig: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        key = self._verify_key()
        if key is None:
            return False
        try:
            key.verify(sig, payload)
            return True
        except InvalidSignature:
            return False

    def _check_signature(self, entry: dict, lineno: int) -> None:
        from cryptography.exceptions import InvalidSignature

        sig = entry.get("sig")
        try:
            if not isinstance(sig, str):
                raise InvalidSignature
            self._verify_key().verify(base64.b64decode(sig, validate=True), entry["hash"].encode())
        except (InvalidSignature, ValueError):
            what = "carries no signature" if sig is None else "has a signature that is not the ledger key's"
            raise LedgerError(
                f"{self.path} line {lineno} (seq {entry['seq']}, {entry.get('kind')!r}) {what}: "
                "Airlock did not write it",
                "treat the log as tampered: find who can write it, restore it from a backup and investigate",
            ) from None

    def verify(self, anchors: Sequence[Anchor] = ()) -> tuple[int, str]:
        """Verify the whole chain and that every anchor is still in it. Returns (entries, head hash)."""
        seen: dict[int, str] = {}
        count, head = 0, GENESIS
        for e in self.entries():
            seen[e["seq"]] = e["hash"]
            count, head = count + 1, e["hash"]
        if count == 0 and not self.path.exists():
            raise LedgerError(f"no ledger at {self.path}", "pass --path to the ledger named in airlock.toml")
        # Truncated tail: an anchor recorded elsewhere (at promotion) is missing from the chain.
        for a in anchors:
            if seen.get(a.seq) != a.hash:
                raise LedgerError(
                    f"{self.path} lacks entry seq {a.seq} anchored by the registry: the log was truncated or rewritten",
                    "treat the log as tampered; restore it from a backup and investigate",
                )
        return count, head

    def torn_bytes(self) -> int:
        """The length of an incomplete last line (0 if none): a write a crash or a full disk cut short."""
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as f:
            return len(_torn_tail(f))

    def head(self) -> Anchor:
        tail = collections.deque(self.entries(), maxlen=1)  # the whole chain is verified on the way
        return Anchor(tail[0]["seq"], tail[0]["hash"]) if tail else Anchor(-1, GENESIS)


def _torn_tail(f) -> bytes:
    """The bytes after the last newline: an incomplete line, left by a write that did not finish."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return b""
    pos, buf = end, b""
    while pos > 0:
        step = min(4096, pos)
        pos -= step
        f.seek(pos)
        buf = f.read(step) + buf
        nl = buf.rfind(b"\n")
        if nl >= 0:
            return buf[nl + 1 :]
    return buf


def _last_line(f) -> bytes | None:
    f.seek(0, os.SEEK_END)
    end = f.tell()
    if end == 0:
        return None
    pos, chunk, buf = end, 4096, b""
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        f.seek(pos)
        buf = f.read(step) + buf
        stripped = buf.rstrip(b"\n")
        nl = stripped.rfind(b"\n")
        if nl >= 0:
            return stripped[nl + 1 :]
    return buf.rstrip(b"\n") or None

"""A hash-chained, append-only log of everything the pipeline decides.

Every gate verdict, registry write, approval and promotion is one JSON line::

    {"seq": 7, "time": "...", "kind": "gate.verdict", "run_id": "...", "data": {...}, "prev": "<hash of 6>", "hash": "..."}

``hash`` is the sha256 of the canonical JSON of the entry without ``hash``; ``prev`` is the previous entry's hash
(64 zeros for the first). Rules checked by :func:`verify`:

* an entry whose content was edited no longer matches its own hash;
* a removed or reordered entry breaks the ``seq`` sequence and the ``prev`` link of the entry after it;
* truncating the tail leaves a valid chain: it is caught against an anchor kept elsewhere (the production record
  in the registry stores the ledger's head at promotion; ``airlock verify`` checks it is still in the log).

Appends from several processes (the flow, approvers) are serialised with an exclusive ``flock``.
"""

from __future__ import annotations

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
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, kind: str, data: dict[str, Any], run_id: str | None = None) -> dict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
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
                entry = {
                    "seq": seq,
                    "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
                    "kind": kind,
                    "run_id": run_id,
                    "data": data,
                    "prev": prev,
                }
                entry["hash"] = _entry_hash(entry)
                f.seek(0, os.SEEK_END)
                f.write(canonical(entry) + b"\n")
                f.flush()
                os.fsync(f.fileno())
                return entry
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def entries(self) -> Iterator[dict]:
        """Entries in order, verifying the chain as it goes (raises LedgerError at the first break)."""
        if not self.path.exists():
            return
        prev, expected_seq = GENESIS, 0
        with open(self.path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
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
                yield entry
                prev, expected_seq = claimed, seq + 1

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

    def head(self) -> Anchor:
        tail = collections.deque(self.entries(), maxlen=1)  # the whole chain is verified on the way
        return Anchor(tail[0]["seq"], tail[0]["hash"]) if tail else Anchor(-1, GENESIS)


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

"""API keys: the file holds only each key's sha256, the client it names and what that client may see.

``serve.api_keys`` (JSON)::

    {"clients": [{"client": "fraud-team", "sha256": "<hex of sha256(key)>", "scores": false}]}

``scores``: the client may receive rounded class scores; everyone else gets labels only. Make a key with
``airlock serve keygen --client NAME --keys FILE`` (prints the key once; only its hash is stored).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from airlock import untrusted
from airlock.errors import AirlockError, ServeError


@dataclass(frozen=True)
class Client:
    name: str
    scores: bool


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Keys:
    def __init__(self, clients: dict[str, Client]) -> None:
        self._by_digest = clients

    @classmethod
    def load(cls, path: Path) -> Keys:
        try:
            doc = untrusted.loads(path.read_bytes(), f"the API keys file {path}")
        except OSError as e:
            raise ServeError(f"cannot read the API keys file {path}: {e.strerror}", "check serve.api_keys") from None
        except AirlockError as e:
            raise ServeError(e.what, "fix the API keys file (serve/keys.py)") from None
        rows = doc.get("clients") if isinstance(doc, dict) else None
        if not isinstance(rows, list):
            raise ServeError(f"{path} has no clients list", 'write {"clients": [...]} (serve/keys.py)')
        out: dict[str, Client] = {}
        for r in rows:
            ok = isinstance(r, dict) and isinstance(r.get("client"), str) and isinstance(r.get("sha256"), str)
            if not ok or len(r["sha256"]) != 64 or not isinstance(r.get("scores", False), bool):
                raise ServeError(f"{path} holds a malformed client entry", "each: client, sha256 (64 hex), scores")
            out[r["sha256"].lower()] = Client(r["client"], bool(r.get("scores", False)))
        return cls(out)

    def client(self, key: str | None) -> Client | None:
        return self._by_digest.get(_digest(key)) if key else None


def add_client(path: Path, name: str, scores: bool = False) -> str:
    """A new key for ``name``, its hash appended to the keys file; returns the key (shown once)."""
    key = "ak_" + secrets.token_urlsafe(24)
    doc: dict = {"clients": []}
    if path.exists():
        doc = json.loads(path.read_text())
    doc["clients"].append({"client": name, "sha256": _digest(key), "scores": scores})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return key

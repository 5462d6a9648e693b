"""An EC private key in a PEM file (the demo's mode): simple, and readable by whoever can read the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from airlock.errors import SigningError


@dataclass(frozen=True)
class KeyFileSigner:
    private_key: Path

    def configure(self, config):
        if not self.private_key.is_file():
            raise SigningError(
                f"no model-signing key at {self.private_key}",
                "set signing.private_key in airlock.toml or $AIRLOCK_SIGNING_KEY to a PEM EC private key",
            )
        return config.use_elliptic_key_signer(private_key=self.private_key)

    def describe(self) -> dict:
        return {"mode": "key", "key": "EC private key file (PEM)"}

"""A key inside a PKCS#11 token: an HSM, a cloud KMS's PKCS#11 library, or SoftHSM2 in the tests.

Security rules:
* The private key never leaves the token: the token signs, and no process - Airlock's included - can read the key
  out (generate it on the token as sensitive and non-extractable; tests/test_signing_modes.py shows the read refused).
* The PIN is a secret, so it is never in the policy: the URI there names token, object and module only (a
  ``pin-value`` or ``pin-source`` in it is refused), and the PIN is read from the environment variable the policy
  names (``$AIRLOCK_PKCS11_PIN`` by default), which no sandbox's allowlisted environment carries.
* Verification needs no token: the signature is an ordinary ECDSA signature checked with the public key exported
  from the token (``trust.model_signing_public_key``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from airlock.errors import SigningError


@dataclass(frozen=True)
class Pkcs11Signer:
    uri: str  # pkcs11:token=...;object=...?module-path=/usr/lib/softhsm/libsofthsm2.so
    pin_env: str = "AIRLOCK_PKCS11_PIN"

    def configure(self, config):
        pin = os.environ.get(self.pin_env)
        if not pin:
            raise SigningError(
                f"no PIN for the PKCS#11 token: ${self.pin_env} is not set",
                f"set {self.pin_env} in the flow's environment (never in airlock.toml)",
            )
        sep = "&" if "?" in self.uri else "?"
        try:
            from urllib.parse import quote

            return config.use_pkcs11_signer(pkcs11_uri=f"{self.uri}{sep}pin-value={quote(pin, safe='')}")
        except RuntimeError as e:  # the pkcs11 extra is not installed
            raise SigningError(
                f"PKCS#11 signing is not available: {e}", "pip install 'model-signing[pkcs11]'"
            ) from None

    def describe(self) -> dict:
        return {"mode": "pkcs11", "key": self.uri.split("?", 1)[0]}  # token and object; never the PIN

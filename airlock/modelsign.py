"""Model signing with OpenSSF model_signing (EC key mode for local use).

The signature (a Sigstore bundle) is always stored OUTSIDE the model directory: inside, model_signing would treat
it as one more model file. model_signing does not cover files under default-ignored git paths, permissions or empty
directories, so the registry also checks Airlock's own digest over every file (see :mod:`airlock.hashing`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from airlock.errors import RegistryError, SigningError


class Signer(Protocol):
    """A signing mode (airlock/_signers/): builds model_signing's signing configuration, and says what it is."""

    def configure(self, config): ...

    def describe(self) -> dict: ...


def signer(pol) -> Signer:
    """The signer ``signing.mode`` chooses: ``key`` (a PEM file: ``signing.private_key`` or $AIRLOCK_SIGNING_KEY),
    ``pkcs11`` (a key inside a token: ``signing.pkcs11_uri``, the PIN from the environment), ``certificate`` (a key
    with a certificate from the company CA) or ``keyless`` (Sigstore, the workload's OIDC identity)."""
    import os

    from airlock._signers.key import KeyFileSigner
    from airlock._signers.pkcs11 import Pkcs11Signer

    s = pol.signing
    if s.mode == "keyless":
        from airlock._signers.keyless import KeylessSigner

        return KeylessSigner(s.identity_token, s.sigstore_trust_config)
    if s.mode == "certificate":
        from airlock._signers.certificate import CertificateSigner

        assert s.private_key and s.certificate  # the policy refuses certificate mode without them
        return CertificateSigner(Path(s.private_key), Path(s.certificate), tuple(Path(c) for c in s.certificate_chain))
    if s.mode == "pkcs11":
        assert s.pkcs11_uri is not None  # the policy refuses pkcs11 mode without a URI
        return Pkcs11Signer(s.pkcs11_uri, s.pin_env)
    key = s.private_key or (Path(os.environ["AIRLOCK_SIGNING_KEY"]) if os.environ.get("AIRLOCK_SIGNING_KEY") else None)
    if key is None:
        raise SigningError(
            "no model-signing key configured", "set signing.private_key in airlock.toml or $AIRLOCK_SIGNING_KEY"
        )
    return KeyFileSigner(Path(key))


_SIGN_HINT = {
    "key": "check the key (a PEM EC P-256/384/521 key without passphrase)",
    "certificate": "check the key (a PEM EC P-256/384/521 key without passphrase) and its certificate",
    "pkcs11": "check the token, its PIN and the URI",
    "keyless": "check that Fulcio and Rekor (the Sigstore trust configuration's URLs) are reachable from here",
}


def sign(model_dir: str | Path, signature: str | Path, key: Signer | str | Path) -> None:
    """Sign exactly ``model_dir`` into ``signature`` (outside it) with a signer, or with an EC key file's path."""
    import model_signing

    from airlock._signers.key import KeyFileSigner

    chosen: Signer = KeyFileSigner(Path(key)) if isinstance(key, (str, Path)) else key
    try:
        chosen.configure(model_signing.signing.Config()).sign(Path(model_dir), Path(signature))
    except SigningError:
        raise
    except Exception as e:  # noqa: BLE001 - model_signing and PyKCS11 raise many types
        detail = " ".join(str(e).split())[:160]
        raise SigningError(
            f"model_signing could not sign {model_dir} ({chosen.describe()['mode']} mode): {type(e).__name__}: {detail}",
            _SIGN_HINT.get(chosen.describe()["mode"], _SIGN_HINT["key"]),
        ) from None


def verify(model_dir: str | Path, signature: str | Path, public_key: str | Path, stage: str | None = None) -> str:
    """Raise RegistryError unless ``signature`` is a valid signature of exactly ``model_dir`` by a signer the trust
    root ``public_key`` allows (a PEM key, or a signer policy: airlock/verification.py) for the registry ``stage``
    the model is in. Returns who signed."""
    import datetime as dt

    from airlock import verification

    if not Path(public_key).is_file():
        raise RegistryError(
            f"no model-signing public key at {public_key}", "check trust.model_signing_public_key in airlock.toml"
        )
    if not Path(signature).is_file():
        raise RegistryError(f"no signature at {signature}", "the model was never signed: re-run the pipeline")
    policy = verification.load(public_key, stage)
    try:
        who = policy.verify(Path(model_dir), Path(signature), dt.datetime.now(dt.UTC).date())
        verification.check_ignore_paths(Path(signature), verification.allowed_ignore_paths(policy))
        return who
    except verification.Mismatch as e:
        raise RegistryError(
            f"model signature of {model_dir} does not verify: {e}",
            "the model or its signature changed after signing, or its signer is not allowed: do not use it",
        ) from None


def generate_keypair(private_path: Path, public_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

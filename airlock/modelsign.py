"""Model signing with OpenSSF model_signing (EC key mode for local use).

The signature (a Sigstore bundle) is always stored OUTSIDE the model directory: inside, model_signing would treat
it as one more model file. model_signing does not cover files under default-ignored git paths, permissions or empty
directories, so the registry also checks Airlock's own digest over every file (see :mod:`airlock.hashing`).
"""

from __future__ import annotations

from pathlib import Path

from airlock.errors import RegistryError, SigningError


def sign(model_dir: str | Path, signature: str | Path, private_key: str | Path) -> None:
    import model_signing

    if not Path(private_key).is_file():
        raise SigningError(
            f"no model-signing key at {private_key}",
            "set signing.private_key in airlock.toml or $AIRLOCK_SIGNING_KEY to a PEM EC private key",
        )
    try:
        model_signing.signing.Config().use_elliptic_key_signer(private_key=Path(private_key)).sign(
            Path(model_dir), Path(signature)
        )
    except Exception as e:  # noqa: BLE001 - model_signing raises many types
        raise SigningError(
            f"model_signing could not sign {model_dir}: {type(e).__name__}: {e}",
            "check that the key is a PEM EC (P-256/384/521) private key without passphrase",
        ) from None


def verify(model_dir: str | Path, signature: str | Path, public_key: str | Path) -> None:
    """Raise RegistryError unless `signature` is a valid signature of exactly `model_dir` by `public_key`."""
    import model_signing

    if not Path(public_key).is_file():
        raise RegistryError(
            f"no model-signing public key at {public_key}", "check trust.model_signing_public_key in airlock.toml"
        )
    if not Path(signature).is_file():
        raise RegistryError(f"no signature at {signature}", "the model was never signed: re-run the pipeline")
    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key)).verify(
            Path(model_dir), Path(signature)
        )
    except Exception as e:  # noqa: BLE001 - tamper shows up as many exception types
        detail = " ".join(str(e).split())[:160]
        raise RegistryError(
            f"model signature of {model_dir} does not verify: {detail}",
            "the model or its signature changed after signing: do not use it",
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

"""An EC key with a certificate from the company CA: verifiers trust the CA (and a subject), not each key.

The bundle carries the signing certificate and the chain given here; verification checks the chain against the CA
in the signer policy only (airlock/verification.py), never the web's roots, and the certificate's subject.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from airlock.errors import SigningError


@dataclass(frozen=True)
class CertificateSigner:
    private_key: Path
    certificate: Path
    chain: tuple[Path, ...] = ()  # the issuing CA's certificates, carried in the bundle

    def configure(self, config):
        for what, p in (
            ("key", self.private_key),
            ("certificate", self.certificate),
            *(("chain", c) for c in self.chain),
        ):
            if not p.is_file():
                raise SigningError(
                    f"no signing {what} at {p}", "fix signing.private_key / certificate / certificate_chain"
                )
        # An expired or not-yet-valid certificate signs nothing (verification refuses it too: airlock/verification.py).
        import datetime as dt

        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(self.certificate.read_bytes())
        except ValueError:
            raise SigningError(f"{self.certificate} is not a PEM certificate", "fix signing.certificate") from None
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SigningError(
                f"the signing certificate {self.certificate} is not valid now (valid "
                f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})",
                "renew it from your CA",
            )
        return config.use_certificate_signer(
            private_key=self.private_key, signing_certificate=self.certificate, certificate_chain=list(self.chain)
        )

    def describe(self) -> dict:
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(self.certificate.read_bytes())
            subject = cert.subject.rfc4514_string()
        except (OSError, ValueError):
            subject = "?"
        return {"mode": "certificate", "key": f"certificate {subject}"}
